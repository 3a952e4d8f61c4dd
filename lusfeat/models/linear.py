"""A standardised logistic regression on the same frames as the paper's head: its cross-check."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from lusfeat.models.base import as_copies, check_scores, evaluation_copy, standardisation
from lusfeat.scores import CLASSES, argmax_high


class StandardisedLogisticRegression(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression on the same frames and copies as the head.

    All copies are stacked as training rows (each copy a frame of its own, as the head sees them
    over its epochs). ``C=0.001`` is strong L2, on purpose: 2048 standardised dimensions, rows
    that are three copies of frames of a few dozen patients, and the earlier probes found nothing
    better anywhere in C 0.001-1 (docs/results.md, probes). The smallest C is also the fastest: on Xception
    features of COVID-BLUES (every 10th frame, 6,500 rows a fold) L-BFGS converged in 74-80
    iterations against 127-140 at C=0.01 (about 2 s against 2.7 s CPU), with pooled QWK 0.15
    against 0.12. ``pipeline_`` is the fitted ``Pipeline(StandardScaler, LogisticRegression)``;
    its columns follow ``pipeline_.classes_``, which lacks a score absent from training, while
    this wrapper always answers with the four classes (an absent class gets probability 0).
    """

    def __init__(self, *, C: float = 0.001, max_iter: int = 200, random_state: int | None = None) -> None:
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y) -> StandardisedLogisticRegression:
        X = as_copies(X)
        copies, n, dim = X.shape
        if n == 0:
            raise ValueError("no training frames")
        y = check_scores(y, n)
        rows, scores = X.reshape(copies * n, dim), np.tile(y, copies)
        scaler = fitted_standard_scaler(rows)
        regression = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="lbfgs", random_state=self.random_state)
        # One BLAS thread: the gradient products are skinny (4 x n times n x dim), and with two
        # threads on a busy 2-core machine OpenBLAS waited far more than it computed (measured
        # on 21,000 x 2048 rows: 3.9 s with two threads, 0.5 s with one).
        with threadpool_limits(limits=1, user_api="blas"):
            regression.fit(scaler.transform(rows), scores)
        pipeline = make_pipeline(scaler, regression)
        self.pipeline_: Pipeline = pipeline
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = dim
        self.n_iter_ = int(np.max(pipeline[-1].n_iter_))
        self.converged_ = self.n_iter_ < self.max_iter
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = evaluation_copy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the regression was fitted on {self.n_features_in_}")
        return pipeline_probabilities(self.pipeline_, X)

    def predict(self, X) -> np.ndarray:
        return self.classes_[argmax_high(self.predict_proba(X))]


def fitted_standard_scaler(X: np.ndarray, block_rows: int = 4096) -> StandardScaler:
    """A ``StandardScaler`` fitted on ``X``, as ``StandardScaler().fit(X)`` would be, by
    :func:`lusfeat.models.base.standardisation` (fast on float32); a plain scikit-learn scaler to save."""
    mean, var, scale = standardisation(X, block_rows)
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_samples_seen_ = len(X)
    scaler.n_features_in_ = X.shape[1]
    return scaler


def pipeline_probabilities(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """``(n, 4)`` probabilities from a fitted classifier whose ``classes_`` may lack some scores."""
    probabilities = np.zeros((len(X), len(CLASSES)))
    if len(X):
        columns = np.searchsorted(CLASSES, pipeline.classes_)
        probabilities[:, columns] = pipeline.predict_proba(X)
    return probabilities
