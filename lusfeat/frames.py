"""Decode images, videos and DICOM objects to RGB uint8 frames, streaming one frame at a time.

What a file is, is read from its content, never from its name:

- DICOM (the ``DICM`` marker at byte 128, or a ``.dcm`` name) goes to :mod:`lusfeat.dicom`
  (pydicom and its pixel-data plugins: ``pip install "lusfeat[dicom]"``);
- everything else goes to FFmpeg through PyAV: any container and codec FFmpeg demuxes and
  decodes (MP4, MOV, AVI, MPEG-1/2, Matroska, WebM, WMV/ASF, FLV, MPEG-TS, Ogg, ..., GIF, PNG,
  JPEG, BMP, TIFF, WebP, ...), the first video stream of it. Text that FFmpeg would render as a
  picture (its ANSI-art demuxers) is refused.

Frame ``k`` of a file is the ``k``-th frame its decoder outputs. A packet that fails to decode
is skipped (FFmpeg's own behaviour), and a stream that ends early (a container announcing more
frames than decode: edit lists, trailing packets, a cut file) gives the frames that do decode;
:func:`media_info` says both counts, so the caller can warn. It counts from the container where
the count can be trusted (as many intact packets as announced, read without decoding), else by the
same decoding that serves the frames, so the frame numbers agree between planning, extraction and
a resumed run; a wanted frame that does not decode after all is a named error (:func:`iter_frames`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from lusfeat import dicom
from lusfeat.errors import LusfeatError

WHAT_TO_DO = "replace or remove the file"
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})  # FFmpeg's renderers of text files as pictures
IMAGE_FORMATS = frozenset({"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "gif_pipe",
                           "jpegls_pipe", "j2k_pipe", "pgm_pipe", "ppm_pipe", "pam_pipe", "qoi_pipe"})


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds: ``announced`` frames by its container or data set, ``frames`` that decode."""

    kind: str  # "video", "image" or "dicom"
    format: str  # FFmpeg's format and codec, or "DICOM <transfer syntax>"
    announced: int
    frames: int
    width: int
    height: int
    rate: float | None  # frames per second, where the file says

    @property
    def short(self) -> bool:
        """Fewer frames decode than the container announces."""
        return self.frames < self.announced


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise LusfeatError(f"{path}: cannot open as image or video, not a format FFmpeg reads ({error}); "
                           f"{WHAT_TO_DO}") from error
    try:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["no"]
            raise LusfeatError(f"{path}: no video stream ({' and '.join(kinds)} stream(s) only); {WHAT_TO_DO}")
        context = container.streams.video[0].codec_context
        if context is None:
            raise LusfeatError(f"{path}: undecodable, its video stream names no codec FFmpeg decodes (a damaged or "
                               f"cut file?); {WHAT_TO_DO}")
        codec = context.name
        if codec in TEXT_CODECS:
            raise LusfeatError(f"{path}: a text file (FFmpeg would draw its characters as {codec!r} pictures), "
                               f"not an image or video; {WHAT_TO_DO}")
    except BaseException:
        container.close()
        raise
    return container


