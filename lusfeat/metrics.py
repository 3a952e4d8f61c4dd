"""Frame- and video-level metrics of 0-3 severity predictions, JSON-ready (NaN becomes None).

Every scikit-learn call gets ``labels=[0, 1, 2, 3]``, so a score missing from a test fold still
has its row and column. Conventions where a score is absent from the true scores:

- macro precision / recall / F1 average over all four scores, an undefined value counting 0
  (scikit-learn's ``zero_division=0``);
- its one-vs-rest ROC-AUC is undefined: reported as None, and the macro ROC-AUC is the mean over
  the scores where it is defined;
- its row of the normalised confusion matrix is all zeros.

Each such case is written in ``notes``.

Calibration (:func:`calibration_metrics`): the multiclass Brier score (scikit-learn's
``brier_score_loss`` over the four scores: the squared distance of the probability vector from
the one-hot truth, 0 best, 2 worst) and the top-label expected calibration error (ECE) over
equal-mass bins (:data:`ECE_BINS` unless told). Conformal sets (:func:`set_metrics`): empirical
coverage and mean set size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lusfeat.index import split_key, video_keys
from lusfeat.scores import CLASSES, argmax_high, most_frequent

ECE_BINS = 10  # equal-mass bins of the expected calibration error


def _number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _check(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(CLASSES) or len(probabilities) != len(y_true):
        raise ValueError(f"probabilities must be (n, 4) for {len(y_true)} scores, got {probabilities.shape}")
    if len(y_true) == 0:
        raise ValueError("no frames to score")
    if not np.isin(y_true, CLASSES).all():
        raise ValueError("true scores must be 0..3")
    return y_true, probabilities


def roc_auc_per_class(y_true: np.ndarray, probabilities: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC-AUC of each score; None where the score is absent (or the only one present)."""
    values: list[float | None] = []
    for label in CLASSES:
        positives = y_true == label
        if positives.all() or not positives.any():
            values.append(None)
        else:
            values.append(float(roc_auc_score(positives, probabilities[:, label])))
    return values


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Mean recall over the scores present in the truth; scikit-learn warns when a prediction is a
    # score the truth lacks, a case the notes already report.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def classification_metrics(y_true: Sequence[int], probabilities: np.ndarray,
                           y_pred: Sequence[int] | None = None) -> dict[str, Any]:
    """Metrics of ``(n, 4)`` probabilities against true scores; predictions ``y_pred``, else the argmax (ties to the higher score).

    ``y_pred`` is for a model that reads its class by a rule of its own (an ordinal model's median
    score); ROC-AUC always comes from the probabilities.
    """
    y_true, probabilities = _check(np.asarray(y_true), probabilities)
    if y_pred is None:
        y_pred = CLASSES[argmax_high(probabilities)]
    else:
        y_pred = np.asarray(y_pred).astype(int)
        if len(y_pred) != len(y_true) or not np.isin(y_pred, CLASSES).all():
            raise ValueError(f"y_pred must hold one score 0..3 per frame ({len(y_true)})")
    support = np.bincount(y_true, minlength=len(CLASSES))
    absent = [label for label in CLASSES if support[label] == 0]
    notes = []
    if absent:
        notes.append(
            f"score(s) {', '.join(map(str, absent))} absent from the true scores: their ROC-AUC is null, the macro "
            "ROC-AUC averages the others, their recall and F1 count as 0 in the macro averages and their row of "
            "the normalised confusion matrix is 0"
        )
    auc = roc_auc_per_class(y_true, probabilities)
    defined = [value for value in auc if value is not None]
    counts = confusion_matrix(y_true, y_pred, labels=CLASSES)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    return {
        "n": int(len(y_true)),
        "support": support.tolist(),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_precision": float(precision_score(y_true, y_pred, labels=CLASSES, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(y_true, y_pred, labels=CLASSES, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=CLASSES, average="macro", zero_division=0)),
        "roc_auc": auc,
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "qwk": _kappa(y_true, y_pred, weights="quadratic"),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalized": normalised.tolist(),
        **calibration_metrics(y_true, probabilities),
        "notes": notes,
    }


