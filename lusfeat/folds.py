"""Patient-level stratified folds: made once, saved as ``folds.csv``, reused by every backbone.

A patient's frames are strongly correlated (same probe, same lungs, often the same score), so a
frame-level split leaks: the probes of docs/results.md measured QWK 0.74 with a leaky split against about 0.2 without.
Folds are therefore made over patients, and every split is checked for disjointness when used.

Stratum of a patient: its ``group`` from the manifest (COVID-BLUES: covid / negative) when it has
one, else its highest frame score, so that each fold gets a share of the severe patients.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.files import make_folder, write_csv
from lusfeat.index import FrameIndex

FOLDS_FILE = "folds.csv"
FOLD_COLUMNS = ["patient_id", "fold"]


def patient_strata(frames: pd.DataFrame) -> pd.Series:
    """Stratum per patient (index: patient_id): its group where it has one, else ``max score N``."""
    rows = frames.assign(patient_id=frames["patient_id"].astype(str))
    groups = rows.get("group", pd.Series("", index=rows.index)).fillna("").astype(str).str.strip()
    # A patient listed under several groups (a manifest inconsistency) keeps all of them in its
    # stratum name rather than being silently assigned one.
    named = groups[groups != ""].groupby(rows["patient_id"]).agg(lambda values: "+".join(sorted(set(values))))
    highest = rows.groupby("patient_id")["score"].max().map(lambda score: f"max score {score}")
    strata = highest.copy()
    strata.loc[named.index] = named
    strata.index.name = "patient_id"
    return strata.rename("stratum")


def make_folds(strata: pd.Series, n_folds: int = 3, seed: int = 0) -> pd.DataFrame:
    """Assign patients to folds 1..n_folds, stratified by ``strata`` (index: patient_id).

    Within each stratum (in sorted order) the patients are shuffled with ``seed`` and dealt to the
    folds in turn; the turn carries on from one stratum to the next, so fold sizes differ by at
    most one patient overall and by at most one within every stratum.
    """
    patients = strata.index.astype(str)
    if n_folds < 2:
        raise LusfeatError(f"--folds must be at least 2 (got {n_folds})")
    if len(patients) < n_folds:
        raise LusfeatError(f"{len(patients)} patient(s) cannot fill {n_folds} folds; use --folds {max(2, len(patients))} or more patients")
    rng = np.random.default_rng(seed)
    strata = pd.Series(strata.to_numpy(), index=patients)
    assigned: dict[str, int] = {}
    turn = int(rng.integers(n_folds))
    for stratum in sorted(strata.unique()):
        members = sorted(strata.index[strata == stratum])
        for patient in rng.permutation(members):
            assigned[str(patient)] = turn % n_folds + 1
            turn += 1
    table = pd.DataFrame({"patient_id": list(assigned), "fold": list(assigned.values())})
    return table.sort_values(["fold", "patient_id"], key=_natural_key).reset_index(drop=True)


def _natural_key(column: pd.Series) -> pd.Series:
    # Patient ids are strings; sort "2" before "10" when they are all numbers.
    if not pd.api.types.is_numeric_dtype(column) and column.astype(str).str.fullmatch(r"\d+").all():
        return column.astype(int)
    return column


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a ``folds.csv``: columns patient_id, fold; folds numbered 1..k, none empty."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise LusfeatError(f"{path}: not a readable folds file ({error}); delete it to make new folds") from error
    if list(table.columns) != FOLD_COLUMNS:
        raise LusfeatError(f"{path}: columns must be {', '.join(FOLD_COLUMNS)}, found {', '.join(map(str, table.columns))}")
    folds = pd.to_numeric(table["fold"], errors="coerce")
    if folds.isna().any() or (folds % 1 != 0).any():
        raise LusfeatError(f"{path}: every fold must be a whole number 1..k")
    table["fold"] = folds.astype(int)
    if table["patient_id"].duplicated().any():
        twice = sorted(table.loc[table["patient_id"].duplicated(), "patient_id"].unique())
        raise LusfeatError(f"{path}: patient(s) {', '.join(twice)} listed in more than one row")
    k = table["fold"].max()
    if sorted(table["fold"].unique()) != list(range(1, k + 1)) or k < 2:
        raise LusfeatError(f"{path}: folds must be numbered 1..k (k >= 2) with none empty, found {sorted(table['fold'].unique())}")
    return table


def write_folds(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically (temporary name, then rename): a reader never sees half a file."""
    path = Path(path)
    make_folder(path.parent)
    return write_csv(table[FOLD_COLUMNS], path)


