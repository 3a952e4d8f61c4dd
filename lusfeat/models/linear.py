"""A standardised logistic regression on the same frames as the paper's head: its cross-check."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from lusfeat.models.base import as_copies, check_scores, evaluation_copy, standardisation
from lusfeat.models.saving import saved_as_data
from lusfeat.scores import CLASSES, argmax_high


@saved_as_data
class StandardisedLogisticRegression(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression on the same frames and copies as the head.

    All copies are stacked as training rows (each copy a frame of its own, as the head sees them
    over its epochs). ``C=0.001`` is strong L2, on purpose: 2048 standardised dimensions, rows
    that are three copies of frames of a few dozen patients, and the earlier probes found nothing
    better anywhere in C 0.001-1 (docs/results.md, probes). The smallest C is also the fastest: on Xception
    features of COVID-BLUES (every 10th frame, 6,500 rows a fold) L-BFGS converged in 74-80
    iterations against 127-140 at C=0.01 (about 2 s against 2.7 s CPU), with pooled QWK 0.15
    against 0.12. Fitted: ``mean_`` and ``scale_`` (the standardisation), ``coef_`` and
    ``intercept_`` (of scikit-learn's ``LogisticRegression`` on the standardised rows), and
    ``fitted_classes_`` (the scores present in training, the rows of ``coef_``); the estimator
    always answers with the four classes (an absent class gets probability 0).
    """

    def __init__(self, *, C: float = 0.001, max_iter: int = 200, random_state: int | None = None) -> None:
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y, *, index=None) -> StandardisedLogisticRegression:
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
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        self.coef_, self.intercept_ = regression.coef_, regression.intercept_
        self.fitted_classes_ = regression.classes_.astype(np.int64)
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = dim
        self.n_iter_ = int(np.max(regression.n_iter_))
        self.converged_ = self.n_iter_ < self.max_iter
        return self

    def predict_proba(self, X, *, index=None) -> np.ndarray:
        check_is_fitted(self)
        X = evaluation_copy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the regression was fitted on {self.n_features_in_}")
        probabilities = np.zeros((len(X), len(CLASSES)))
        if len(X):
            logits = self.decision_function(X)
            if len(self.fitted_classes_) == 2:  # scikit-learn's binary fit: one row of coefficients
                high = expit(logits[:, 0])
                present = np.column_stack([1 - high, high])
            else:
                present = softmax(logits, axis=1)
            probabilities[:, np.searchsorted(CLASSES, self.fitted_classes_)] = present
        return probabilities

    def fit_record(self) -> dict:
        """What ``metrics.json`` says of this fit: L-BFGS iterations, and whether it converged before ``max_iter``."""
        return {"n_iter": self.n_iter_, "converged": self.converged_}

    def gradcam_target(self):
        """``(f, what)`` for :mod:`lusfeat.heatmaps`: ``f`` maps frame features (a TF tensor ``(n, dim)``) to the sum
        over frames of the logit of each frame's own predicted score (a multinomial fit: 3 or more scores)."""
        import tensorflow as tf

        if self.coef_.shape[0] != len(self.fitted_classes_):
            raise ValueError("heat maps of the regression need a multinomial fit over 3 or more scores")
        weights = tf.constant((self.coef_ / self.scale_).T, tf.float32)
        offset = tf.constant(self.intercept_ - (self.coef_ / self.scale_) @ self.mean_, tf.float32)

        def logreg_logit(features):
            logits = features @ weights + offset
            chosen = tf.stop_gradient(tf.shape(logits)[1] - 1 - tf.argmax(tf.reverse(logits, axis=[1]), axis=1,
                                                                           output_type=tf.int32))
            return tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))

        return logreg_logit, "frame logit of the regression's predicted score"

    def decision_function(self, X) -> np.ndarray:
        """The logits of copy 0 of ``X``: one column per score present in training (one column for two scores)."""
        check_is_fitted(self)
        X = evaluation_copy(X)
        return ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def predict(self, X, *, index=None) -> np.ndarray:
        return self.classes_[argmax_high(self.predict_proba(X))]


def fitted_standard_scaler(X: np.ndarray, block_rows: int = 4096) -> StandardScaler:
    """A ``StandardScaler`` fitted on ``X``, as ``StandardScaler().fit(X)`` would be, by
    :func:`lusfeat.models.base.standardisation` (fast on float32)."""
    mean, var, scale = standardisation(X, block_rows)
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_samples_seen_ = len(X)
    scaler.n_features_in_ = X.shape[1]
    return scaler

