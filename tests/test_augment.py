from __future__ import annotations

import numpy as np

from lusfeat.augment import AugmentParams, augment_frame, augmented_copies, frame_key


def _frame() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)


def test_copy_zero_is_the_original_and_others_differ():
    rgb = _frame()
    copies = augmented_copies(rgb, frame_key("a.mp4", 3), 3, 0, AugmentParams())
    assert copies.shape == (3, 64, 64, 3) and copies.dtype == np.uint8
    assert np.array_equal(copies[0], rgb)
    assert not np.array_equal(copies[1], rgb) and not np.array_equal(copies[1], copies[2])


def test_deterministic_from_seed_frame_and_copy():
    rgb = _frame()
    key = frame_key("a.mp4", 3)
    first = augment_frame(rgb, key, 2, 7, AugmentParams())
    assert np.array_equal(first, augment_frame(rgb, key, 2, 7, AugmentParams()))
    assert not np.array_equal(first, augment_frame(rgb, key, 2, 8, AugmentParams()))
    assert not np.array_equal(first, augment_frame(rgb, frame_key("a.mp4", 4), 2, 7, AugmentParams()))


def test_zero_ranges_give_identity_and_flip_mirrors():
    rgb = _frame()
    still = AugmentParams(rotation=0, shift=0, zoom=0, flip=False)
    assert np.array_equal(augment_frame(rgb, 5, 1, 0, still), rgb)
    flips = AugmentParams(rotation=0, shift=0, zoom=0, flip=True)
    outputs = [augment_frame(rgb, 5, copy, 0, flips) for copy in range(1, 9)]
    mirrored = [np.array_equal(out, rgb[:, ::-1]) for out in outputs]
    unchanged = [np.array_equal(out, rgb) for out in outputs]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True)) and any(mirrored) and any(unchanged)


def test_shift_moves_content():
    rgb = np.zeros((101, 101, 3), np.uint8)
    rgb[50, 50] = 255
    shifted = augment_frame(rgb, 9, 1, 0, AugmentParams(rotation=0, shift=0.1, zoom=0, flip=False))
    row, col = np.argwhere(shifted[..., 0] == shifted[..., 0].max())[0]
    assert (row, col) != (50, 50) and abs(row - 50) <= 11 and abs(col - 50) <= 11
