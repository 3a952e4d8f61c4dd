"""Decode images and videos to RGB uint8 frames through PyAV, streaming one frame at a time.

Images (PNG, JPEG) and videos (MP4, AVI, MOV, GIF) share one code path: FFmpeg opens both, so
a corrupt file of either kind fails the same clear way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from lusfeat.errors import LusfeatError


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise LusfeatError(f"{path}: cannot open as image or video ({error}); replace or remove the file") from error
    if not container.streams.video:
        container.close()
        raise LusfeatError(f"{path}: has no video or image stream; replace or remove the file")
    return container


def probe_media(path: str | os.PathLike) -> str:
    """Empty string if the file opens and its first frame decodes, else the reason it does not."""
    try:
        with _open(path) as container:
            for _ in container.decode(video=0):
                return ""
            return "no frame decodes"
    except LusfeatError as error:  # the reason alone: the caller names the file and what to do
        return str(error).split(": ", 1)[-1].removesuffix("; replace or remove the file")
    except av.error.FFmpegError as error:
        return f"decoding fails: {error}"


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames, by reading packets without decoding them (fast)."""
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as error:
        raise LusfeatError(f"{path}: corrupt video ({error}); replace or remove the file") from error


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
    resizing the full frame in numpy. Raises :class:`LusfeatError` naming the file if it is
    corrupt or ends before a wanted frame.
    """
    wanted = None if indices is None else sorted(indices)
    if wanted is not None and not wanted:
        return
    options = {"width": size, "height": size} if size else {}
    last = None if wanted is None else wanted[-1]
    position = 0
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            wanted_set = None if wanted is None else set(wanted)
            for index, frame in enumerate(container.decode(stream)):
                if wanted_set is None or index in wanted_set:
                    yield index, frame.to_ndarray(format="rgb24", **options)
                    position += 1
                if last is not None and index >= last:
                    break
    except av.error.FFmpegError as error:
        raise LusfeatError(f"{path}: corrupt video, decoding failed at frame {position} ({error}); replace or remove the file") from error
    if wanted is not None and position < len(wanted):
        raise LusfeatError(
            f"{path}: ended after {position} of the {len(wanted)} wanted frames (frame {wanted[position]} "
            "missing); the file is truncated or changed since the frame count: replace it or rerun"
        )


def read_frames(path: str | os.PathLike, step: int = 1, size: int | None = None) -> np.ndarray:
    """All (every ``step``-th) frames of one file as an array ``(n, h, w, 3)``; for small inputs."""
    indices = frame_indices(count_frames(path), step)
    return np.stack([rgb for _, rgb in iter_frames(path, indices, size)])


def is_media(path: str | os.PathLike) -> bool:
    from lusfeat.manifest import MEDIA_SUFFIXES

    return Path(path).suffix.lower() in MEDIA_SUFFIXES
