"""The one registry of stage-two models: name -> how to build it, its decision rule, how it is calibrated.

A model of ``lusfeat.fit`` is an entry of :data:`MODELS` and a class. The class is a scikit-learn
style estimator with one signature, ``fit(X, y, *, index)``, ``predict_proba(X, *, index)``,
``predict(X, *, index)`` (``index``: :class:`lusfeat.index.FrameIndex`, which video, patient and
stratum each frame belongs to; frame-level models ignore it), registered with
:func:`lusfeat.models.saving.saved_as_data` (saved as JSON + arrays), with
``gradcam_target()`` (what ``lusfeat.explain`` differentiates) and ``fit_record()`` (its own
numbers for ``metrics.json``). The entry says how :class:`FitParams` builds it, how a score is
read from its probabilities, and how :class:`~lusfeat.models.calibrated.Calibrated` calibrates
it. Its files are ``<name>.json`` and ``<name>.npz`` in the model folder; its columns in
``predictions.csv`` follow the order of :data:`MODELS`. Nothing outside this module branches on a
model's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lusfeat.models.calibrated import Calibrated
from lusfeat.models.distribution import VideoDistribution
from lusfeat.models.head import SeverityHead
from lusfeat.models.linear import StandardisedLogisticRegression
from lusfeat.models.ordinal import OrdinalLogisticRegression
from lusfeat.models.video import VideoPoolingClassifier

DISTRIBUTION = "distribution"  # the distribution check's file name (not a scorer: no column, no calibration)


@dataclass(frozen=True)
class FitParams:
    """Everything, besides the features and the folds, that defines a fit; written to metrics.json."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    dropout: float = 0.5
    class_weight: str | None = None  # None: the paper's loss; "balanced": see SeverityHead
    seed: int = 0
    folds: int = 3
    logreg_C: float = 0.001
    logreg_max_iter: int = 200
    preset: str = "video"
    video_pooling: tuple[str, ...] = ("mean", "std", "max")
    video_class_weight: str | None = "balanced"
    video_Cs: tuple[float, ...] = (0.001, 0.01, 0.1)  # grid of benchmarks/accuracy.py, chosen by inner CV
    coverage: float = 0.9  # conformal sets: share of videos whose set should hold the true score
    conformal_method: str = "lac"
    inner_folds: int = 3  # patient-level folds of the training patients, for C, calibration, sets, distribution
    # VideoDistribution (benchmarks/in_distribution.py): mean pooling flags 4.7% of held-out videos as mean+std does
    # (4.5%), every non-lung one as it does, and half as many single frames (a still image has no std).
    distribution_pooling: tuple[str, ...] = ("mean",)
    distribution_components: int = 10
    distribution_shrinkage: float = 0.1
    distribution_quantile: float = 0.95  # about 5% of new videos like the training ones are flagged

    @property
    def models(self) -> tuple[str, ...]:
        """The models this preset trains, the primary one first."""
        return PRESETS[self.preset]

    def video_model(self) -> VideoPoolingClassifier:
        ordinal = OrdinalLogisticRegression(class_weight=self.video_class_weight, random_state=self.seed)
        return VideoPoolingClassifier(estimator=ordinal, pooling=self.video_pooling, Cs=self.video_Cs,
                                      inner_folds=self.inner_folds, random_state=self.seed)

    def head(self) -> SeverityHead:
        return SeverityHead(dropout=self.dropout, learning_rate=self.learning_rate, epochs=self.epochs,
                            batch_size=self.batch_size, class_weight=self.class_weight, random_state=self.seed)

    def logistic_check(self) -> StandardisedLogisticRegression:
        return StandardisedLogisticRegression(C=self.logreg_C, max_iter=self.logreg_max_iter, random_state=self.seed)

    def distribution(self) -> VideoDistribution:
        return VideoDistribution(pooling=self.distribution_pooling, n_components=self.distribution_components,
                                 shrinkage=self.distribution_shrinkage, quantile=self.distribution_quantile,
                                 inner_folds=self.inner_folds, random_state=self.seed)


@dataclass(frozen=True)
class ModelSpec:
    """One stage-two model: how it is built, read, calibrated and explained."""

    build: Callable[[FitParams], Any]  # the unfitted estimator of these settings
    decision: str  # "argmax" (ties to the higher score) or "median" (the ordinal rule): scores from probabilities
    link: str  # TemperatureScaling's link: "softmax" or "cumulative"
    per_video: bool  # answers one row per video: calibrated on one row per video, not per frame
    target: str  # what its heat map explains (the estimator's gradcam_target)
    about: str  # one line saying what it is (the docs, a reader of the registry)
    cross_check: str | None = None  # a model whose scores this one's are compared with (agreement, warnings)


MODELS: dict[str, ModelSpec] = {  # the column order of predictions.csv
    "head": ModelSpec(FitParams.head, "argmax", "softmax", False, "the frame's logit of its predicted score",
                      "the paper's head, Dropout(0.5) + Dense(4, softmax), Adam, on frames", cross_check="logreg"),
    "logreg": ModelSpec(FitParams.logistic_check, "argmax", "softmax", False,
                        "the frame's logit of its predicted score",
                        "a standardised logistic regression on the same frames, the head's cross-check"),
    "video": ModelSpec(FitParams.video_model, "median", "cumulative", True, "the video's latent severity w.z",
                       "mean, std and max of each video's frame features, then balanced ordinal regression per "
                       "video, its C chosen by an inner patient-level split"),
}
PRESETS = {"video": ("video", "head", "logreg"), "paper": ("head", "logreg")}  # primary model first


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; lusfeat knows {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, params: FitParams) -> Calibrated:
    """The model ``name`` of these settings, unfitted, with its calibration and score sets around it."""
    entry = spec(name)
    return Calibrated(entry.build(params), link=entry.link, per_video=entry.per_video, decision=entry.decision,
                      coverage=params.coverage, method=params.conformal_method, inner_folds=params.inner_folds,
                      random_state=params.seed)


def own_rule(name: str) -> bool:
    """Whether the model reads its score by a rule of its own (not the argmax of its probabilities)."""
    return spec(name).decision != "argmax"
