"""lus_signal: each number responds to the sign it is named for; real frames; the cache command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lusfeat.experiments.lus_signal import SIGNAL_NAMES, frame_signal, images_signal, main, pleura_row, sector_depth

pytestmark = pytest.mark.experiments

SIZE, DEPTH, PLEURA = 128, 110, 25


def synthetic_frame(kind: str, seed: int = 0) -> np.ndarray:
    """Grey frame: soft tissue, a pleural line at row 25, and below it 'a_lines', 'b_lines' or 'white'."""
    rng = np.random.default_rng(seed)
    grey = np.zeros((SIZE, SIZE))
    grey[:DEPTH] = 0.15 + 0.03 * rng.standard_normal((DEPTH, SIZE))
    grey[3:8] += 0.55  # skin, brighter than the pleura: must not be taken for it
    grey[PLEURA - 1:PLEURA + 2] = 0.6
    below = slice(PLEURA + 2, DEPTH)
    if kind == "a_lines":
        grey[PLEURA + 2:DEPTH] *= 0.5
        grey[2 * PLEURA - 1:2 * PLEURA + 2] = 0.35  # reverberation at twice the pleural depth
    elif kind == "b_lines":
        grey[PLEURA + 2:DEPTH] *= 0.5
        for column in (30, 60, 95):
            grey[below, column - 2:column + 3] = 0.55
    elif kind == "white":
        grey[below] = 0.45 + 0.03 * rng.standard_normal((DEPTH - PLEURA - 2, SIZE))
    return np.clip(grey, 0.0, 1.0)


def named(values: np.ndarray) -> dict[str, float]:
    return dict(zip(SIGNAL_NAMES, values, strict=True))


def test_geometry_finds_the_sector_bottom_and_the_pleura_not_the_skin() -> None:
    grey = synthetic_frame("a_lines")
    assert abs(sector_depth(grey) - DEPTH) <= 2
    assert abs(pleura_row(grey) - PLEURA) <= 1


def test_each_sign_moves_its_own_numbers() -> None:
    a_lines, b_lines, white = (named(frame_signal(synthetic_frame(kind))) for kind in ("a_lines", "b_lines", "white"))
    assert a_lines["a_line"] > 1.5 > b_lines["a_line"]
    assert b_lines["column_cv"] > 3 * a_lines["column_cv"]
    assert b_lines["column_bright_fraction"] > 0.05 > a_lines["column_bright_fraction"]
    assert b_lines["column_coherence"] > 0.9
    assert b_lines["gradient_ratio"] > a_lines["gradient_ratio"]
    assert white["below_over_pleura"] > 2 * a_lines["below_over_pleura"]
    assert white["below_bright_fraction"] > 0.9 > a_lines["below_bright_fraction"]
    assert abs(a_lines["pleura_depth"] - PLEURA / DEPTH) < 0.02
    assert a_lines["pleura_continuity"] > 0.9


def test_a_broken_pleura_is_less_continuous() -> None:
    whole = synthetic_frame("a_lines")
    broken = whole.copy()
    broken[PLEURA - 1:PLEURA + 2, 40:80] = 0.1
    assert named(frame_signal(broken))["pleura_continuity"] < named(frame_signal(whole))["pleura_continuity"] - 0.2
    assert named(frame_signal(broken))["pleura_gaps"] >= 1


def test_degenerate_frames_give_finite_numbers_and_bad_shapes_are_refused() -> None:
    for grey in (np.zeros((64, 64)), np.ones((64, 64))):
        assert np.isfinite(frame_signal(grey)).all()
    with pytest.raises(ValueError, match="2-D grey frame"):
        frame_signal(np.zeros((16, 16)))
    assert images_signal(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, len(SIGNAL_NAMES))


def test_real_frames_have_a_plausible_pleura(data_root: Path) -> None:
    from lusfeat.frames import read_frames

    rgb = read_frames(data_root / "COVID-BLUES" / "lus_videos" / "patient_1_L1.mp4", step=20, size=128)
    values = images_signal(rgb)
    assert values.shape == (len(rgb), len(SIGNAL_NAMES)) and np.isfinite(values).all()
    depth = values[:, SIGNAL_NAMES.index("pleura_depth")]
    assert ((depth >= 0.09) & (depth <= 0.45)).all()


def test_command_writes_a_feature_file_aligned_with_extract(two_patient_manifest: Path, data_root: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lusfeat.store import load_features

    args = ["--manifest", str(two_patient_manifest), "--data-root", str(data_root), "--frame-step", "60",
            "--augment-copies", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    features = load_features(tmp_path / "lus_signal.h5")
    assert features.features.shape[0] == 2 and features.features.shape[2] == len(SIGNAL_NAMES)
    assert features.config.backbone == "lus_signal" and features.config.frame_step == 60
    assert set(features.frames["patient_id"]) == {"1", "9"}
    assert not np.allclose(features.features[0], features.features[1])  # copy 1 is augmented
    assert main(args) == 0 and "up to date" in capsys.readouterr().out
    assert main([*args[:-2], "--out", str(tmp_path), "--size", "96"]) == 1  # other settings: refused
