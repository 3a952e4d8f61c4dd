"""From frames to patients: video, region and global scores, and their agreement with the truth.

Rules (Raillard et al., Fig. 4):

- **region score** = the most frequent frame score among a patient's frames of that region;
  a tie goes to the higher score (the more severe reading wins). ``rule="mean_proba"`` takes
  instead the argmax of the mean frame probabilities (a tie again to the higher score).
- **true region score** = the most frequent *true* frame score in the region, by the same rule
  (COVID-BLUES scores each video once, but a region may have two videos with different scores).
- **global score** = the sum of a patient's region scores, reported with the number of regions
  scored beside it (6 BLUE points -> 0-18 for COVID-BLUES, 12 regions -> 0-36 in the paper).
  Region names come from the data; no protocol is hard-coded.

Every function takes a :class:`lusfeat.predictions.Predictions` (frames and each model's answers)
and a model name. A true score of -1 means unlabelled: such regions get a prediction but no
truth, and are left out of the agreement.

Where the model has a conformal set per frame (its video's set, see
:mod:`lusfeat.models.conformal`), videos and regions get ``score_set`` (written ``{1,2}``),
``set_size`` and ``in_set``: a region's set runs from the lowest to the highest score of its
videos' sets, so it holds the region's true score (one of its videos' true scores) whenever that
video's set does.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.models.conformal import fill_gaps
from lusfeat.predictions import Predictions, format_set
from lusfeat.scores import CLASSES, UNLABELLED, argmax_high, most_frequent

RULES = ("mode", "mean_proba")


def natural_key(value: object) -> tuple:
    """Sort key putting ``2`` before ``10`` and ``L2`` before ``L10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(value)) if part)


def natural_sorted(values: Iterable) -> list:
    return sorted(values, key=natural_key)


def group_sets(predictions: Predictions, model: str, keys: list[str]) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``(groups, sets)``: the groups of frames by ``keys`` (their key columns and ``rows``, the frames' positions)
    and per group the set running from the lowest to the highest score of its frames' sets (``None`` without sets)."""
    frames = predictions.frames.assign(patient_id=predictions.frames["patient_id"].astype(str),
                                       region=predictions.frames["region"].astype(str))
    positions = frames.groupby(keys, sort=False).indices
    groups = pd.DataFrame([dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)) for key in positions])
    groups["rows"] = list(positions.values())
    sets = predictions[model].sets
    if sets is None:
        return groups, None
    return groups, fill_gaps(np.array([sets[rows].any(axis=0) for rows in groups["rows"]]).reshape(-1, len(CLASSES)))


def _group_scores(predictions: Predictions, model: str, keys: list[str], rule: str,
                  calibrated: bool = False) -> pd.DataFrame:
    if rule not in RULES:
        raise LusfeatError(f"unknown aggregation rule {rule!r}; known: {', '.join(RULES)}")
    if not len(predictions):
        raise LusfeatError("predictions table has no rows")
    groups, sets = group_sets(predictions, model, keys)
    probabilities = predictions.probabilities(model, calibrated)
    scores, truths, folds = predictions[model].scores.astype(int), predictions.truth, predictions.fold
    rows = []
    for number, (group, positions) in enumerate(zip(groups[keys].to_dict("records"), groups["rows"], strict=True)):
        predicted, truth = scores[positions], truths[positions]
        mean_proba = probabilities[positions].mean(axis=0)
        counts = np.bincount(predicted, minlength=len(CLASSES))
        true_counts = np.bincount(truth[truth != UNLABELLED], minlength=len(CLASSES))
        pred = most_frequent(predicted) if rule == "mode" else argmax_high(mean_proba)
        true = most_frequent(truth)
        row = dict(group)
        if folds is not None:
            row["fold"] = int(folds[positions[0]])
        row["frames"] = len(positions)
        row.update({f"n_pred{k}": int(counts[k]) for k in CLASSES})
        row.update({f"n_true{k}": int(true_counts[k]) for k in CLASSES})
        row.update({f"p{k}": float(mean_proba[k]) for k in CLASSES})
        row["truth"] = true
        row["pred"] = pred
        row["agree"] = bool(pred == true) if true != UNLABELLED else None
        row["frame_accuracy"] = float((predicted == truth)[truth != UNLABELLED].mean()) if (truth != UNLABELLED).any() else math.nan
        if sets is not None:
            row["score_set"] = format_set(sets[number])
            row["set_size"] = int(sets[number].sum())
            row["in_set"] = bool(sets[number][true]) if true != UNLABELLED else None
        rows.append(row)
    out = pd.DataFrame(rows)
    order = sorted(range(len(out)), key=lambda i: tuple(natural_key(out.iloc[i][k]) for k in keys))
    return out.iloc[order].reset_index(drop=True)


VIDEO_KEYS = ["patient_id", "region", "video_id"]  # a video (lusfeat.index) and its region, for the tables
REGION_KEYS = ["patient_id", "region"]


def video_scores(predictions: Predictions, model: str = "head", rule: str = "mode",
                 calibrated: bool = False) -> pd.DataFrame:
    """One row per (patient, region, video): frame counts per predicted score, truth, score, agreement."""
    return _group_scores(predictions, model, VIDEO_KEYS, rule, calibrated)


