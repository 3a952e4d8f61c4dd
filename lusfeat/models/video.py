"""A video-level head: pool each video's frame features, then classify the video.

COVID-BLUES scores each *video* once; every frame inherits that score, although a B-line or a
consolidation shows in some frames and not in others. Classifying frames one by one therefore
learns from many wrongly-labelled frames. Here each video becomes one row, the statistics of its
frames' features (``pooling``: any of ``mean``, ``std``, ``max``, concatenated), and any
scikit-learn style classifier over scores 0..3 (default: :class:`lusfeat.models.linear.StandardisedLogisticRegression`)
is trained on those rows.

Features are cached copies ``(copies, n, dim)`` (or ``(n, dim)``), one row per frame, with
an ``index`` (:class:`lusfeat.index.FrameIndex`) saying each frame's video, patient and stratum. Copy ``c`` of a video pools copy ``c`` of its frames, so the augmented copies
give augmented videos, and the estimator sees them as extra training rows. A video's score is
the most frequent score of its frames (ties to the higher). :meth:`predict_proba` answers one
row per *frame* (its video's probabilities), so the frame, video, region and patient metrics of
the frame-level heads apply unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from lusfeat.index import FrameIndex
from lusfeat.models.base import as_copies, check_scores
from lusfeat.models.linear import StandardisedLogisticRegression
from lusfeat.models.saving import saved_as_data
from lusfeat.scores import CLASSES, most_frequent

POOLINGS = ("mean", "std", "max")


def pool_videos(X, inverse: np.ndarray, n_videos: int, pooling: tuple[str, ...]) -> np.ndarray:
    """``(copies, n_videos, dim * len(pooling))``: per copy and video, the chosen statistics over its frames."""
    X = as_copies(X)
    unknown = [name for name in pooling if name not in POOLINGS]
    if not pooling or unknown:
        raise ValueError(f"pooling must be a non-empty subset of {', '.join(POOLINGS)}, got {pooling!r}")
    copies, n, dim = X.shape
    counts = np.bincount(inverse, minlength=n_videos)
    if len(counts) != n_videos or (counts == 0).any():
        raise ValueError("every video must have at least one frame")
    # Frames sorted by video, then one reduceat per statistic: far faster than np.add.at. One copy at a
    # time (float64 sums of a (frames, dim) block, not of every copy at once), the maxima on the float32
    # values (exact either way): the same numbers in a third of the memory traffic.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sizes = counts[:, np.newaxis].astype(np.float64)
    out = np.empty((copies, n_videos, dim * len(pooling)), np.float32)
    for copy in range(copies):
        frames = X[copy, order]
        grouped = frames.astype(np.float64)
        mean = np.add.reduceat(grouped, starts, axis=0) / sizes
        for position, name in enumerate(pooling):
            part = out[copy, :, position * dim:(position + 1) * dim]
            if name == "mean":
                part[...] = mean
            elif name == "std":
                squares = np.add.reduceat(grouped ** 2, starts, axis=0) / sizes
                part[...] = np.sqrt(np.maximum(squares - mean ** 2, 0.0))
            else:
                part[...] = np.maximum.reduceat(frames, starts, axis=0)
    return out


@saved_as_data
class VideoPoolingClassifier(ClassifierMixin, BaseEstimator):
    """Pool frame features per video, classify videos; answer per frame (see the module docstring).

    ``Cs``: when given, the estimator's ``C`` is chosen from these values by an inner
    patient-level split of the *training* videos only (:func:`lusfeat.folds.inner_patient_folds`:
    ``inner_folds`` folds of the index's patients, stratified, seeded ``random_state + 1000``;
    fewer folds when there are fewer training patients), for the
    best video-level quadratic weighted kappa; a tie goes to the smaller C (the stronger
    penalty). The test patients are never seen by the choice.

    Attributes: ``estimator_`` (the fitted clone), ``classes_`` ([0, 1, 2, 3]),
    ``n_features_in_`` (frame feature size), ``n_videos_`` (training videos), and with ``Cs``:
    ``C_`` (the chosen value) and ``inner_qwk_`` (inner video QWK per candidate, keys ``str(C)``).
    """

    _not_saved = ("inner_held_out_",)

    def __init__(self, *, estimator=None, pooling: tuple[str, ...] = ("mean", "std", "max"),
                 Cs: tuple[float, ...] | None = None, inner_folds: int = 3,
                 random_state: int | None = None) -> None:
        self.estimator = estimator
        self.pooling = pooling
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.random_state = random_state

    def _pooled(self, X, index: FrameIndex | None) -> tuple[np.ndarray, np.ndarray]:
        X = as_copies(X)
        if index is None or len(index) != X.shape[1]:
            raise ValueError(f"index must say which video each frame belongs to ({X.shape[1]} frames)")
        ids, inverse = index.videos()
        return pool_videos(X, inverse, len(ids), tuple(self.pooling)), inverse

    def fit(self, X, y, *, index: FrameIndex | None = None) -> VideoPoolingClassifier:
        """Fit on frames ``X`` with scores ``y``; ``index``: each frame's video, and (to choose C) patient and stratum."""
        X = as_copies(X)
        y = check_scores(y, X.shape[1])
        pooled, inverse = self._pooled(X, index)
        video_scores = pd.Series(y).groupby(inverse).agg(most_frequent).to_numpy().astype(np.int32)
        estimator = clone(self.estimator) if self.estimator is not None else StandardisedLogisticRegression()
        if self.random_state is not None and "random_state" in estimator.get_params():
            estimator.set_params(random_state=self.random_state)
        if self.Cs:
            self.C_, self.inner_qwk_ = self._choose_C(estimator, pooled, video_scores, inverse, y, index)
            estimator.set_params(C=self.C_)
        self.estimator_ = estimator.fit(pooled, video_scores)
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = X.shape[2]
        self.n_videos_ = pooled.shape[1]
        return self

    def fixed_clone(self) -> VideoPoolingClassifier:
        """An unfitted copy at the C this fit chose (no new choice): what an inner refit of it trains."""
        copy = clone(self)
        if getattr(self, "C_", None) is not None:
            copy.set_params(Cs=None, estimator=clone(self.estimator_).set_params(C=self.C_))
        return copy

    def _choose_C(self, estimator, pooled: np.ndarray, video_scores: np.ndarray, inverse: np.ndarray, y: np.ndarray,
                  index: FrameIndex) -> tuple[float, dict[str, float]]:
        from sklearn.metrics import cohen_kappa_score

        from lusfeat.folds import INNER_SEED_OFFSET, inner_patient_folds

        if min(self.Cs) <= 0:
            raise ValueError(f"Cs must be positive, got {self.Cs}")
        index.video_patients()  # a video id shared by two patients is an error
        frame_fold, n_inner = inner_patient_folds(index, y, self.inner_folds, self.random_state)
        if n_inner < 2:  # one training patient: nothing to hold out, keep the estimator's own C
            return float(estimator.get_params()["C"]), {}
        video_fold = np.zeros(pooled.shape[1], dtype=np.int64)
        video_fold[inverse] = frame_fold
        predicted = {C: np.zeros(len(video_scores), dtype=np.int64) for C in self.Cs}
        held_out = {C: np.zeros((len(video_scores), len(CLASSES))) for C in self.Cs}
        for fold in range(1, n_inner + 1):
            train, test = video_fold != fold, video_fold == fold
            # fit_path (the ordinal model's): every C on the same rows, sharing what does not depend on C.
            if hasattr(estimator, "fit_path"):
                inners = estimator.fit_path(pooled[:, train], video_scores[train], self.Cs)
            else:
                inners = [clone(estimator).set_params(C=C).fit(pooled[:, train], video_scores[train]) for C in self.Cs]
            for C, inner in zip(self.Cs, inners, strict=True):
                predicted[C][test] = inner.predict(pooled[:1, test])
                held_out[C][test] = inner.predict_proba(pooled[:1, test])
        scores = {str(C): float(cohen_kappa_score(video_scores, predicted[C], weights="quadratic", labels=CLASSES))
                  for C in self.Cs}
        best = max(self.Cs, key=lambda C: (scores[str(C)], -C))
        # The inner models at the chosen C are what a refit of fixed_clone() on the same inner split trains, to the
        # bit (the same pooled rows in the same order): their held-out answers, per frame, spare that refit
        # (lusfeat.models.calibrated). Not saved.
        self.inner_split_ = [n_inner, INNER_SEED_OFFSET + (self.random_state or 0)]
        self.inner_held_out_ = held_out[best][inverse]
        return float(best), scores

    def _video_rows(self, X, index: FrameIndex | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = as_copies(X)
        if X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, the head was fitted on {self.n_features_in_}")
        if index is None or len(index) != X.shape[1]:
            raise ValueError(f"index must say which video each frame belongs to ({X.shape[1]} frames)")
        ids, inverse = index.videos()
        return ids, inverse, pool_videos(X[:1], inverse, len(ids), tuple(self.pooling))

    def predict_video_proba(self, X, *, index: FrameIndex) -> tuple[np.ndarray, np.ndarray]:
        """``(video keys, (n_videos, 4) probabilities)`` for the videos of ``X`` (copy 0)."""
        ids, _, pooled = self._video_rows(X, index)
        return ids, np.asarray(self.estimator_.predict_proba(pooled), dtype=np.float64)

    def predict_proba(self, X, *, index: FrameIndex | None = None) -> np.ndarray:
        """``(n_frames, 4)``: each frame gets its video's probabilities."""
        _, inverse, pooled = self._video_rows(X, index)
        return np.asarray(self.estimator_.predict_proba(pooled), dtype=np.float64)[inverse]

    def predict(self, X, *, index: FrameIndex | None = None) -> np.ndarray:
        """Per frame, its video's score (the estimator's ``predict``: the median rule for ordinal regression)."""
        _, inverse, pooled = self._video_rows(X, index)
        return np.asarray(self.estimator_.predict(pooled)).astype(np.int64)[inverse]

    def fit_record(self) -> dict:
        """What ``metrics.json`` says of this fit: the chosen C, the inner video QWK per candidate, training videos."""
        record = {"C": getattr(self, "C_", None), "inner_video_qwk": getattr(self, "inner_qwk_", None),
                  "train_videos": self.n_videos_}
        if hasattr(self.estimator_, "converged_"):
            record["converged"] = bool(self.estimator_.converged_)
        return record

    def gradcam_target(self):
        """``(f, what)`` for :mod:`lusfeat.heatmaps`: ``f`` maps one video's frame features (a TF tensor ``(n, dim)``)
        to its latent severity ``w . z`` of the ordinal model (larger: a higher score), through the pooling."""
        import tensorflow as tf

        estimator = getattr(self, "estimator_", None)
        if not hasattr(estimator, "coef_") or not hasattr(estimator, "thresholds_"):
            raise ValueError("heat maps of the video model need its ordinal estimator (lusfeat.fit's default); "
                             f"this one is {type(estimator).__name__}")
        pooling = tuple(self.pooling)
        mean = tf.constant(estimator.mean_, tf.float32)
        scale = tf.constant(estimator.scale_, tf.float32)
        coef = tf.constant(estimator.coef_, tf.float32)

        def video_latent(features):
            parts = []
            average = tf.reduce_mean(features, axis=0)
            for statistic in pooling:
                if statistic == "mean":
                    parts.append(average)
                elif statistic == "std":
                    variance = tf.reduce_mean(features ** 2, axis=0) - average ** 2
                    parts.append(tf.sqrt(tf.maximum(variance, 1e-12)))
                else:
                    parts.append(tf.reduce_max(features, axis=0))
            pooled = tf.concat(parts, axis=0)
            return tf.reduce_sum((pooled - mean) / scale * coef)

        return video_latent, "video latent severity (ordinal w.z; higher = more severe)"
