"""Ordinal (cumulative-link) logistic regression for scores 0..3, scikit-learn style.

The severity score is ordered: calling a 3 a 2 is a smaller mistake than calling it a 0, and the
quadratic weighted kappa that judges the model says so. Softmax treats the four scores as
unrelated labels. The proportional-odds model uses one direction ``w`` and three ordered cut
points ``theta_0 < theta_1 < theta_2``::

    P(score <= k | x) = sigmoid(theta_k - w . x)

so every score is a stretch of one severity axis. It is fitted by L-BFGS on the L2-penalised
negative log-likelihood (``C`` as in scikit-learn's ``LogisticRegression``: larger, weaker
penalty), on standardised features, optionally with balanced class weights (rare score 3).

``decision`` says how a class is read from the probabilities: ``"median"`` (the score where the
cumulative probability first reaches 0.5: the latent ``w . x`` against the cut points),
``"expected"`` (the expected score, rounded) or ``"argmax"`` (the most probable score).

Features may be ``(n, dim)`` or cached copies ``(copies, n, dim)`` as for
:class:`lusfeat.models.head.SeverityHead`: all copies are stacked as training rows, copy 0 is scored.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from lusfeat.models.base import as_copies, check_scores, evaluation_copy, standardisation
from lusfeat.models.saving import saved_as_data
from lusfeat.scores import CLASSES, argmax_high, balanced_class_weights

DECISIONS = ("median", "expected", "argmax")


def class_probabilities(latent: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(n, K)`` class probabilities from the latent score ``w . x`` and ``K - 1`` ordered cut points."""
    cumulative = expit(thresholds[np.newaxis, :] - latent[:, np.newaxis])
    n = len(latent)
    cumulative = np.hstack([np.zeros((n, 1)), cumulative, np.ones((n, 1))])
    return np.clip(np.diff(cumulative, axis=1), 0.0, 1.0)


def decide(probabilities: np.ndarray, decision: str = "median") -> np.ndarray:
    """Scores 0..K-1 read from ``(n, K)`` ordered-class probabilities by ``decision``."""
    probabilities = np.asarray(probabilities, dtype=float)
    if decision == "argmax":
        return argmax_high(probabilities)
    if decision == "expected":
        expected = probabilities @ np.arange(probabilities.shape[1])
        return np.clip(np.floor(expected + 0.5), 0, probabilities.shape[1] - 1).astype(int)
    if decision == "median":
        return np.argmax(np.cumsum(probabilities, axis=1) >= 0.5 - 1e-12, axis=1)
    raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")


