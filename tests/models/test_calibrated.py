"""Calibrated: calibration and score sets of any model, learned on its training patients' inner split."""

from __future__ import annotations

import dataclasses

import numpy as np
from test_registry import frames

from lusfeat.models.calibrated import Calibrated
from lusfeat.models.registry import FitParams, build


def test_the_video_models_own_inner_answers_are_what_a_refit_gives_to_the_bit():
    # The video model fits the inner split's models for its choice of C; calibration reuses their held-out
    # answers at the chosen C instead of refitting: the same temperature and calibration scores either way.
    X, y, index = frames(seed=3)
    params = dataclasses.replace(FitParams(), video_Cs=(0.01, 0.1))
    reused = build("video", params).fit(X, y, index=index)
    assert reused.estimator_.inner_split_ == [3, 1000]
    refitted = build("video", params)
    refitted.fit(X, y, index=index)
    del refitted.estimator_.inner_held_out_  # as an estimator without it: the inner models are refitted
    refitted._fit_posthoc(X, y, index)
    assert refitted.calibrator_.temperature_ == reused.calibrator_.temperature_
    np.testing.assert_array_equal(refitted.conformal_.scores_, reused.conformal_.scores_)
    assert refitted.inner_ == reused.inner_


def test_calibration_never_changes_a_score_and_sets_follow_the_coverage():
    X, y, index = frames(seed=4)
    model = build("logreg", FitParams()).fit(X, y, index=index)
    assert isinstance(model, Calibrated) and model.calibrated
    answers = model.answer(X, index=index)
    np.testing.assert_array_equal(model.decide(answers.calibrated), model.decide(answers.probabilities))
    wide = model.answer(X, index=index, coverage=0.99).sets
    assert (wide >= answers.sets).all() and wide.sum() >= answers.sets.sum()
    # every frame of a video carries its video's set
    for key in set(index.video):
        rows = answers.sets[index.video == key]
        assert (rows == rows[0]).all()
