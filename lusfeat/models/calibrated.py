"""Calibration and score sets around any registered estimator: fitted, scored and saved as one object.

:class:`Calibrated` fits its ``estimator`` on all the training frames, then learns how far to
trust it from the training patients alone: copies of the estimator (the fitted one's settings,
``fixed_clone`` where it has one: the video model at the C it chose) are refitted on the fit's
one inner patient split (:func:`lusfeat.folds.inner_patient_folds`), and their held-out
probabilities (an estimator that fitted those very models for a choice of its own, the video
model's C, gives them as ``inner_held_out_``: no refit) fit

- a temperature (:class:`~lusfeat.models.calibration.TemperatureScaling`, ``link``), on one row per
  frame, or per video for a model that answers per video (``per_video``);
- conformal score sets (:class:`~lusfeat.models.conformal.ConformalScoreSets`, ``coverage``,
  ``method``) on each video's mean calibrated probabilities.

No test patient is ever used. With a single training patient, or an inner part the estimator
cannot be fitted on, ``calibrator_`` and ``conformal_`` stay ``None`` and ``note_`` says why:
the model is then used uncalibrated and without sets. :meth:`answer` gives everything a
:class:`lusfeat.predictions.Predictions` holds of one model; ``docs/uncertainty.md`` says what
the numbers mean.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from lusfeat.folds import INNER_SEED_OFFSET, inner_patient_folds
from lusfeat.index import FrameIndex
from lusfeat.models.base import as_copies, check_scores
from lusfeat.models.calibration import TemperatureScaling
from lusfeat.models.conformal import ConformalScoreSets
from lusfeat.models.ordinal import decide
from lusfeat.models.saving import saved_as_data
from lusfeat.predictions import ModelPredictions
from lusfeat.scores import CLASSES, argmax_high, most_frequent


def per_video(index: FrameIndex, probabilities: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean probabilities per video, score per video)``, videos in order of first appearance."""
    _, inverse = index.videos()
    mean = pd.DataFrame(probabilities).groupby(inverse, sort=False).mean().to_numpy()
    scores = pd.Series(np.asarray(y)).groupby(inverse, sort=False).agg(most_frequent).to_numpy().astype(int)
    return mean, scores


def unfitted_copy(fitted):
    """An unfitted estimator with the fitted one's settings (and its choices: ``fixed_clone``)."""
    return fitted.fixed_clone() if hasattr(fitted, "fixed_clone") else clone(fitted)


