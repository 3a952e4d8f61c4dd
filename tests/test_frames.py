from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lusfeat.errors import LusfeatError
from lusfeat.frames import count_frames, frame_indices, iter_frames, probe_media, read_frames

VIDEO = "COVID-BLUES/lus_videos/patient_10_L1.mp4"


def test_real_video_decodes_to_rgb_frames(data_root):
    path = data_root / VIDEO
    assert count_frames(path) == 100
    frames = read_frames(path, step=10)
    assert frames.shape == (10, 350, 350, 3) and frames.dtype == np.uint8
    assert 5 < frames.mean() < 200  # an ultrasound image, not a blank


def test_frame_step_and_resize(data_root):
    path = data_root / VIDEO
    every = dict(iter_frames(path))
    some = dict(iter_frames(path, [3, 50, 99], size=128))
    assert sorted(some) == [3, 50, 99]
    assert some[50].shape == (128, 128, 3)
    assert np.array_equal(every[50], read_frames(path, step=50)[1])


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
    with pytest.raises(LusfeatError, match="ended after 100 of the 101 wanted frames"):
        list(iter_frames(data_root / VIDEO, list(range(101))))
