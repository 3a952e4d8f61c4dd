"""Temperature scaling: recovers a known temperature, keeps the decision, round-trips through JSON."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

from lusfeat.models.calibration import TemperatureScaling, scale_probabilities
from lusfeat.models.ordinal import class_probabilities, decide
from lusfeat.scores import argmax_high


def overconfident_softmax(n: int, true_temperature: float, rng) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(size=(n, 4)) * 2.0
    y = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])
    return softmax(logits * true_temperature, axis=1), y  # sharpened by true_temperature


def test_softmax_temperature_recovers_the_sharpening_and_keeps_the_argmax():
    rng = np.random.default_rng(0)
    P, y = overconfident_softmax(4000, 2.5, rng)
    calibrator = TemperatureScaling(link="softmax").fit(P, y)
    assert calibrator.temperature_ == pytest.approx(2.5, rel=0.1)
    assert calibrator.nll_after_ < calibrator.nll_before_
    calibrated = calibrator.transform(P)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    np.testing.assert_array_equal(argmax_high(calibrated), argmax_high(P))


def test_cumulative_temperature_keeps_the_ordinal_median_and_stays_proportional_odds():
    rng = np.random.default_rng(1)
    thresholds = np.array([-1.0, 0.5, 2.0])
    latent = rng.normal(size=3000) * 1.5
    truth = class_probabilities(latent, thresholds)
    y = np.array([rng.choice(4, p=p) for p in truth])
    sharp = class_probabilities(latent * 3, thresholds * 3)  # the same axis, three times too sure
    calibrator = TemperatureScaling(link="cumulative").fit(sharp, y)
    assert calibrator.temperature_ == pytest.approx(3.0, rel=0.1)
    calibrated = calibrator.transform(sharp)
    np.testing.assert_array_equal(decide(calibrated, "median"), decide(sharp, "median"))
    expected = class_probabilities(latent * 3 / calibrator.temperature_, thresholds * 3 / calibrator.temperature_)
    np.testing.assert_allclose(calibrated, expected, atol=1e-8)
    assert expit(0) == 0.5  # the median's crossing point is where a temperature cannot move it


def test_well_calibrated_probabilities_keep_a_temperature_near_one_and_round_trip():
    rng = np.random.default_rng(2)
    P, y = overconfident_softmax(3000, 1.0, rng)
    calibrator = TemperatureScaling().fit(P, y)
    assert calibrator.temperature_ == pytest.approx(1.0, abs=0.1)
    again = TemperatureScaling.from_record(calibrator.to_record())
    np.testing.assert_allclose(again.transform(P), calibrator.transform(P))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="link"):
        scale_probabilities(np.full((2, 4), 0.25), 1.0, "sigmoid")
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        TemperatureScaling().fit(np.full((2, 3), 1 / 3), [0, 1])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureScaling.from_record({"link": "softmax", "temperature": 0})
