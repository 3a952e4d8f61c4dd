"""lung_crop: the box starts just above the pleura; the command writes a tagged feature file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lusfeat.experiments.lung_crop import POOLING_TAG, crop_lung, lung_box, main

pytestmark = pytest.mark.experiments


def test_box_keeps_the_pleura_and_drops_the_chest_wall() -> None:
    grey = np.zeros((128, 128))
    grey[:110, 10:118] = 0.15
    grey[3:8, 10:118] = 0.4  # skin
    grey[30:33, 10:118] = 0.6  # pleura
    top, bottom, left, right = lung_box(grey)
    assert 24 <= top <= 30 and abs(bottom - 110) <= 2
    assert abs(left - 10) <= 1 and abs(right - 118) <= 1
    rgb = (np.repeat(grey[..., None], 3, axis=2) * 255).astype(np.uint8)
    crop = crop_lung(rgb, 71)
    assert crop.shape == (71, 71, 3) and crop.dtype == np.uint8
    assert crop[:, 0].max() > 0  # black margins are cut away


@pytest.mark.slow
def test_command_writes_lung_features(two_patient_manifest: Path, data_root: Path, weights_dir: Path,
                                      tmp_path: Path) -> None:
    from lusfeat.store import load_features

    code = main(["--manifest", str(two_patient_manifest), "--data-root", str(data_root), "--backbone", "mobilenet",
                 "--weights", str(weights_dir), "--frame-step", "90", "--augment-copies", "0", "--out", str(tmp_path)])
    assert code == 0
    features = load_features(tmp_path / "mobilenet.h5")
    assert features.config.pooling == POOLING_TAG
    assert features.features.shape[0] == 1 and features.features.shape[2] == 256
    assert np.isfinite(features.features).all() and features.features.std() > 0


def test_unknown_backbone_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backbone", "alexnet"]) == 1
    assert "unknown backbone" in capsys.readouterr().err
