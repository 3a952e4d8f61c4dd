"""What every estimator of :mod:`lusfeat.models` checks and shares.

Features are cached copies ``(copies, n, dim)`` (copy 0 the original frame, copies 1..A
augmented; a 2-D ``(n, dim)`` array is one copy); scores are 0..3 (:data:`lusfeat.scores.CLASSES`).
"""

from __future__ import annotations

import numbers

import numpy as np

from lusfeat.scores import CLASSES

CONSTANT_SCALE = 10 * np.finfo(np.float64).eps  # a feature whose std is below this is left unscaled, as scikit-learn does


def as_copies(X) -> np.ndarray:
    """``X`` as float32 ``(copies, n, dim)``; a 2-D ``(n, dim)`` array becomes one copy."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2:
        X = X[np.newaxis]
    if X.ndim != 3 or X.shape[0] < 1 or X.shape[2] < 1:
        raise ValueError(f"X must be (n, dim) or (copies, n, dim) features, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


def evaluation_copy(X) -> np.ndarray:
    """The features a model is evaluated on: copy 0 (the original frame) of ``(copies, n, dim)``."""
    return as_copies(X)[0]


def check_scores(y, n: int) -> np.ndarray:
    """``y`` as int32 scores 0..3, one per frame."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must hold one score per frame ({n}), got shape {y.shape}")
    if len(y) and (not np.isin(y, CLASSES).all()):
        bad = sorted(set(np.unique(y).tolist()) - set(CLASSES.tolist()))
        raise ValueError(f"scores must be 0, 1, 2 or 3; found {bad}")
    return y.astype(np.int32)


def integer_seeds(random_state, count: int) -> tuple[np.random.Generator, list[int]]:
    """A NumPy generator and ``count`` int seeds, all from one ``random_state`` (None or int).

    One random_state feeds everything: the NumPy draws and the Keras layer seeds.
    """
    if random_state is not None and not isinstance(random_state, numbers.Integral):
        raise ValueError(f"random_state must be None or an int, got {random_state!r}")
    rng = np.random.default_rng(random_state)
    return rng, [int(seed) for seed in rng.integers(0, 2**31 - 1, size=count)]


def standardisation(rows: np.ndarray, block_rows: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, var, scale)`` of the columns of ``rows`` ``(n, dim)``, in float64; the one standardisation.

    Sums in float64 over blocks of rows, so a float32 ``rows`` is never copied whole (scikit-learn's
    ``StandardScaler.fit`` makes full float64 temporaries: 1.7 s CPU for 63,000 x 2048 rows, 0.2 s
    here). ``scale`` is the standard deviation, 1 for a constant column (below :data:`CONSTANT_SCALE`).
    """
    n, dim = rows.shape
    total, squares = np.zeros(dim), np.zeros(dim)
    # One float64 block reused (a fresh 64 MB temporary per block cost as much again in page faults), the same
    # sums in the same order.
    buffer = np.empty((min(block_rows, n), dim))
    for start in range(0, n, block_rows):
        part = rows[start:start + block_rows]
        block = buffer[:len(part)]
        block[...] = part
        total += block.sum(axis=0)
    mean = total / n
    for start in range(0, n, block_rows):
        part = rows[start:start + block_rows]
        block = np.subtract(part, mean, out=buffer[:len(part)])
        squares += np.einsum("ij,ij->j", block, block)
    var = squares / n
    scale = np.sqrt(var)
    scale[scale < CONSTANT_SCALE] = 1.0
    return mean, var, scale
