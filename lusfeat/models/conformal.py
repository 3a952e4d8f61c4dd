"""Conformal prediction sets of 0-3 scores: a set that holds the true score with a chosen coverage.

Split conformal prediction (Vovk et al.; Angelopoulos & Bates, "A gentle introduction to
conformal prediction", 2021). Every set is a run of neighbouring scores ({1, 2}, never {0, 2}):

- the *nonconformity* of a score ``y`` for a probability vector ``p`` (small: ``y`` is among
  the likely scores), by ``method``:

  - ``"lac"`` (default): ``1 - p_y``, the least ambiguous set-valued classifier (Sadinle, Lei &
    Wasserman, JASA 2019: the smallest sets on average for a given coverage);
  - ``"ordinal_aps"``: Lu et al.'s ordinal adaptive sets ("Improving trustworthiness of AI disease
    severity rating in medical imaging with ordinal conformal prediction sets", MICCAI 2022):
    grow an interval from the most probable score, each step adding the neighbour with the larger
    probability (a tie: the higher score); the nonconformity of ``y`` is the interval's mass when it
    first holds ``y``. Without randomisation its scores pile up at 1 (the truth added last), so it
    often over-covers: kept for comparison;

- ``fit`` takes the nonconformity of calibration rows' true scores (rows held out from the model
  that made their probabilities, and from the patients the sets will be used on) and keeps the
  ``ceil((n + 1) * coverage)``-th smallest, ``q``;
- the set of a new row is every score whose nonconformity is at most ``q``, and always the most
  probable score; with ``"lac"`` the gaps are then filled (scores between two held ones join),
  which only adds scores, so the promise below still holds.

If the calibration rows and a new row are exchangeable (for lusfeat: the patients are drawn alike,
and a video is scored by a model that never saw its patient), the set holds the true score with
probability at least ``coverage``, on average over rows, whatever the model's accuracy: a poor
model gets wide sets, not a broken promise. It is not a promise for each patient or each score.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from lusfeat.models.base import check_scores
from lusfeat.models.saving import saved_as_data
from lusfeat.scores import CLASSES, argmax_high

METHODS = ("lac", "ordinal_aps")


def _probabilities(P) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != len(CLASSES) or not np.isfinite(P).all():
        raise ValueError(f"probabilities must be finite (n, {len(CLASSES)}), got shape {P.shape}")
    return P


def ordinal_nonconformity(P) -> np.ndarray:
    """``(n, 4)``: for every row and every score, the mass of the grown interval when it first holds that score."""
    P = _probabilities(P)
    n, k = P.shape
    out = np.empty((n, k))
    start = argmax_high(P)
    for row in range(n):
        p = P[row]
        low = high = int(start[row])
        mass = p[low]
        out[row, low] = mass
        while low > 0 or high < k - 1:
            below = p[low - 1] if low > 0 else -np.inf
            above = p[high + 1] if high < k - 1 else -np.inf
            if above >= below:
                high += 1
                mass += p[high]
                out[row, high] = mass
            else:
                low -= 1
                mass += p[low]
                out[row, low] = mass
    return out


def nonconformity(P, method: str = "lac") -> np.ndarray:
    """``(n, 4)`` nonconformity of every score of every row, by ``method``."""
    if method == "lac":
        return 1.0 - _probabilities(P)
    if method == "ordinal_aps":
        return ordinal_nonconformity(P)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def fill_gaps(sets: np.ndarray) -> np.ndarray:
    """Each boolean row made an interval: every score between its lowest and highest held one."""
    sets = np.asarray(sets, dtype=bool)
    held = np.arange(sets.shape[1])
    low = np.where(sets.any(axis=1), np.argmax(sets, axis=1), 0)
    high = np.where(sets.any(axis=1), sets.shape[1] - 1 - np.argmax(sets[:, ::-1], axis=1), -1)
    return (held >= low[:, None]) & (held <= high[:, None])


def conformal_quantile(scores, coverage: float) -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest of ``n`` scores; infinite when too few to promise ``coverage``."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    rank = math.ceil((len(scores) + 1) * coverage)
    return math.inf if rank > len(scores) else float(scores[rank - 1])


@saved_as_data
class ConformalScoreSets(BaseEstimator):
    """Sets of scores with a coverage promise (see the module docstring).

    Parameters: ``coverage`` (default 0.9), ``method`` ("lac" or "ordinal_aps"). Attributes after ``fit``:
    ``scores_`` (the calibration rows' nonconformity, sorted), ``threshold_`` (``q`` at
    ``coverage``; ``inf`` when there are too few rows: every set is then all four scores),
    ``n_calibration_``.
    """

    def __init__(self, *, coverage: float = 0.9, method: str = "lac") -> None:
        self.coverage = coverage
        self.method = method

    def fit(self, P, y) -> ConformalScoreSets:
        """Calibrate on held-out probabilities ``P`` ``(n, 4)`` and true scores ``y``."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        P = _probabilities(P)
        y = check_scores(y, len(P))
        if not len(P):
            raise ValueError("no calibration rows")
        self.scores_ = np.sort(nonconformity(P, self.method)[np.arange(len(y)), y])
        self.threshold_ = conformal_quantile(self.scores_, self.coverage)
        self.n_calibration_ = len(P)
        return self

    def threshold(self, coverage: float | None = None) -> float:
        """``q`` for ``coverage`` (default: the fitted one), from the stored calibration scores."""
        check_is_fitted(self)
        return self.threshold_ if coverage is None else conformal_quantile(self.scores_, coverage)

    def predict_sets(self, P, coverage: float | None = None) -> np.ndarray:
        """``(n, 4)`` booleans: score k is in row i's set."""
        q = self.threshold(coverage)
        P = _probabilities(P)
        sets = nonconformity(P, self.method) <= q + 1e-12
        sets[np.arange(len(P)), argmax_high(P)] = True
        return fill_gaps(sets)

    def to_record(self) -> dict:
        check_is_fitted(self)
        return {"method": self.method, "coverage": self.coverage,
                "threshold": None if math.isinf(self.threshold_) else self.threshold_,
                "n_calibration": self.n_calibration_, "scores": [float(s) for s in self.scores_]}

    @classmethod
    def from_record(cls, record: dict) -> ConformalScoreSets:
        model = cls(coverage=float(record["coverage"]), method=str(record.get("method", "lac")))
        if model.method not in METHODS:
            raise ValueError(f"unknown conformal method {model.method!r}")
        model.scores_ = np.sort(np.asarray(record["scores"], dtype=np.float64))
        model.n_calibration_ = len(model.scores_)
        if not model.n_calibration_:
            raise ValueError("no calibration scores")
        model.threshold_ = conformal_quantile(model.scores_, model.coverage)
        return model

