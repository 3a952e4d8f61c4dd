"""Post-hoc calibration of 0-3 probabilities: one temperature, fitted on held-out predictions.

:class:`TemperatureScaling` learns one number ``T > 0`` that softens (``T > 1``) or sharpens
(``T < 1``) a model's probabilities, by minimising the negative log-likelihood of held-out
predictions (Guo et al., "On calibration of modern neural networks", ICML 2017). Two links:

- ``"softmax"`` (the head, the logistic regression): the logits are ``log p`` (up to a constant
  per row, which softmax ignores), and the calibrated probabilities are ``softmax(log p / T)``;
  the most probable score never changes.
- ``"cumulative"`` (the ordinal model): the cumulative logits ``logit P(score <= k) = theta_k -
  w.x`` are divided by ``T``, i.e. the severity axis is stretched around every cut point; the
  probabilities stay those of a proportional-odds model and the median score (where the
  cumulative probability crosses 0.5, the ordinal model's decision) never changes.

So calibration changes how sure the model says it is, never its scores, and QWK is unchanged.
It takes and gives ``(n, 4)`` probabilities; ``fit`` takes held-out probabilities with their
true scores (:mod:`lusfeat.models.calibrated` makes them by an inner patient-level split of the training
patients).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit, softmax
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from lusfeat.models.base import check_scores
from lusfeat.models.saving import saved_as_data
from lusfeat.scores import CLASSES

LINKS = ("softmax", "cumulative")
TINY = 1e-12
LOG_T_BOUNDS = (-4.0, 4.0)  # T from 0.018 to 55


def _probabilities(P) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != len(CLASSES):
        raise ValueError(f"probabilities must be (n, {len(CLASSES)}), got shape {P.shape}")
    if not np.isfinite(P).all() or (P < -1e-9).any():
        raise ValueError("probabilities must be finite and non-negative")
    P = np.clip(P, 0.0, None)
    return P / np.maximum(P.sum(axis=1, keepdims=True), TINY)


def scale_probabilities(P, temperature: float, link: str) -> np.ndarray:
    """``(n, 4)`` probabilities with their logits (``link``) divided by ``temperature``."""
    if link not in LINKS:
        raise ValueError(f"link must be one of {', '.join(LINKS)}, got {link!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    P = _probabilities(P)
    if link == "softmax":
        return softmax(np.log(np.maximum(P, TINY)) / temperature, axis=1)
    cumulative = np.clip(np.cumsum(P, axis=1)[:, :-1], TINY, 1 - TINY)
    cumulative = expit(logit(cumulative) / temperature)
    cumulative = np.maximum.accumulate(cumulative, axis=1)  # rounding must not break the order
    n = len(P)
    edges = np.hstack([np.zeros((n, 1)), cumulative, np.ones((n, 1))])
    return np.clip(np.diff(edges, axis=1), 0.0, 1.0)


@saved_as_data
class TemperatureScaling(BaseEstimator):
    """One temperature for a model's probabilities (see the module docstring).

    Parameters: ``link`` ("softmax" or "cumulative"). Attributes after ``fit``: ``temperature_``
    (> 0; 1 leaves the probabilities as they are), ``nll_before_`` and ``nll_after_`` (mean negative
    log-likelihood of the fitting rows at T = 1 and at ``temperature_``), ``n_samples_``.
    """

    def __init__(self, *, link: str = "softmax") -> None:
        self.link = link

    def fit(self, P, y) -> TemperatureScaling:
        """Fit ``T`` on held-out probabilities ``P`` ``(n, 4)`` and their true scores ``y``."""
        P = _probabilities(P)
        y = check_scores(y, len(P))
        if not len(P):
            raise ValueError("no rows to calibrate on")

        def nll(log_t: float) -> float:
            scaled = scale_probabilities(P, float(np.exp(log_t)), self.link)
            return float(-np.log(np.maximum(scaled[np.arange(len(y)), y], TINY)).mean())

        result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
        self.temperature_ = float(np.exp(result.x))
        self.nll_before_ = nll(0.0)
        self.nll_after_ = float(result.fun)
        if self.nll_after_ > self.nll_before_:  # the bounded search may stop a hair off T = 1
            self.temperature_, self.nll_after_ = 1.0, self.nll_before_
        self.n_samples_ = len(P)
        return self

    def transform(self, P) -> np.ndarray:
        """The calibrated ``(n, 4)`` probabilities of ``P``."""
        check_is_fitted(self)
        return scale_probabilities(P, self.temperature_, self.link)

    def to_record(self) -> dict:
        """JSON-ready: what ``model.json`` stores and :meth:`from_record` reads back."""
        check_is_fitted(self)
        return {"method": "temperature", "link": self.link, "temperature": self.temperature_,
                "nll_before": self.nll_before_, "nll_after": self.nll_after_, "n_samples": self.n_samples_}

    @classmethod
    def from_record(cls, record: dict) -> TemperatureScaling:
        model = cls(link=str(record["link"]))
        model.temperature_ = float(record["temperature"])
        if not model.temperature_ > 0:
            raise ValueError(f"temperature must be > 0, got {model.temperature_}")
        model.nll_before_ = float(record.get("nll_before", np.nan))
        model.nll_after_ = float(record.get("nll_after", np.nan))
        model.n_samples_ = int(record.get("n_samples", 0))
        return model
