"""Report figures, one function each, returning a matplotlib ``Figure`` (no pyplot state kept).

Every figure puts the models side by side (one panel per model, e.g. the Keras head
beside the logistic-regression check) and draws through scikit-learn's Display classes where
they fit. :func:`png_bytes` renders a figure to PNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lusfeat.aggregate import Aggregate, natural_sorted
from lusfeat.predictions import Predictions
from lusfeat.scores import CLASSES, UNLABELLED

MODEL_NAMES = {"head": "Keras head", "logreg": "logistic regression", "video": "video ordinal"}
PANEL = (4.3, 3.8)  # inches per panel
DPI = 80


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def model_label(prefix: str) -> str:
    return MODEL_NAMES.get(prefix, prefix)


def _panels(n: int, *, width: float = PANEL[0], height: float = PANEL[1]) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * n, height), layout="constrained")
    axes = figure.subplots(1, n, squeeze=False)[0]
    return figure, list(axes)


def png_bytes(figure: Figure, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def roc_figure(predictions: Predictions, prefixes: Sequence[str]) -> Figure:
    """One-vs-rest ROC curve per class, one panel per model."""
    from sklearn.metrics import RocCurveDisplay

    labelled = predictions.labelled()
    truth = labelled.truth
    figure, axes = _panels(len(prefixes))
    for ax, prefix in zip(axes, prefixes, strict=True):
        proba = labelled[prefix].probabilities
        absent, only = [], []
        for k in CLASSES:
            positives = truth == k
            if positives.all() or not positives.any():  # AUC undefined without positives and negatives
                (only if positives.all() else absent).append(str(k))
                continue
            RocCurveDisplay.from_predictions(positives, proba[:, k], ax=ax, name=f"score {k} vs rest")
            ax.lines[-1].set_color(f"C{k}")  # one colour per score in every panel, whatever is skipped
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance (AUC = 0.5)")
        title = f"{model_label(prefix)}: ROC, one vs rest"
        if only:
            title += f"\n(every true score is {only[0]}: no curve can be drawn)"
        elif absent:
            title += f"\n(score {', '.join(absent)}: not in the truth, no curve)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8, loc="lower right")
    return figure


def confusion_figure(predictions: Predictions, prefixes: Sequence[str]) -> Figure:
    """Frame-level confusion matrix normalised by true class (rows sum to 1), one panel per model."""
    from sklearn.metrics import ConfusionMatrixDisplay

    labelled = predictions.labelled()
    figure, axes = _panels(len(prefixes), height=3.9)
    for ax, prefix in zip(axes, prefixes, strict=True):
        truth, pred = labelled.truth, labelled[prefix].scores.astype(int)
        ConfusionMatrixDisplay.from_predictions(truth, pred, labels=list(CLASSES), normalize="true", ax=ax,
                                                values_format=".2f", colorbar=False, cmap="Blues")
        ax.set_title(f"{model_label(prefix)}: frames, normalised by true score\n"
                     f"(n={len(labelled)}, accuracy {np.mean(truth == pred):.3f})", fontsize=10)
        ax.set_xlabel("predicted score")
        ax.set_ylabel("true score")
    return figure


def region_confusion_figure(aggregates: Sequence[Aggregate]) -> Figure:
    """Region-score confusion matrix (counts of patient regions), one panel per model."""
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = _panels(len(aggregates), height=3.9)
    for ax, agg in zip(axes, aggregates, strict=True):
        regions = agg.regions[agg.regions["truth"] != UNLABELLED]
        ConfusionMatrixDisplay.from_predictions(regions["truth"].astype(int), regions["pred"].astype(int),
                                                labels=list(CLASSES), ax=ax, colorbar=False, cmap="Greens")
        result = agg.agreement
        ax.set_title(f"{model_label(agg.model)}: region scores (patient x region)\n"
                     f"n={result['regions']}, accuracy {_num(result['region_accuracy'])}, QWK {_num(result['region_qwk'])}",
                     fontsize=10)
        ax.set_xlabel("predicted region score")
        ax.set_ylabel("true region score")
    return figure


def region_accuracy_figure(predictions: Predictions, prefixes: Sequence[str]) -> Figure:
    """Frame accuracy per region (the paper's Fig. 2), models side by side as grouped bars."""
    labelled = predictions.labelled()
    frames = labelled.frames.assign(region=lambda t: t["region"].astype(str))
    regions = natural_sorted(frames["region"].unique())
    figure = Figure(figsize=(max(2 * PANEL[0], 1.0 + 0.5 * len(regions) * len(prefixes)), PANEL[1]), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(prefixes)
    x = np.arange(len(regions))
    for i, prefix in enumerate(prefixes):
        correct = pd.Series(labelled[prefix].scores.astype(int) == labelled.truth).groupby(frames["region"]).mean()
        values = [correct.get(region, np.nan) for region in regions]
        bars = ax.bar(x + (i - (len(prefixes) - 1) / 2) * width, values, width, label=model_label(prefix), color=f"C{i}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    counts = frames.groupby("region").size()
    ax.set_xticks(x, [f"{region}\n(n={counts[region]})" for region in regions], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("frame accuracy")
    ax.set_title("Frame accuracy per region", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return figure


def global_scatter_figure(aggregates: Sequence[Aggregate]) -> Figure:
    """Global score per patient, predicted vs truth, with the identity line; one panel per model.

    Patients sharing a (truth, predicted) point are drawn as one larger marker with their count.
    """
    figure, axes = _panels(len(aggregates))
    for ax, agg in zip(axes, aggregates, strict=True):
        patients = agg.patients.dropna(subset=["truth"])
        top = int(max(patients["max_score"].max() if len(patients) else 3, 3))
        points = patients.groupby(["truth", "pred"]).size().reset_index(name="n")
        ax.plot([0, top], [0, top], color="0.5", linestyle="--", linewidth=1, label="identity")
        ax.scatter(points["truth"], points["pred"], s=25 + 30 * (points["n"] - 1), alpha=0.7, color="C3",
                   edgecolor="k", linewidth=0.5, label="patients")
        for row in points.itertuples():
            if row.n > 1:
                ax.annotate(str(row.n), (row.truth, row.pred), fontsize=7, ha="center", va="center")
        ax.set_xlim(-0.5, top + 0.5)
        ax.set_ylim(-0.5, top + 0.5)
        ax.set_aspect("equal")
        ax.set_xlabel("true global score (sum of true region scores)")
        ax.set_ylabel("predicted global score")
        result = agg.agreement
        regions = "/".join(str(n) for n in result["regions_per_patient"])
        ax.set_title(f"{model_label(agg.model)}: global score, {result['patients']} patients ({regions} regions)\n"
                     f"MAE {_num(result['global_mae'], 2)}, Pearson {_num(result['global_pearson'])}, "
                     f"Spearman {_num(result['global_spearman'])}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return figure


def reliability_figure(predictions: Predictions, prefixes: Sequence[str], n_bins: int = 10) -> Figure:
    """Reliability diagram per model, per video (one row each: its mean frame probabilities), before and after calibration.

    Top-label: the probability of the most probable score against how often that score is the
    true one, over ``n_bins`` equal-mass bins (scikit-learn's ``CalibrationDisplay``, strategy
    "quantile"). Models without calibrated probabilities show the uncalibrated curve only.
    """
    from sklearn.calibration import CalibrationDisplay

    from lusfeat.metrics import video_probabilities

    labelled = predictions.labelled()
    figure, axes = _panels(len(prefixes))
    for axis, prefix in zip(axes, prefixes, strict=True):
        answers = labelled[prefix]
        curves = [("before", answers.probabilities)] + ([("after", answers.calibrated)]
                                                        if answers.calibrated is not None else [])
        for name, frame_proba in curves:
            videos, proba = video_probabilities(labelled.frames, frame_proba)
            chosen = len(CLASSES) - 1 - np.argmax(proba[:, ::-1], axis=1)
            correct = (chosen == videos["score"].to_numpy()).astype(int)
            CalibrationDisplay.from_predictions(correct, proba.max(axis=1), n_bins=min(n_bins, len(correct)),
                                                strategy="quantile", ax=axis, name=name)
        axis.set_title(f"{model_label(prefix)} (videos)")
        axis.set_xlabel("probability of the most probable score")
        axis.set_ylabel("share where it is the true score")
    return figure