def _decoded(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """Every frame the stream's packets decode to, in order; a packet that fails is skipped, a read error ends it."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:  # the file ends inside a packet, or the container is damaged from here on
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        yield from frames
    try:  # the frames the decoder still holds
        yield from stream.codec_context.decode(None)
    except av.error.FFmpegError:
        return


def _reason(error: LusfeatError) -> str:
    """The reason alone, for a caller that names the file and says what to do itself."""
    return str(error).split(": ", 1)[-1].removesuffix(f"; {WHAT_TO_DO}")


def probe_media(path: str | os.PathLike) -> str:
    """Empty string if the file opens and its first frame decodes, else the reason it does not.

    Reasons: not a format FFmpeg reads, no video stream, a text file, zero frames (nothing
    decodes), an unreadable or unsupported DICOM object.
    """
    if dicom.is_dicom(path):
        return dicom.probe(path)
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            for _ in _decoded(container, stream):
                return ""
            return "zero frames: nothing in its video stream decodes"
    except LusfeatError as error:
        return _reason(error)
    except av.error.FFmpegError as error:
        return f"undecodable: {error}"


def media_info(path: str | os.PathLike) -> MediaInfo:
    """Counts, size and rate of one file, in one opening of it.

    A video's frames are counted from its container where the count can be trusted: the container announces a
    count, its stream holds exactly that many packets (read, not decoded), none of them cut short or marked to be
    discarded, and its first frame decodes. Otherwise (no count announced, a stream cut after its header, edit
    lists) they are counted by decoding them all, as ever. Raises :class:`LusfeatError` naming the file when no
    frame decodes.
    """
    if dicom.is_dicom(path):
        return MediaInfo(**dicom.info(path))
    with _open(path) as container:
        stream = container.streams.video[0]
        image = container.format.name in IMAGE_FORMATS
        rate = float(stream.average_rate) if stream.average_rate and not image else None
        name = f"{container.format.name} {stream.codec_context.name}"
        announced = stream.frames
        first = _container_count(container, stream) if announced > 0 else None
    if first is not None and first[0] == announced:
        decoded, width, height = first
    else:  # the container's count is missing or not to be trusted: count what decodes
        decoded, width, height = _decoded_count(path)
        announced = max(announced, decoded) if announced else decoded
    if not decoded:
        raise LusfeatError(f"{path}: zero frames, nothing in its video stream decodes ({name}); {WHAT_TO_DO}")
    kind = "image" if image and decoded == 1 else "video"
    return MediaInfo(kind, name, announced, decoded, width, height, rate)


def _container_count(container: av.container.InputContainer,
                     stream: av.video.stream.VideoStream) -> tuple[int, int, int] | None:
    """``(packets, width, height)`` of the first frame, reading every packet and decoding only until the first
    frame; ``None`` where the packets cannot stand for frames (one cut short, to be discarded, a read error, or no
    frame decodes)."""
    packets, first = 0, None
    demuxed = container.demux(stream)
    while True:
        try:
            packet = next(demuxed)
        except StopIteration:
            break
        except av.error.FFmpegError:
            return None
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.is_corrupt or packet.is_discard:
            return None
        packets += 1
        if first is None:
            try:
                first = next(iter(packet.decode()), None)
            except av.error.FFmpegError:
                return None
    if first is None:
        try:
            first = next(iter(stream.codec_context.decode(None)), None)
        except av.error.FFmpegError:
            return None
    return None if first is None else (packets, first.width, first.height)


def _one_thread(stream: av.video.stream.VideoStream) -> None:
    """Decode on the calling thread alone: stage one decodes beside the network, which has the cores. FFmpeg's
    own threads cost 5-15% more CPU per frame (COVID-BLUES H.264 at 350 px, 2 cores) and crowd the network's;
    the frames are the same."""
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1


def _decoded_count(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(frames, width, height)``: the frames that decode, counted by decoding them all."""
    with _open(path) as container:
        stream = container.streams.video[0]
        _one_thread(stream)
        decoded, width, height = 0, stream.codec_context.width, stream.codec_context.height
        for frame in _decoded(container, stream):
            decoded += 1
            width, height = frame.width, frame.height
    return decoded, width, height


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames that decode (see :func:`media_info`)."""
    return media_info(path).frames


def frame_indices(n_frames: int, step: int = 1, frame: int = -1) -> list[int]:
    """The frame numbers a manifest row stands for: one chosen frame, or every ``step``-th."""
    if step < 1:
        raise LusfeatError(f"frame step must be >= 1, got {step}")
    if frame >= 0:
        return [frame] if frame < n_frames else []
    return list(range(0, n_frames, step))


def iter_frames(
    path: str | os.PathLike,
    indices: list[int] | None = None,
    size: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, rgb)`` for the wanted frames, in order, decoding lazily.

    ``size`` resizes to ``size x size`` inside FFmpeg (bilinear), which is cheaper than
    resizing the full frame in numpy. Raises :class:`LusfeatError` naming the file if it ends
    before a wanted frame (it changed since its frames were counted).
    """
    wanted = None if indices is None else sorted(indices)
    if wanted is not None and not wanted:
        return
    if dicom.is_dicom(path):
        frames = ((index, resize_rgb(rgb, size) if size else rgb) for index, rgb in dicom.iter_frames(path, wanted))
    else:
        frames = _video_frames(path, wanted, size)
    position = 0
    for index, rgb in frames:
        yield index, rgb
        position += 1
    if wanted is not None and position < len(wanted):
        raise LusfeatError(
            f"{path}: ended after {position} of the {len(wanted)} wanted frames (frame {wanted[position]} "
            "missing); the file is truncated or changed since the frame count: replace it or rerun"
        )


def _video_frames(path: str | os.PathLike, wanted: list[int] | None, size: int | None) -> Iterator[tuple[int, np.ndarray]]:
    # Bilinear is PyAV's default too: the same pixels, but named it is ~10x faster (16.8 vs 1.3 ms a
    # 350 px frame to 299 px on the loaded 2-core machine; docs/engines.md), the bulk of decoding.
    options = {"width": size, "height": size, "interpolation": "BILINEAR"} if size else {}
    last = None if wanted is None else wanted[-1]
    wanted_set = None if wanted is None else set(wanted)
    with _open(path) as container:
        stream = container.streams.video[0]
        _one_thread(stream)
        for index, frame in enumerate(_decoded(container, stream)):
            if wanted_set is None or index in wanted_set:
                yield index, frame.to_ndarray(format="rgb24", **options)
            if last is not None and index >= last:
                break


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """``rgb`` (h, w, 3) uint8 to ``size x size`` by FFmpeg's bilinear scaler, as video frames are resized."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size, height=size)


def read_frames(path: str | os.PathLike, step: int = 1, size: int | None = None) -> np.ndarray:
    """All (every ``step``-th) frames of one file as an array ``(n, h, w, 3)``; for small inputs."""
    indices = frame_indices(count_frames(path), step)
    return np.stack([rgb for _, rgb in iter_frames(path, indices, size)])


def is_media(path: str | os.PathLike) -> bool:
    """Whether the file's content is an image, video or DICOM object lusfeat reads (its first frame decodes)."""
    return Path(path).is_file() and not probe_media(path)
