from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import cut_file, moving_frames, write_video
from PIL import Image

from lusfeat.errors import LusfeatError
from lusfeat.frames import count_frames, frame_indices, iter_frames, media_info, probe_media, read_frames

VIDEO = "COVID-BLUES/lus_videos/patient_10_L1.mp4"


def test_real_video_decodes_to_rgb_frames(data_root):
    path = data_root / VIDEO
    assert count_frames(path) == 100
    frames = read_frames(path, step=10)
    assert frames.shape == (10, 350, 350, 3) and frames.dtype == np.uint8
    assert 5 < frames.mean() < 200  # an ultrasound image, not a blank


def test_frames_are_counted_from_the_container_where_it_can_be_trusted(data_root, tmp_path, monkeypatch):
    """Planning opens a file once and decodes its first frame only, where the container's count holds: as many
    intact packets as it announces. A stream cut after its header is counted by decoding, as before."""
    from lusfeat import frames

    whole = write_video(tmp_path / "whole.mp4", moving_frames(60), options={"g": "12", "bf": "2"},
                        container_options={"movflags": "faststart"})
    cut = cut_file(whole, tmp_path / "cut.mp4", 0.9)
    expected = {path: frames._decoded_count(path)[0] for path in (data_root / VIDEO, whole, cut)}
    assert expected[data_root / VIDEO] == 100 and expected[whole] == 60 and 1 <= expected[cut] < 60
    decoded, original = [], frames._decoded_count
    monkeypatch.setattr(frames, "_decoded_count", lambda path: decoded.append(Path(path).name) or original(path))
    for path, count in expected.items():
        info = media_info(path)
        assert info.frames == count and (info.width, info.height) == ((350, 350) if path == data_root / VIDEO
                                                                      else (80, 64))
    assert decoded == ["cut.mp4"]  # only the file whose container cannot be trusted is decoded to count it
    assert media_info(cut).announced == 60 and media_info(cut).short


def test_frame_step_and_resize(data_root):
    path = data_root / VIDEO
    every = dict(iter_frames(path))
    some = dict(iter_frames(path, [3, 50, 99], size=128))
    assert sorted(some) == [3, 50, 99]
    assert some[50].shape == (128, 128, 3)
    assert np.array_equal(every[50], read_frames(path, step=50)[1])
    # The explicit (fast) bilinear resize gives PyAV's default pixels: features stay those of earlier files.
    import av

    with av.open(str(path)) as container:
        frame = next(frame for index, frame in enumerate(container.decode(video=0)) if index == 50)
        assert np.array_equal(some[50], frame.to_ndarray(format="rgb24", width=128, height=128))


def test_frame_indices():
    assert frame_indices(7, 3) == [0, 3, 6]
    assert frame_indices(7, 1, frame=5) == [5]
    assert frame_indices(7, 1, frame=9) == []
    with pytest.raises(LusfeatError):
        frame_indices(7, 0)


