"""The 0-3 lung-ultrasound score and the rules every module reads it by.

- :data:`CLASSES`: the four scores, 0 (normal aeration) .. 3 (white lung); the one name for them.
- :data:`UNLABELLED`: -1, the true score of a frame without one (prediction input).
- the tie rule: between equally likely (or equally frequent) scores the **higher** one wins,
  the more severe reading (:func:`argmax_high`, :func:`most_frequent`);
- :func:`balanced_class_weights`: scikit-learn's "balanced" weights per score.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CLASSES = np.array([0, 1, 2, 3])
UNLABELLED = -1


def argmax_high(values) -> int | np.ndarray:
    """Index of the largest value along the last axis; a tie goes to the higher index (the more severe score).

    An int for one row of values, an array of ints for a ``(n, k)`` table.
    """
    values = np.asarray(values)
    index = values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)
    return int(index) if values.ndim == 1 else index.astype(int)


def most_frequent(scores: Iterable[int]) -> int:
    """The most frequent score; a tie goes to the higher score. -1 (unlabelled) for no labelled score."""
    values = [int(score) for score in scores if int(score) != UNLABELLED]
    if not values:
        return UNLABELLED
    return argmax_high(np.bincount(values, minlength=len(CLASSES)))


def balanced_class_weights(y) -> np.ndarray:
    """Weight per score, scikit-learn's 'balanced': ``n / (scores present * count of the score)``; 0 if absent.

    A sample's weight is ``balanced_class_weights(y)[y]``.
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(CLASSES)).astype(np.float64)
    present = np.count_nonzero(counts)
    return np.divide(len(y), present * counts, out=np.zeros(len(counts)), where=counts > 0)
