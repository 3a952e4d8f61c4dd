"""Estimators saved as data (lusfeat.models.saving): JSON + .npz, loaded to the same estimator, nothing unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.index import FrameIndex
from lusfeat.models.calibration import TemperatureScaling
from lusfeat.models.conformal import ConformalScoreSets
from lusfeat.models.distribution import VideoDistribution
from lusfeat.models.head import SeverityHead
from lusfeat.models.linear import StandardisedLogisticRegression
from lusfeat.models.ordinal import OrdinalLogisticRegression
from lusfeat.models.saving import file_sha256, load_estimator, save_estimator
from lusfeat.models.video import VideoPoolingClassifier


def data(seed: int = 0, n_videos: int = 30, frames: int = 4, dim: int = 12):
    rng = np.random.default_rng(seed)
    y_video = rng.integers(0, 4, n_videos)
    y = np.repeat(y_video, frames)
    X = rng.normal(size=(2, len(y), dim)).astype(np.float32) + y[np.newaxis, :, np.newaxis] * 0.3
    videos = np.repeat([f"p{v % 10}/v{v}" for v in range(n_videos)], frames)
    patients = np.repeat([f"p{v % 10}" for v in range(n_videos)], frames)
    return X, y, videos, patients


def round_trip(estimator, folder: Path):
    files = save_estimator(estimator, folder, "model")
    assert set(files) == {"model.json", "model.npz"}
    assert all(file_sha256(folder / name) == digest for name, digest in files.items())
    return load_estimator(folder, "model", files)


@pytest.mark.parametrize("make", [
    lambda: SeverityHead(epochs=2, random_state=0),
    lambda: StandardisedLogisticRegression(C=0.1),
    lambda: OrdinalLogisticRegression(C=0.1, class_weight="balanced"),
], ids=["head", "logreg", "ordinal"])
def test_frame_models_load_to_identical_probabilities(make, tmp_path: Path):
    X, y, _, _ = data()
    fitted = make().fit(X, y)
    loaded = round_trip(fitted, tmp_path)
    assert type(loaded) is type(fitted) and loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))


@pytest.mark.parametrize("estimator", ["ordinal", "logreg"])
def test_video_model_loads_with_its_estimator_and_chosen_C(estimator, tmp_path: Path):
    X, y, videos, patients = data(1)
    inner = OrdinalLogisticRegression(class_weight="balanced") if estimator == "ordinal" else StandardisedLogisticRegression()
    index = FrameIndex.of_videos(videos, patients)
    fitted = VideoPoolingClassifier(estimator=inner, Cs=(0.01, 0.1), random_state=0).fit(X, y, index=index)
    loaded = round_trip(fitted, tmp_path)
    assert loaded.C_ == fitted.C_ and loaded.inner_qwk_ == fitted.inner_qwk_
    assert type(loaded.estimator_) is type(fitted.estimator_) and loaded.estimator_.C == fitted.C_
    np.testing.assert_array_equal(loaded.predict_proba(X, index=index), fitted.predict_proba(X, index=index))
    np.testing.assert_array_equal(loaded.predict(X, index=index), fitted.predict(X, index=index))


def test_distribution_calibration_and_sets_load_to_identical_answers(tmp_path: Path):
    X, y, videos, patients = data(2)
    index = FrameIndex.of_videos(videos, patients)
    fitted = VideoDistribution(n_components=3).fit(X, y, index=index)
    loaded = round_trip(fitted, tmp_path / "d")
    np.testing.assert_array_equal(loaded.video_distances(X, index=index)[1], fitted.video_distances(X, index=index)[1])
    assert loaded.threshold_ == fitted.threshold_
    P = np.random.default_rng(3).dirichlet(np.ones(4), 40)
    truth = np.random.default_rng(4).integers(0, 4, 40)
    for fitted in (TemperatureScaling(link="cumulative").fit(P, truth), ConformalScoreSets(coverage=0.99).fit(P[:5], truth[:5])):
        loaded = round_trip(fitted, tmp_path / type(fitted).__name__)
        if isinstance(fitted, TemperatureScaling):
            np.testing.assert_array_equal(loaded.transform(P), fitted.transform(P))
        else:  # five rows cannot promise 99%: an infinite threshold, kept (JSON has no infinity)
            assert loaded.threshold_ == fitted.threshold_ == np.inf
            np.testing.assert_array_equal(loaded.predict_sets(P), fitted.predict_sets(P))


def test_a_changed_file_an_object_array_or_a_foreign_class_is_refused(tmp_path: Path):
    X, y, _, _ = data()
    files = save_estimator(StandardisedLogisticRegression().fit(X, y), tmp_path, "model")
    record = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**record, "class": "os.system"}))
    with pytest.raises(LusfeatError, match="sha256 is not the one model.json records"):
        load_estimator(tmp_path, "model", files)
    with pytest.raises(LusfeatError, match="unknown estimator class 'os.system'"):
        load_estimator(tmp_path, "model")
    (tmp_path / "model.json").write_text(json.dumps(record))
    with open(tmp_path / "model.npz", "wb") as handle:
        np.savez(handle, coef_=np.array([{"a": 1}], dtype=object))
    with pytest.raises(LusfeatError, match="without running code in it"):
        load_estimator(tmp_path, "model")
