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
    """Manifest of two COVID-BLUES patients (12 videos), one covid and one negative (13 videos)."""
    rows = blues_manifest[blues_manifest["patient_id"].isin(["1", "9"])]
    return write_manifest(rows, tmp_path / "two.csv")


# --------------------------------------------------------------------------- added for report / predict tests


def write_synthetic_run(run_dir: Path, *, backbone: str = "mobilenet", folds: int = 3, patients_per_fold: int = 2,
                        regions: tuple[str, ...] = ("L1", "L2", "L3", "R1", "R2", "R3"), frames_per_video: int = 4,
                        pooled: bool = True, seed: int = 0) -> Path:
    """A run folder as ``lusfeat.fit`` writes it (folds.csv, predictions.csv, metrics.json, model.json), with
    made-up patients and predictions: no data, no network. Head and logreg are right on most frames."""
    import json

    import numpy as np

    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patients = [str(i + 1) for i in range(folds * patients_per_fold)]
    fold_of = {p: i % folds + 1 for i, p in enumerate(patients)}
    pd.DataFrame({"patient_id": patients, "fold": [fold_of[p] for p in patients]}).to_csv(run_dir / "folds.csv", index=False)
    rows = []
    for patient in patients:
        for region in regions:
            truth = int(rng.integers(4))
            for index in range(frames_per_video):
                row = {"path": f"videos/patient_{patient}_{region}.mp4", "frame_index": index * 10,
                       "patient_id": patient, "region": region, "video_id": f"patient_{patient}_{region}",
                       "group": "covid" if int(patient) % 2 else "negative", "score": truth}
                for prefix, skill in (("head", 0.75), ("logreg", 0.6)):
                    pred = truth if rng.random() < skill else int(rng.integers(4))
                    proba = rng.dirichlet(np.ones(4)) * 0.4
                    proba[pred] += 0.6
                    row.update({f"{prefix}_p{k}": float(proba[k]) for k in range(4)})
                    row[f"{prefix}_pred"] = int(np.argmax(proba))
                row["fold"] = fold_of[patient]
                rows.append(row)
    table = pd.DataFrame(rows)
    extraction = {"backbone": backbone, "weights": "imagenet", "input_size": 224, "feature_dim": 256, "dtype": "float32",
                  "copies": 1, "aug_rotation": 10.0, "aug_shift": 0.1, "aug_zoom": 0.1, "aug_flip": True, "seed": 0,
                  "frame_step": 10, "manifest_sha256": "0" * 64, "pooling": "avg", "format_version": 1}
    for fold in range(1, folds + 1):
        folder = run_dir / backbone / f"fold{fold}"
        folder.mkdir(parents=True)
        test = table[table["fold"] == fold]
        test.to_csv(folder / "predictions.csv", index=False)
        metrics = {"backbone": backbone, "fold": fold, "agreement_kappa": 0.5, "warnings": [],
                   **{prefix: {"accuracy": float((test[f"{prefix}_pred"] == test["score"]).mean()), "fit_seconds": 1.0}
                      for prefix in ("head", "logreg")}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        model = {"backbone": backbone, "fold": fold, "extraction": extraction, "weights_source": "imagenet",
                 "feature_dim": 256, "classes": [0, 1, 2, 3],
                 "train_patients": [p for p in patients if fold_of[p] != fold], "lusfeat_version": "0.1.0"}
        (folder / "model.json").write_text(json.dumps(model))
    if pooled:
        (run_dir / backbone / "pooled").mkdir()
        table.to_csv(run_dir / backbone / "pooled" / "predictions.csv", index=False)
    return run_dir


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    """A made-up 3-fold, 6-patient, 6-region run folder of one backbone (see :func:`write_synthetic_run`)."""
    return write_synthetic_run(tmp_path / "run")


SIX_PATIENTS = ["1", "4", "6", "7", "8", "9"]  # three covid, three negative; scores 0-3 all present


@pytest.fixture(scope="session")
def six_patient_features(blues_manifest: pd.DataFrame, data_root: Path, weights_dir: Path,
                         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real MobileNet feature file: 6 COVID-BLUES patients, every 20th frame, 3 copies (~170 frames)."""
    from lusfeat.extract import main as extract

    folder = tmp_path_factory.mktemp("six_patients")
    manifest = write_manifest(blues_manifest[blues_manifest["patient_id"].isin(SIX_PATIENTS)], folder / "six.csv")
    code = extract(["--manifest", str(manifest), "--data-root", str(data_root), "--backbone", "mobilenet",
                    "--weights", str(weights_dir), "--frame-step", "20", "--out", str(folder / "features"),
                    "--no-progress"])
    assert code == 0
    return folder / "features" / "mobilenet.h5"


TINY_RUN_PATIENTS = ["3", "4", "6"]  # scores 0-3 between them; patient 9 stays unseen for predict tests


@pytest.fixture(scope="session")
def tiny_fit_run(blues_manifest: pd.DataFrame, data_root: Path, weights_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder from ``lusfeat.fit --fold all``: MobileNet features of 3 COVID-BLUES patients, every 30th
    frame, no augmented copies (~60 frames), 3 patient folds. Scores are poor (a few dozen training frames); the
    files are real."""
    from lusfeat.extract import main as extract
    from lusfeat.fit import main as fit

    folder = tmp_path_factory.mktemp("tiny_run")
    manifest = write_manifest(blues_manifest[blues_manifest["patient_id"].isin(TINY_RUN_PATIENTS)], folder / "three.csv")
    assert extract(["--manifest", str(manifest), "--data-root", str(data_root), "--backbone", "mobilenet",
                    "--weights", str(weights_dir), "--frame-step", "30", "--augment-copies", "0",
                    "--out", str(folder / "features"), "--no-progress"]) == 0
    assert fit(["--fold", "all", "--features", str(folder / "features" / "mobilenet.h5"), "--out", str(folder / "run")]) == 0
    return folder / "run"
