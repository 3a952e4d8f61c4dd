"""Is a new video like the training videos? A distance to the training patients' pooled video features.

A model trained on one probe, one hospital and lungs scores anything it is given: a video from
another machine, another body part or no ultrasound at all gets a confident 0-3 all the same.
:class:`VideoDistribution` learns, from the training videos only, where their features lie, and
tells for a new video how far outside that it is.

- Each video becomes one row: the statistics of its frames' features (``pooling``, as
  :func:`lusfeat.models.video.pool_videos`; copy 0, the frames as they are). The default, the
  mean, also suits a still image (one frame, whose standard deviation would be 0).
- Rows are standardised, then a PCA of ``n_components`` (at most half the training videos)
  keeps the directions the training videos vary along. Column variances are shrunk toward their
  mean by ``shrinkage``, so that a column the few training videos barely vary in does not make
  every new video look infinitely far. The squared distance of a video is its Mahalanobis distance within the
  PCA (the mean of its squared whitened scores) plus its distance *off* the PCA (the mean over
  columns of its squared residual divided by the training videos' residual variance in that
  column): a video can be unlike the training ones along a direction they vary in, or along one
  they never showed. Both terms are about 1 for a training video; the distance is the square root
  of their sum.
- The threshold is calibrated on videos the PCA has not seen, as a new patient's would be: the
  training patients are split into ``inner_folds`` patient folds (the fit's one inner split,
  :func:`lusfeat.folds.inner_patient_folds`, seeded ``random_state + 1000``), each fold's videos
  are measured against a PCA of the others, and ``threshold_`` is the ``quantile`` of these
  held-out distances. With ``quantile=0.95`` about 5% of new videos like the training ones are
  flagged; ``benchmarks/in_distribution.py`` measures it on COVID-BLUES' held-out folds.

Attributes: ``mean_``, ``scale_`` (standardisation), ``components_``, ``explained_variance_``,
``residual_`` (per-column residual variance), ``threshold_``, ``inner_distances_`` (the held-out distances the threshold is
the quantile of), ``n_components_``, ``n_features_in_`` (frame feature size), ``n_videos_``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from lusfeat.index import FrameIndex
from lusfeat.models.base import CONSTANT_SCALE, as_copies
from lusfeat.models.saving import saved_as_data
from lusfeat.models.video import pool_videos


def one_blas_thread():
    """The SVD and products of a few hundred video rows on one BLAS thread: on the shared 2-core machine (load 13)
    a 240 x 2048 SVD took 5.5 s with OpenBLAS's two threads waiting on each other, 0.13 s on one."""
    return threadpool_limits(limits=1, user_api="blas")


