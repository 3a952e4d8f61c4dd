"""The one standardisation: float64 column statistics over blocks of rows, without a float64 copy of float32 rows."""

from __future__ import annotations

import numpy as np
import pytest

from lusfeat.models.base import CONSTANT_SCALE, standardisation


@pytest.mark.parametrize("block_rows", [3, 64, 4096])
def test_standardisation_is_the_columns_mean_and_std_whatever_the_blocks(block_rows: int) -> None:
    rows = (np.random.default_rng(0).normal(size=(203, 17)) * 5 + 3).astype(np.float32)
    rows[:, 4] = 2.5  # a constant column keeps scale 1
    mean, var, scale = standardisation(rows, block_rows)
    exact = rows.astype(np.float64)
    np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, exact.var(axis=0), rtol=1e-10, atol=1e-12)
    assert var[4] < CONSTANT_SCALE and scale[4] == 1.0
    np.testing.assert_allclose(np.delete(scale, 4), np.delete(exact.std(axis=0), 4), rtol=1e-10)
    assert rows.dtype == np.float32 and rows[0, 4] == 2.5  # the input is left as it was