@saved_as_data
class OrdinalLogisticRegression(ClassifierMixin, BaseEstimator):
    """Proportional-odds logistic regression over scores 0..3 (see the module docstring).

    Attributes: ``classes_`` ([0, 1, 2, 3]), ``coef_`` (``(dim,)`` in standardised units),
    ``thresholds_`` (3 increasing cut points), ``mean_`` / ``scale_`` (standardisation),
    ``n_iter_``, ``converged_``, ``n_features_in_``.
    """

    def __init__(self, *, C: float = 0.01, class_weight: str | None = None, decision: str = "median",
                 max_iter: int = 300, random_state: int | None = None) -> None:
        self.C = C
        self.class_weight = class_weight
        self.decision = decision
        self.max_iter = max_iter
        self.random_state = random_state  # deterministic fit; kept for a uniform interface

    def fit(self, X, y, *, index=None) -> OrdinalLogisticRegression:
        return self._solve(self._prepare(X, y), self.C)

    def fit_path(self, X, y, Cs) -> list[OrdinalLogisticRegression]:
        """One fitted copy per ``C`` of ``Cs`` on the same ``(X, y)``: each what ``clone(self).set_params(C=C).fit``
        gives, to the bit, with the standardisation and the row space (below) computed once for all of them."""
        from sklearn.base import clone

        prepared = self._prepare(X, y)
        return [clone(self).set_params(C=C)._solve(prepared, C) for C in Cs]

    def _prepare(self, X, y) -> dict:
        """The standardised training rows, their weights and the optimiser's start: what a fit at any C shares.

        With fewer rows than features (the video model: 720 pooled rows x 6,144), the loss sees ``w`` only through
        ``rows @ w``, and the penalty ``0.5 |w|^2`` keeps ``w`` in the row space of ``rows`` (L-BFGS starts at 0 and
        every gradient, ``rows.T @ g + w``, lies there). So the fit runs in an orthonormal basis ``B`` of that
        space (``rows = R @ B.T``, ``R`` square: from the eigenvectors of the Gram matrix ``rows @ rows.T``),
        with ``w = B @ z``: the same objective, a rotation of the same iterates (L-BFGS uses inner products only),
        at the cost of ``R @ z`` instead of ``rows @ w`` per step (8.5x fewer numbers, in cache).
        """
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {self.decision!r}")
        X = as_copies(X)
        copies, n, dim = X.shape
        if n == 0:
            raise ValueError("no training frames")
        y = check_scores(y, n)
        rows = X.reshape(copies * n, dim).astype(np.float64)
        scores = np.tile(y, copies)
        mean, _, scale = standardisation(rows)
        rows -= mean  # in place: rows is this fit's own float64 copy
        rows /= scale
        weights = balanced_class_weights(scores)[scores] if self.class_weight == "balanced" else np.ones(len(scores))
        weights = weights / copies  # each frame counts once, whatever the number of copies
        # Start from the cut points of the class frequencies alone (w = 0).
        frequencies = np.bincount(scores, minlength=len(CLASSES)) + 1.0
        cumulative = np.cumsum(frequencies)[:-1] / frequencies.sum()
        start_thresholds = np.log(cumulative / (1 - cumulative))
        gaps = np.log(np.maximum(np.diff(start_thresholds), 1e-3))
        back = None  # z -> w: w = rows.T @ (back @ z)
        if len(rows) < dim:
            with threadpool_limits(limits=1, user_api="blas"):
                gram = rows @ rows.T
                eigenvalues, vectors = np.linalg.eigh(gram)
            keep = eigenvalues > eigenvalues[-1] * len(rows) * np.finfo(np.float64).eps
            root = np.sqrt(eigenvalues[keep])
            back = vectors[:, keep] / root
            solved = vectors[:, keep] * root  # rows in the basis B = rows.T @ back
        else:
            solved = rows
        start = np.concatenate([np.zeros(solved.shape[1]), [start_thresholds[0]], gaps])
        return {"rows": rows, "solved": solved, "back": back, "scores": scores, "weights": weights, "start": start,
                "dim": dim, "mean": mean, "scale": scale}

    def _solve(self, prepared: dict, C: float) -> OrdinalLogisticRegression:
        rows, scores, weights = prepared["solved"], prepared["scores"], prepared["weights"]
        dim = rows.shape[1]
        k = len(CLASSES) - 1

        def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
            w, first, log_gaps = params[:dim], params[dim], params[dim + 1:]
            thresholds = first + np.concatenate([[0.0], np.cumsum(np.exp(log_gaps))])
            latent = rows @ w
            upper = np.append(thresholds, np.inf)[scores] - latent      # theta_y - s
            lower = np.insert(thresholds, 0, -np.inf)[scores] - latent  # theta_{y-1} - s
            s_upper, s_lower = expit(upper), expit(lower)
            probability = np.maximum(s_upper - s_lower, 1e-12)
            d_upper = s_upper * (1 - s_upper) / probability  # d(-log p)/d(upper) = -d_upper
            d_lower = s_lower * (1 - s_lower) / probability  # d(-log p)/d(lower) = +d_lower
            loss = C * float(weights @ -np.log(probability)) + 0.5 * float(w @ w)
            grad_latent = C * weights * (d_upper - d_lower)
            grad_w = rows.T @ grad_latent + w
            grad_thresholds = np.zeros(k)
            at_upper, at_lower = scores < k, scores > 0
            np.add.at(grad_thresholds, scores[at_upper], -C * weights[at_upper] * d_upper[at_upper])
            np.add.at(grad_thresholds, scores[at_lower] - 1, C * weights[at_lower] * d_lower[at_lower])
            # theta_0 = first; theta_j = first + sum_{i<=j} exp(log_gap_i)
            tail = np.cumsum(grad_thresholds[::-1])[::-1]
            grad = np.concatenate([grad_w, [tail[0]], tail[1:] * np.exp(log_gaps)])
            return loss, grad

        # One BLAS thread: the products are skinny (n x dim times dim), and on a busy 2-core machine
        # OpenBLAS threads waited far more than they computed (as for lusfeat.models.linear.StandardisedLogisticRegression).
        with threadpool_limits(limits=1, user_api="blas"):
            result = minimize(objective, prepared["start"], jac=True, method="L-BFGS-B",
                              options={"maxiter": self.max_iter})
            params = result.x
            back = prepared["back"]
            self.coef_ = params[:dim] if back is None else prepared["rows"].T @ (back @ params[:dim])
        self.mean_, self.scale_ = prepared["mean"], prepared["scale"]
        self.thresholds_ = params[dim] + np.concatenate([[0.0], np.cumsum(np.exp(params[dim + 1:]))])
        self.n_iter_ = int(result.nit)
        self.converged_ = bool(result.success)
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = prepared["dim"]
        return self

    def latent(self, X) -> np.ndarray:
        """The severity axis ``w . x`` of each frame (copy 0), in the units of the cut points."""
        check_is_fitted(self)
        X = evaluation_copy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {self.n_features_in_}")
        return ((X - self.mean_) / self.scale_) @ self.coef_

    def predict_proba(self, X, *, index=None) -> np.ndarray:
        return class_probabilities(self.latent(X), self.thresholds_)

    def predict(self, X, *, index=None) -> np.ndarray:
        return self.classes_[decide(self.predict_proba(X), self.decision)]