class _Subspace:
    """Standardisation, PCA and per-column residual variance of pooled rows; squared distances of others.

    ``shrinkage`` pulls each column's variance (for the standardisation and for the residual) toward
    the mean over columns: with few training videos a column that barely varies would otherwise
    make any new video look infinitely far.
    """

    def __init__(self, rows: np.ndarray, n_components: int, shrinkage: float) -> None:
        rows = rows.astype(np.float64)
        self.mean = rows.mean(axis=0)
        self.scale = np.sqrt(_shrunk(rows.var(axis=0), shrinkage))
        centred = (rows - self.mean) / self.scale
        # At most half the rank: the residual must keep room to be estimated.
        k = int(max(1, min(n_components, (len(rows) - 1) // 2, rows.shape[1] - 1)))
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        self.components = vt[:k]
        self.variance = np.maximum(singular[:k] ** 2 / max(len(rows) - 1, 1), CONSTANT_SCALE)
        self.residual = _shrunk((self._residuals(centred) ** 2).mean(axis=0), shrinkage)

    def _residuals(self, centred: np.ndarray) -> np.ndarray:
        return centred - (centred @ self.components.T) @ self.components

    def squared(self, rows: np.ndarray) -> np.ndarray:
        centred = (rows.astype(np.float64) - self.mean) / self.scale
        scores = centred @ self.components.T
        inside = (scores ** 2 / self.variance).mean(axis=1)
        off = (self._residuals(centred) ** 2 / self.residual).mean(axis=1)
        return inside + off


def _shrunk(variances: np.ndarray, shrinkage: float) -> np.ndarray:
    mean = max(float(variances.mean()), CONSTANT_SCALE)
    return np.maximum((1 - shrinkage) * variances + shrinkage * mean, CONSTANT_SCALE)


@saved_as_data
class VideoDistribution(BaseEstimator):
    """Distance of videos to the training videos' pooled features, and a threshold for "unlike them".

    See the module docstring. ``fit(X, y=None, *, index)`` as every estimator of
    :mod:`lusfeat.models` (``y``: scores, used for the strata of patients without a group);
    :meth:`video_distances` answers per video, :meth:`predict` per frame (True: in distribution).
    """

    def __init__(self, *, pooling: tuple[str, ...] = ("mean",), n_components: int = 10, shrinkage: float = 0.1,
                 quantile: float = 0.95, inner_folds: int = 3, random_state: int | None = None) -> None:
        self.pooling = pooling
        self.n_components = n_components
        self.shrinkage = shrinkage
        self.quantile = quantile
        self.inner_folds = inner_folds
        self.random_state = random_state

    def _rows(self, X, index: FrameIndex | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = as_copies(X)[:1]
        if index is None or len(index) != X.shape[1]:
            raise ValueError(f"index must say which video each frame belongs to ({X.shape[1]} frames)")
        ids, inverse = index.videos()
        return ids, inverse, pool_videos(X, inverse, len(ids), tuple(self.pooling))[0]

    def fit(self, X, y=None, *, index: FrameIndex | None = None) -> VideoDistribution:
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        if not 0 <= self.shrinkage <= 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {self.shrinkage}")
        X = as_copies(X)
        ids, inverse, rows = self._rows(X, index)
        if len(ids) < 2:
            raise ValueError("at least two training videos are needed")
        with one_blas_thread():
            subspace = _Subspace(rows, self.n_components, self.shrinkage)
        self.mean_, self.scale_ = subspace.mean, subspace.scale
        self.components_, self.explained_variance_, self.residual_ = subspace.components, subspace.variance, subspace.residual
        self.n_components_ = len(subspace.variance)
        self.inner_distances_ = self._held_out_distances(rows, inverse, y, index)
        self.threshold_ = float(np.quantile(self.inner_distances_, self.quantile))
        self.n_features_in_ = X.shape[2]
        self.n_videos_ = len(ids)
        return self

    def _held_out_distances(self, rows: np.ndarray, inverse: np.ndarray, y, index: FrameIndex) -> np.ndarray:
        """Each training video's distance to a subspace of the *other* patients' videos (patient folds)."""
        from lusfeat.folds import inner_patient_folds

        index.video_patients()  # a video id shared by two patients is an error
        scores = np.zeros(len(index), int) if y is None else np.asarray(y)
        frame_fold, n_inner = inner_patient_folds(index, scores, self.inner_folds, self.random_state)
        if n_inner < 2:
            raise ValueError("at least two training patients are needed to calibrate the threshold")
        video_fold = np.zeros(len(rows), dtype=np.int64)
        video_fold[inverse] = frame_fold
        distances = np.empty(len(rows))
        for fold in range(1, n_inner + 1):
            test = video_fold == fold
            with one_blas_thread():
                inner = _Subspace(rows[~test], self.n_components, self.shrinkage)
                distances[test] = np.sqrt(inner.squared(rows[test]))
        return distances

    def _subspace(self) -> _Subspace:
        check_is_fitted(self)
        subspace = _Subspace.__new__(_Subspace)
        subspace.mean, subspace.scale, subspace.components = self.mean_, self.scale_, self.components_
        subspace.variance, subspace.residual = self.explained_variance_, self.residual_
        return subspace

    def video_distances(self, X, *, index: FrameIndex) -> tuple[np.ndarray, np.ndarray]:
        """``(video keys, distances)`` of the videos of ``X`` (copy 0), in order of first appearance."""
        check_is_fitted(self)
        X = as_copies(X)
        if X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, the model was fitted on {self.n_features_in_}")
        ids, _, rows = self._rows(X, index)
        with one_blas_thread():
            return ids, np.sqrt(self._subspace().squared(rows))

    def predict(self, X, *, index: FrameIndex | None = None) -> np.ndarray:
        """Per frame, whether its video is in distribution (its distance at most ``threshold_``)."""
        _, distances = self.video_distances(X, index=index)
        return (distances <= self.threshold_)[index.videos()[1]]