def expected_calibration_error(y_true: Sequence[int], probabilities: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE over equal-mass bins: sum over bins of (share of rows) x |accuracy - mean confidence|.

    The confidence of a row is its largest probability, right when that score (ties to the higher)
    is the true one. Rows sorted by confidence are cut into ``min(n_bins, n)`` bins of equal size
    (``np.array_split``: sizes differ by at most one), so every bin holds enough rows to measure.
    """
    y_true, probabilities = _check(np.asarray(y_true), probabilities)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probabilities.max(axis=1)
    correct = (CLASSES[argmax_high(probabilities)] == y_true).astype(float)
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for rows in np.array_split(order, min(n_bins, len(order))):
        total += len(rows) * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total / len(order))


def calibration_metrics(y_true: Sequence[int], probabilities: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """``brier`` (multiclass, 0-2), ``ece`` (top-label, equal-mass bins) and ``ece_bins`` (the bin count)."""
    y_true, probabilities = _check(np.asarray(y_true), probabilities)
    normalised = probabilities / np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    return {"brier": float(brier_score_loss(y_true, normalised, labels=CLASSES)),
            "ece": expected_calibration_error(y_true, normalised, n_bins),
            "ece_bins": int(min(n_bins, len(y_true)))}


def set_metrics(y_true: Sequence[int], sets: np.ndarray) -> dict[str, Any]:
    """Empirical coverage of prediction sets ``(n, 4)`` booleans (score k in the row's set), mean size, per score.

    ``coverage`` is the share of rows whose set holds the true score; ``coverage_per_score`` the same
    among rows of each true score (None where absent); ``size_counts`` how many sets hold 1..4 scores.
    """
    y_true = np.asarray(y_true).astype(int)
    sets = np.asarray(sets, dtype=bool)
    if sets.ndim != 2 or sets.shape != (len(y_true), len(CLASSES)) or not len(y_true):
        raise ValueError(f"sets must be (n, 4) booleans for {len(y_true)} true scores, got {sets.shape}")
    covered = sets[np.arange(len(y_true)), y_true]
    sizes = sets.sum(axis=1)
    return {"n": int(len(y_true)), "coverage": float(covered.mean()), "mean_set_size": float(sizes.mean()),
            "coverage_per_score": [float(covered[y_true == k].mean()) if (y_true == k).any() else None for k in CLASSES],
            "size_counts": [int((sizes == size).sum()) for size in range(len(CLASSES) + 1)]}


def video_probabilities(frames: pd.DataFrame, probabilities: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean frame probability per video: ``(videos, probabilities[v, 4])``, videos in order of first appearance.

    ``frames`` holds ``patient_id``, ``video_id`` and ``score`` per frame (in the order of
    ``probabilities``). A video is a (patient_id, video_id) pair (:mod:`lusfeat.index`), so equal
    file names of two patients stay apart; its true score is its frames' most frequent score (one
    per video in COVID-BLUES).
    """
    if len(frames) != len(probabilities):
        raise ValueError("one row of probabilities per frame is needed")
    keys = pd.Series(video_keys(frames), name="video")
    grouped = pd.DataFrame(np.asarray(probabilities, dtype=float), columns=CLASSES).groupby(keys, sort=False)
    mean = grouped.mean()
    videos = pd.DataFrame([split_key(key) for key in mean.index], columns=["patient_id", "video_id"])
    scores = pd.Series(np.asarray(frames["score"]).astype(int)).groupby(keys, sort=False)
    videos["score"] = scores.agg(most_frequent).to_numpy()
    videos["n_frames"] = scores.size().to_numpy()
    return videos, mean.to_numpy()


def evaluate(frames: pd.DataFrame, probabilities: np.ndarray, predicted: Sequence[int] | None = None) -> dict[str, Any]:
    """Frame-level metrics with the video-level ones under ``"video"``.

    A video's prediction is the argmax of its mean frame probabilities; with ``predicted`` (a
    model's own per-frame scores) it is its most frequent predicted frame score, ties to the
    higher (for a video-level model: the video's own score).
    """
    frame_level = classification_metrics(frames["score"].to_numpy(), probabilities, predicted)
    videos, video_proba = video_probabilities(frames, probabilities)
    video_pred = None
    if predicted is not None:
        keys = video_keys(frames)
        video_pred = pd.Series(np.asarray(predicted).astype(int)).groupby(keys, sort=False).agg(most_frequent).to_numpy()
    frame_level["video"] = classification_metrics(videos["score"].to_numpy(), video_proba, video_pred)
    return frame_level


def agreement_kappa(predictions_a: Sequence[int], predictions_b: Sequence[int]) -> float | None:
    """Cohen's kappa (unweighted) between two models' predictions; None when undefined."""
    return _kappa(np.asarray(predictions_a), np.asarray(predictions_b))


def _kappa(a: np.ndarray, b: np.ndarray, weights: str | None = None) -> float | None:
    # Undefined (None) when both sides use one and the same score only: no chance correction exists.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return _number(cohen_kappa_score(a, b, labels=CLASSES, weights=weights))