def region_scores(predictions: Predictions, model: str = "head", rule: str = "mode",
                  calibrated: bool = False) -> pd.DataFrame:
    """One row per (patient, region).

    Columns: ``patient_id, region, [fold], frames, n_pred0..3`` (frames per predicted score),
    ``n_true0..3`` (frames per true score), ``p0..p3`` (mean probabilities), ``truth`` (-1 if
    unlabelled), ``pred`` (by ``rule``), ``agree`` (None if unlabelled), ``frame_accuracy``; with
    ``calibrated``, ``p0..p3`` are of the model's calibrated probabilities (where it has them).
    """
    return _group_scores(predictions, model, REGION_KEYS, rule, calibrated)


def global_scores(regions: pd.DataFrame) -> pd.DataFrame:
    """One row per patient from :func:`region_scores`.

    Columns: ``patient_id, [fold], regions`` (number scored), ``max_score`` (3 per region),
    ``pred`` (sum of predicted region scores), ``truth`` (sum of true region scores; NaN when a
    region is unlabelled), ``abs_error``, ``regions_agree`` and ``region_names``.
    """
    rows = []
    for patient, table in regions.groupby("patient_id", sort=False):
        labelled = table["truth"] != UNLABELLED
        truth = float(table["truth"].sum()) if labelled.all() else math.nan
        row = {"patient_id": patient}
        if "fold" in table.columns:
            row["fold"] = int(table["fold"].iloc[0])
        row.update({
            "regions": len(table),
            "max_score": 3 * len(table),
            "frames": int(table["frames"].sum()),
            "pred": int(table["pred"].sum()),
            "truth": truth,
            "abs_error": abs(truth - table["pred"].sum()) if labelled.all() else math.nan,
            "regions_agree": int(table.loc[labelled, "agree"].astype(bool).sum()),
            "regions_labelled": int(labelled.sum()),
            "region_names": " ".join(natural_sorted(table["region"].astype(str))),
        })
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.iloc[sorted(range(len(out)), key=lambda i: natural_key(out["patient_id"].iloc[i]))].reset_index(drop=True)


def _correlation(function, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan, math.nan  # undefined for a constant; two points always give +-1, which says nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = function(x, y)
    return float(result[0]), float(result[1])


def agreement(regions: pd.DataFrame, patients: pd.DataFrame) -> dict:
    """Region-level accuracy and quadratic-weighted kappa, global-score MAE, Pearson and Spearman.

    Unlabelled regions and patients with an unlabelled region are left out; counts say how
    many went in. Undefined values (a kappa or correlation of a constant) are NaN.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import cohen_kappa_score

    labelled = regions[regions["truth"] != UNLABELLED]
    truth, pred = labelled["truth"].astype(int).to_numpy(), labelled["pred"].astype(int).to_numpy()
    if len(labelled) and len(set(truth) | set(pred)) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qwk = float(cohen_kappa_score(truth, pred, weights="quadratic", labels=list(CLASSES)))
    else:
        qwk = math.nan
    scored = patients.dropna(subset=["truth"])
    true_global, pred_global = scored["truth"].to_numpy(float), scored["pred"].to_numpy(float)
    pearson, pearson_p = _correlation(pearsonr, true_global, pred_global)
    spearman, spearman_p = _correlation(spearmanr, true_global, pred_global)
    return {
        "regions": int(len(labelled)),
        "region_accuracy": float((truth == pred).mean()) if len(labelled) else math.nan,
        "region_qwk": qwk,
        "patients": int(len(scored)),
        "global_mae": float(np.abs(true_global - pred_global).mean()) if len(scored) else math.nan,
        "global_pearson": pearson,
        "global_pearson_p": pearson_p,
        "global_spearman": spearman,
        "global_spearman_p": spearman_p,
        "regions_per_patient": sorted({int(n) for n in patients["regions"]}),
    }


@dataclass
class Aggregate:
    """Region and global scores of one model on one predictions table, with their agreement."""

    model: str
    rule: str
    regions: pd.DataFrame
    patients: pd.DataFrame
    agreement: dict = field(default_factory=dict)


def aggregate(predictions: Predictions, model: str = "head", rule: str = "mode") -> Aggregate:
    """Region scores, global scores and agreement of ``model``'s predictions, by ``rule``."""
    regions = region_scores(predictions, model, rule)
    patients = global_scores(regions)
    return Aggregate(model, rule, regions, patients, agreement(regions, patients))


def patient_table(regions: pd.DataFrame, patient_id: str) -> pd.DataFrame:
    """The paper's Fig. 4 for one patient: per region, frames per predicted score, truth, score, agreement,
    and a last ``global`` row (sums, with the number of regions)."""
    table = regions[regions["patient_id"].astype(str) == str(patient_id)]
    if table.empty:
        raise LusfeatError(f"patient {patient_id!r} not in the predictions")
    columns = ["region", "frames", *[f"n_pred{k}" for k in CLASSES], "truth", "pred", "agree"]
    out = table[columns].copy()
    labelled = (table["truth"] != UNLABELLED).all()
    total = {"region": f"global ({len(table)} regions, 0-{3 * len(table)})", "frames": int(table["frames"].sum()),
             **{f"n_pred{k}": int(table[f"n_pred{k}"].sum()) for k in CLASSES},
             "truth": int(table["truth"].sum()) if labelled else UNLABELLED, "pred": int(table["pred"].sum())}
    total["agree"] = bool(total["truth"] == total["pred"]) if labelled else None
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)
