"""Shared fixtures: real COVID-BLUES videos and real ImageNet weights from ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _dir(env: str, fallback: Path) -> Path:
    return Path(os.environ[env]) if os.environ.get(env) else fallback


DATA_ROOT = _dir("LUSFEAT_DATA_ROOT", SHARED / "data")
WEIGHTS_DIR = _dir("LUSFEAT_WEIGHTS_DIR", SHARED / "weights")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding COVID-BLUES/; skips where the dataset is absent."""
    if not (DATA_ROOT / "COVID-BLUES" / "lus_videos").is_dir():
        pytest.skip(f"COVID-BLUES not found under {DATA_ROOT} (set LUSFEAT_DATA_ROOT)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The folder holding the real ImageNet weight files; skips where absent."""
    if not (WEIGHTS_DIR / "mobilenet_0.25_224_imagenet_notop.h5").is_file():
        pytest.skip(f"ImageNet weights not found in {WEIGHTS_DIR} (set LUSFEAT_WEIGHTS_DIR)")
    return WEIGHTS_DIR


@pytest.fixture(scope="session")
def blues_manifest(data_root: Path) -> pd.DataFrame:
    """The project's COVID-BLUES manifest (one row per video)."""
    return pd.read_csv(REPO / "data_manifest.csv", dtype=str, keep_default_na=False)


def write_manifest(rows: pd.DataFrame, path: Path) -> Path:
    rows.to_csv(path, index=False)
    return path


@pytest.fixture
def two_patient_manifest(blues_manifest: pd.DataFrame, tmp_path: Path) -> Path:
    """Manifest of two COVID-BLUES patients (12 videos), one covid and one negative."""
    rows = blues_manifest[blues_manifest["patient_id"].isin(["1", "9"])]
    return write_manifest(rows, tmp_path / "two.csv")
