"""A video-level head: pool each video's frame features, then classify the video.

COVID-BLUES scores each *video* once; every frame inherits that score, although a B-line or a
consolidation shows in some frames and not in others. Classifying frames one by one therefore
learns from many wrongly-labelled frames. Here each video becomes one row, the statistics of its
frames' features (``pooling``: any of ``mean``, ``std``, ``max``, concatenated), and any
scikit-learn style classifier over scores 0..3 (default: :class:`lusfeat.head.LogisticCheck`)
is trained on those rows.

Features are cached copies ``(copies, n, dim)`` (or ``(n, dim)``), one row per frame, with a
video id per frame. Copy ``c`` of a video pools copy ``c`` of its frames, so the augmented copies
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

from lusfeat.aggregate import most_frequent
from lusfeat.head import LABELS, LogisticCheck, as_copies, check_scores

POOLINGS = ("mean", "std", "max")


def video_index(videos) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, inverse)``: the distinct video ids in order of first appearance, and each frame's position in them."""
    codes, ids = pd.factorize(pd.Series(np.asarray(videos)).astype(str), sort=False)
    return np.asarray(ids, dtype=object), codes.astype(np.int64)


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
    # Frames sorted by video, then one reduceat per statistic: far faster than np.add.at.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grouped = X[:, order].astype(np.float64)
    sizes = counts[np.newaxis, :, np.newaxis].astype(np.float64)
    mean = np.add.reduceat(grouped, starts, axis=1) / sizes
    parts = []
    for name in pooling:
        if name == "mean":
            parts.append(mean)
        elif name == "std":
            squares = np.add.reduceat(grouped ** 2, starts, axis=1) / sizes
            parts.append(np.sqrt(np.maximum(squares - mean ** 2, 0.0)))
        else:
            parts.append(np.maximum.reduceat(grouped, starts, axis=1))
    return np.concatenate(parts, axis=2).astype(np.float32)


class VideoPoolingClassifier(ClassifierMixin, BaseEstimator):
    """Pool frame features per video, classify videos; answer per frame (see the module docstring).

    Attributes: ``estimator_`` (the fitted clone), ``classes_`` ([0, 1, 2, 3]),
    ``n_features_in_`` (frame feature size), ``n_videos_`` (training videos).
    """

    def __init__(self, *, estimator=None, pooling: tuple[str, ...] = ("mean", "std", "max"),
                 random_state: int | None = None) -> None:
        self.estimator = estimator
        self.pooling = pooling
        self.random_state = random_state

    def _pooled(self, X, videos) -> tuple[np.ndarray, np.ndarray]:
        X = as_copies(X)
        if videos is None or len(videos) != X.shape[1]:
            raise ValueError(f"videos must give one video id per frame ({X.shape[1]})")
        ids, inverse = video_index(videos)
        return pool_videos(X, inverse, len(ids), tuple(self.pooling)), inverse

    def fit(self, X, y, videos=None) -> VideoPoolingClassifier:
        X = as_copies(X)
        y = check_scores(y, X.shape[1])
        pooled, inverse = self._pooled(X, videos)
        video_scores = np.array([most_frequent(y[inverse == v]) for v in range(pooled.shape[1])], dtype=np.int32)
        estimator = clone(self.estimator) if self.estimator is not None else LogisticCheck()
        if self.random_state is not None and "random_state" in estimator.get_params():
            estimator.set_params(random_state=self.random_state)
        self.estimator_ = estimator.fit(pooled, video_scores)
        self.classes_ = LABELS.copy()
        self.n_features_in_ = X.shape[2]
        self.n_videos_ = pooled.shape[1]
        return self

    def predict_video_proba(self, X, videos) -> tuple[np.ndarray, np.ndarray]:
        """``(video ids, (n_videos, 4) probabilities)`` for the videos of ``X`` (copy 0)."""
        check_is_fitted(self)
        X = as_copies(X)
        if X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, the head was fitted on {self.n_features_in_}")
        if videos is None or len(videos) != X.shape[1]:
            raise ValueError(f"videos must give one video id per frame ({X.shape[1]})")
        ids, inverse = video_index(videos)
        pooled = pool_videos(X[:1], inverse, len(ids), tuple(self.pooling))
        return ids, np.asarray(self.estimator_.predict_proba(pooled), dtype=np.float64)

    def predict_proba(self, X, videos=None) -> np.ndarray:
        """``(n_frames, 4)``: each frame gets its video's probabilities."""
        _, probabilities = self.predict_video_proba(X, videos)
        return probabilities[video_index(videos)[1]]

    def predict(self, X, videos=None) -> np.ndarray:
        probabilities = self.predict_proba(X, videos)
        if hasattr(self.estimator_, "decision") and hasattr(self.estimator_, "predict"):
            from lusfeat.ordinal import decide

            return self.classes_[decide(probabilities, self.estimator_.decision)]
        return self.classes_[np.argmax(probabilities, axis=1)]