def test_png_image_is_one_frame(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert count_frames(tmp_path / "a.png") == 1
    frames = read_frames(tmp_path / "a.png")
    assert np.array_equal(frames[0], rgb)


def test_corrupt_and_truncated_files_are_named(tmp_path, data_root):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    assert "cannot open" in probe_media(bad)
    with pytest.raises(LusfeatError, match="bad.mp4"):
        list(iter_frames(bad))
    with pytest.raises(LusfeatError, match="bad.mp4"):
        media_info(bad)
    with pytest.raises(LusfeatError, match="ended after 100 of the 101 wanted frames"):
        list(iter_frames(data_root / VIDEO, list(range(101))))


FRAMES = moving_frames(30)

# (file name, encoder, pixel format): containers and codecs FFmpeg reads that the suffix list of
# lusfeat 0.1 refused; whether a file is read is now decided by decoding it.
CONTAINERS = [
    ("clip.mpeg", "mpeg1video", "yuv420p"),  # MPEG-1 program stream
    ("clip.mpg", "mpeg2video", "yuv420p"),  # MPEG-2 program stream
    ("clip.m4v", "libx264", "yuv420p"),
    ("clip.mkv", "libx264", "yuv420p"),  # Matroska
    ("clip.webm", "libvpx", "yuv420p"),  # WebM, VP8
    ("vp9.webm", "libvpx-vp9", "yuv420p"),
    ("clip.wmv", "wmv2", "yuv420p"),  # ASF
    ("clip.flv", "flv1", "yuv420p"),
    ("clip.ts", "mpeg2video", "yuv420p"),  # MPEG transport stream
    ("clip.avi", "mpeg4", "yuv420p"),
    ("clip.nut", "ffv1", "yuv420p"),
    ("hevc.mkv", "hevc", "yuv420p"),
    ("clip.apng", "apng", "rgb24"),  # an animated PNG: an image sequence in one file
    ("no_suffix", "libx264", "yuv420p"),  # an MP4 named without a suffix
]


@pytest.mark.parametrize(("name", "codec", "pix_fmt"), CONTAINERS)
def test_any_container_ffmpeg_reads(tmp_path, name, codec, pix_fmt):
    file = tmp_path / name
    if name == "no_suffix":
        write_video(tmp_path / "clip.mp4", FRAMES, codec, pix_fmt=pix_fmt).rename(file)
    else:
        write_video(file, FRAMES, codec, pix_fmt=pix_fmt)
    assert probe_media(file) == ""
    info = media_info(file)
    assert (info.announced, info.frames, info.width, info.height) == (30, 30, 80, 64) and not info.short
    decoded = read_frames(file, step=10)
    assert decoded.shape == (3, 64, 80, 3)
    assert np.abs(decoded.astype(int) - np.stack(FRAMES[::10])).mean() < 12  # lossy codecs, but the same picture


def test_what_is_not_an_image_or_video_says_why(tmp_path):
    (tmp_path / "notes.txt").write_text("the patient was seen on Monday\n" * 20)  # FFmpeg would draw it as ANSI art
    assert "a text file" in probe_media(tmp_path / "notes.txt")
    import av

    with av.open(str(tmp_path / "sound.wav"), "w") as container:  # audio only
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    assert probe_media(tmp_path / "sound.wav").startswith("no video stream (audio stream(s) only)")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "cannot open" in probe_media(tmp_path / "empty.mp4")


@pytest.mark.parametrize(("name", "codec", "options"), [
    ("cut.mp4", "libx264", {"movflags": "faststart"}),  # the header (moov) first announces all 60 frames
    ("cut.mov", "libx264", {"movflags": "faststart"}),
    ("cut.avi", "mpeg4", {}),  # the AVI header announces 60
])
def test_a_stream_cut_after_its_header_gives_the_frames_that_decode(tmp_path, name, codec, options):
    frames = moving_frames(60)
    whole = write_video(tmp_path / f"whole{Path(name).suffix}", frames, codec, options={"g": "12", "bf": "2"}
                        if codec == "libx264" else {"g": "12"}, container_options=options)
    cut = cut_file(whole, tmp_path / name, 0.9)
    info = media_info(cut)
    assert info.announced == 60 and 1 <= info.frames < 60 and info.short
    assert media_info(cut) == info  # the same count every time
    decoded = read_frames(cut)
    assert len(decoded) == info.frames == count_frames(cut)
    assert np.abs(decoded.astype(int) - np.stack(frames[: info.frames])).mean() < 12  # the first frames, in order
    assert [index for index, _ in iter_frames(cut, [0, info.frames - 1])] == [0, info.frames - 1]
    with pytest.raises(LusfeatError, match=f"{name}: ended after 0 of the 1 wanted frames"):
        list(iter_frames(cut, [info.frames]))


def test_dicom_without_pydicom_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if the dicom extra were not installed
    file = tmp_path / "IM0001"
    file.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    assert probe_media(file) == 'a DICOM file, and DICOM support is not installed: pip install "lusfeat[dicom]"'
    with pytest.raises(LusfeatError, match=r"IM0001: a DICOM file, and DICOM support is not installed"):
        media_info(file)