def load_or_make_folds(run_dir: str | os.PathLike, frames: pd.DataFrame, n_folds: int = 3,
                       seed: int = 0) -> tuple[pd.DataFrame, bool]:
    """``(folds, reused)``: ``RUN/folds.csv`` if it exists (checked against ``frames``), else new ones, saved.

    Reusing the file is what makes backbones comparable: each is scored on the same split.
    """
    path = Path(run_dir) / FOLDS_FILE
    patients = set(frames["patient_id"].astype(str))
    if path.exists():
        folds = read_folds(path)
        missing = sorted(patients - set(folds["patient_id"]), key=lambda p: (len(p), p))
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise LusfeatError(
                f"{path} does not cover {len(missing)} patient(s) of the features ({shown}): it was made for "
                "other data. Use another --out folder, or delete it to make new folds (results in that folder "
                "would then no longer share one split)"
            )
        k = int(folds["fold"].max())
        if k != n_folds:
            raise LusfeatError(f"{path} has {k} folds but --folds {n_folds} was asked; use --folds {k} or another --out folder")
        return folds, True
    folds = make_folds(patient_strata(frames), n_folds, seed)
    write_folds(folds, path)
    return folds, False


def assert_patients_disjoint(train_patients: Iterable[str], test_patients: Iterable[str]) -> None:
    """Raise if a patient is on both sides of a split (its frames would leak into the test score)."""
    shared = sorted(set(map(str, train_patients)) & set(map(str, test_patients)))
    if shared:
        raise LusfeatError(f"patient(s) {', '.join(shared)} found in both the training and the test data: the split leaks")


def split_frames(frames: pd.DataFrame, folds: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(train, test)`` of ``frames`` for test fold ``fold``; checked patient-disjoint."""
    fold_of = dict(zip(folds["patient_id"].astype(str), folds["fold"], strict=True))
    frame_folds = frames["patient_id"].astype(str).map(fold_of)
    if frame_folds.isna().any():
        unknown = sorted(frames.loc[frame_folds.isna(), "patient_id"].astype(str).unique())
        raise LusfeatError(f"patient(s) {', '.join(unknown)} have no fold")
    if fold not in set(folds["fold"]):
        raise LusfeatError(f"fold {fold} does not exist; the folds are 1..{folds['fold'].max()}")
    is_test = (frame_folds == fold).to_numpy()
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if len(train) == 0 or len(test) == 0:
        raise LusfeatError(f"fold {fold}: no {'training' if len(train) == 0 else 'test'} frames in these features")
    patients = frames["patient_id"].astype(str).to_numpy()
    assert_patients_disjoint(patients[train], patients[test])
    return train, test


INNER_SEED_OFFSET = 1000  # every inner split of a fit is seeded seed + 1000


def inner_patient_folds(index: FrameIndex, y, n_folds: int, seed: int | None) -> tuple[np.ndarray, int]:
    """``(fold of each frame 1..k, k)``: the patients of ``index`` in ``k = min(n_folds, patients)`` folds,
    stratified as :func:`patient_strata` (group, else highest score ``y``), seeded ``seed + 1000``.

    The one inner split of a fit: the video model's choice of C, calibration and score sets, and the
    distribution check's threshold are all learned on it, from the training patients only. ``k < 2``
    (one patient) gives folds of zeros: there is nothing to hold out.
    """
    strata = patient_strata(index.frame_table(y))
    k = min(n_folds, len(strata))
    if k < 2:
        return np.zeros(len(index), dtype=np.int64), k
    folds = make_folds(strata, k, seed=INNER_SEED_OFFSET + (seed or 0)).set_index("patient_id")["fold"]
    return pd.Series(index.patient.astype(str)).map(folds).to_numpy().astype(np.int64), k
