"""The registry of stage-two models: every entry builds, fits, answers, saves and explains by the one signature."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lusfeat.index import FrameIndex
from lusfeat.models.calibrated import Calibrated
from lusfeat.models.registry import MODELS, PRESETS, FitParams, build
from lusfeat.models.saving import load_estimator, save_estimator


def frames(seed: int = 0, patients: int = 9, videos: int = 3, per_video: int = 4, dim: int = 8):
    rng = np.random.default_rng(seed)
    video_scores = rng.integers(0, 4, patients * videos)
    y = np.repeat(video_scores, per_video)
    X = rng.normal(size=(2, len(y), dim)).astype(np.float32) + y[np.newaxis, :, np.newaxis] * 0.5
    keys = np.repeat([f"p{v // videos}/v{v}" for v in range(patients * videos)], per_video)
    index = FrameIndex.of_videos(keys, [key.split("/")[0] for key in keys],
                                 ["covid" if int(key[1]) % 2 else "negative" for key in keys])
    return X, y, index


PARAMS = dataclasses.replace(FitParams(), epochs=1, video_Cs=(0.01, 0.1))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_fits_answers_saves_and_explains(name: str, tmp_path: Path):
    X, y, index = frames()
    model = build(name, PARAMS)
    assert isinstance(model, Calibrated) and model.decision == MODELS[name].decision
    model.fit(X, y, index=index)
    assert model.calibrated and model.inner_["inner_folds"] == 3 and model.inner_["inner_seed"] == 1000
    answers = model.answer(X, index=index)
    assert answers.probabilities.shape == answers.calibrated.shape == answers.sets.shape == (len(y), 4)
    np.testing.assert_allclose(answers.calibrated.sum(axis=1), 1.0, atol=1e-9)
    assert answers.sets[np.arange(len(y)), model.decide(answers.calibrated)].all()  # the set holds the score
    # answer reads the scores from the probabilities by the registry's rule: the estimator's own predict
    np.testing.assert_array_equal(answers.scores, model.predict(X, index=index))
    assert answers.scores.dtype == np.int64
    # the saved model is the model: the same answers, to the bit
    files = save_estimator(model, tmp_path, name)
    loaded = load_estimator(tmp_path, name, files)
    again = loaded.answer(X, index=index)
    for field in ("probabilities", "scores", "calibrated", "sets"):
        np.testing.assert_array_equal(getattr(again, field), getattr(answers, field))
    assert isinstance(model.estimator_.fit_record(), dict)
    target, what = model.estimator_.gradcam_target()
    assert callable(target) and what


def test_presets_name_registered_models_primary_first():
    assert all(set(models) <= set(MODELS) for models in PRESETS.values())
    assert FitParams().models[0] == "video" and FitParams(preset="paper").models == ("head", "logreg")


def test_one_training_patient_leaves_the_model_uncalibrated_and_says_why():
    X, y, index = frames(patients=1, videos=8)
    model = build("logreg", PARAMS).fit(X, y, index=index)
    assert not model.calibrated and "single training patient" in model.note_
    assert model.answer(X, index=index).sets is None
