"""Conformal score sets: the ordinal nonconformity by hand, intervals only, and the coverage promise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lusfeat.models.conformal import (
    ConformalScoreSets,
    conformal_quantile,
    fill_gaps,
    ordinal_nonconformity,
)


def test_nonconformity_grows_an_interval_from_the_mode():
    # Mode 1 (0.4); then 2 (0.3) beats 0 (0.2); then 0; then 3.
    scores = ordinal_nonconformity(np.array([[0.2, 0.4, 0.3, 0.1]]))
    np.testing.assert_allclose(scores[0], [0.9, 0.4, 0.7, 1.0])
    # A tie between the neighbours goes to the higher score.
    np.testing.assert_allclose(ordinal_nonconformity(np.array([[0.25, 0.5, 0.25, 0.0]]))[0], [1.0, 0.5, 0.75, 1.0])


def test_quantile_rank_and_too_few_rows():
    assert conformal_quantile(np.arange(1, 10) / 10, 0.8) == pytest.approx(0.8)  # ceil(10 * 0.8) = 8th of 9
    assert math.isinf(conformal_quantile([0.1, 0.2], 0.9))  # ceil(3 * 0.9) = 3 > 2 rows


def test_sets_are_intervals_and_cover_at_the_promised_rate_on_exchangeable_rows():
    rng = np.random.default_rng(0)
    n = 6000
    P = rng.dirichlet(np.ones(4) * 0.7, size=n)
    y = np.array([rng.choice(4, p=p) for p in P])  # the probabilities are the truth's own
    calibrate, test = slice(0, 3000), slice(3000, n)
    for coverage in (0.8, 0.9):
        sets = ConformalScoreSets(coverage=coverage).fit(P[calibrate], y[calibrate]).predict_sets(P[test])
        covered = sets[np.arange(3000), y[test]].mean()
        assert coverage - 0.02 <= covered <= coverage + 0.03
        # The ordinal adaptive score keeps its promise too, but over-covers (scores pile up at 1).
        aps = ConformalScoreSets(coverage=coverage, method="ordinal_aps").fit(P[calibrate], y[calibrate])
        assert aps.predict_sets(P[test])[np.arange(3000), y[test]].mean() >= coverage - 0.02
        for row in sets:  # contiguous: no gap between the first and last score held
            held = np.flatnonzero(row)
            assert held[-1] - held[0] + 1 == len(held)


def test_an_other_coverage_from_the_stored_scores_and_the_record_round_trip():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(4), size=200)
    y = rng.integers(0, 4, 200)
    sets = ConformalScoreSets(coverage=0.9).fit(P, y)
    again = ConformalScoreSets.from_record(sets.to_record())
    assert again.threshold_ == pytest.approx(sets.threshold_)
    assert sets.predict_sets(P, coverage=0.5).sum() <= sets.predict_sets(P).sum()
    np.testing.assert_array_equal(again.predict_sets(P, 0.7), sets.predict_sets(P, 0.7))


def test_lac_sets_hold_every_score_between_two_held_ones():
    np.testing.assert_array_equal(fill_gaps(np.array([[1, 0, 1, 0], [0, 0, 0, 1]], bool)),
                                  [[1, 1, 1, 0], [0, 0, 0, 1]])
    sets = ConformalScoreSets(coverage=0.5).fit(np.array([[0.45, 0.1, 0.45, 0.0]] * 3), [0, 2, 0])
    # 1 - p: 0.55 for scores 0 and 2; q = 0.55 holds both, and 1 fills the gap.
    np.testing.assert_array_equal(sets.predict_sets(np.array([[0.45, 0.1, 0.45, 0.0]])), [[True, True, True, False]])