@saved_as_data
class Calibrated(BaseEstimator):
    """An estimator with its temperature and conformal score sets (see the module docstring).

    Parameters: ``estimator`` (unfitted), ``link``, ``per_video``, ``decision`` (how a score is
    read from its probabilities: ``"argmax"`` ties to the higher score, or ``"median"``, the ordinal
    rule), ``coverage``, ``method``, ``inner_folds``, ``random_state``. Attributes: ``estimator_``,
    ``calibrator_``, ``conformal_`` (``None`` when not calibrated), ``note_``, ``inner_`` (how the
    inner split was made), ``fit_seconds_`` (the estimator's own fit), ``n_features_in_``.
    """

    def __init__(self, estimator=None, *, link: str = "softmax", per_video: bool = False, decision: str = "argmax",
                 coverage: float = 0.9, method: str = "lac", inner_folds: int = 3,
                 random_state: int | None = None) -> None:
        self.estimator = estimator
        self.link = link
        self.per_video = per_video
        self.decision = decision
        self.coverage = coverage
        self.method = method
        self.inner_folds = inner_folds
        self.random_state = random_state

    def fit(self, X, y, *, index: FrameIndex) -> Calibrated:
        X = as_copies(X)
        y = check_scores(y, X.shape[1])
        began = time.perf_counter()
        self.estimator_ = _fit(clone(self.estimator), X, y, index)
        self.fit_seconds_ = time.perf_counter() - began
        self.calibrator_ = self.conformal_ = None
        self.note_, self.inner_ = "", {}
        self._fit_posthoc(X, y, index)
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = X.shape[2]
        return self

    def _fit_posthoc(self, X: np.ndarray, y: np.ndarray, index: FrameIndex) -> None:
        fold_of, n_inner = inner_patient_folds(index, y, self.inner_folds, self.random_state)
        if n_inner < 2:
            self.note_ = "a single training patient: no inner patient-level split to calibrate on"
            return
        held_out = getattr(self.estimator_, "inner_held_out_", None)
        if held_out is None or getattr(self.estimator_, "inner_split_", None) != [n_inner, INNER_SEED_OFFSET +
                                                                                  (self.random_state or 0)]:
            held_out = np.zeros((X.shape[1], len(CLASSES)))
            for k in range(1, n_inner + 1):
                part, rest = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
                try:
                    copy = _fit(unfitted_copy(self.estimator_), X[:, rest], y[rest], index.take(rest))
                except ValueError as error:  # e.g. an inner part holding one score only
                    self.note_ = f"inner fold {k} could not be fitted ({error})"
                    return
                held_out[part] = copy.predict_proba(X[:1, part], index=index.take(part))
        rows, truth = per_video(index, held_out, y) if self.per_video else (held_out, y)
        self.calibrator_ = TemperatureScaling(link=self.link).fit(rows, truth)
        video_rows, video_truth = per_video(index, self.calibrator_.transform(held_out), y)
        self.conformal_ = ConformalScoreSets(coverage=self.coverage, method=self.method).fit(video_rows, video_truth)
        patients = sorted(set(index.patient.astype(str)), key=lambda p: (int(p), p) if p.isdigit() else (float("inf"), p))
        self.inner_ = {"inner_folds": n_inner, "inner_seed": INNER_SEED_OFFSET + (self.random_state or 0),
                       "inner_patients": patients, "inner_rows": len(rows), "inner_videos": len(video_rows)}

    @property
    def calibrated(self) -> bool:
        check_is_fitted(self)
        return self.calibrator_ is not None

    def predict_proba(self, X, *, index: FrameIndex | None = None) -> np.ndarray:
        """The estimator's own ``(n, 4)`` probabilities (copy 0)."""
        check_is_fitted(self)
        return np.asarray(self.estimator_.predict_proba(X, index=index), dtype=np.float64)

    def predict(self, X, *, index: FrameIndex | None = None) -> np.ndarray:
        """The estimator's own scores (its rule: the ordinal median for the video model)."""
        check_is_fitted(self)
        return np.asarray(self.estimator_.predict(X, index=index)).astype(np.int64)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Scores read from (calibrated) probabilities by the model's ``decision`` rule."""
        return decide(probabilities, "median") if self.decision == "median" else CLASSES[argmax_high(probabilities)]

    def score_sets(self, calibrated: np.ndarray, index: FrameIndex, coverage: float | None = None) -> np.ndarray:
        """``(n_frames, 4)`` booleans: each frame's row is its video's set (of its mean calibrated probabilities)."""
        _, inverse = index.videos()
        sums = np.zeros((inverse.max() + 1 if len(inverse) else 0, len(CLASSES)))
        np.add.at(sums, inverse, calibrated)
        counts = np.bincount(inverse)[:, np.newaxis]
        return self.conformal_.predict_sets(sums / counts, coverage)[inverse]

    def answer(self, X, *, index: FrameIndex, coverage: float | None = None) -> ModelPredictions:
        """Probabilities, scores, and where calibrated the calibrated probabilities and score sets (at ``coverage``,
        default the fitted one) of every frame of ``X``."""
        probabilities = self.predict_proba(X, index=index)
        # Every estimator's predict is its rule applied to these very probabilities: read the scores from
        # them rather than run the network (or pool the videos) a second time.
        scores = self.decide(probabilities).astype(np.int64)
        if not self.calibrated:
            return ModelPredictions(probabilities, scores)
        calibrated = self.calibrator_.transform(probabilities)
        return ModelPredictions(probabilities, scores, calibrated, self.score_sets(calibrated, index, coverage))

    def records(self) -> tuple[dict, dict]:
        """``(calibration, conformal)``: what ``model.json`` and ``metrics.json`` say of them (calibrated models)."""
        scores = self.conformal_.to_record()
        scores.pop("scores")
        return {**self.calibrator_.to_record(), **self.inner_}, {**scores, "level": "video", **self.inner_}


def _fit(estimator, X: np.ndarray, y: np.ndarray, index: FrameIndex):
    with warnings.catch_warnings():
        # Non-convergence is reported in metrics.json (converged), not as a stray warning.
        warnings.simplefilter("ignore", category=UserWarning)
        return estimator.fit(X, y, index=index)
