"""VideoPoolingClassifier: pooling statistics, per-frame answers, video-level learning."""

from __future__ import annotations

import numpy as np
import pytest

from lusfeat.index import FrameIndex, first_appearance
from lusfeat.models.linear import StandardisedLogisticRegression
from lusfeat.models.ordinal import OrdinalLogisticRegression
from lusfeat.models.video import VideoPoolingClassifier, pool_videos


def at(videos, patients=None) -> FrameIndex:
    return FrameIndex.of_videos(videos, patients)


def test_pool_videos_computes_mean_std_max_per_copy_and_video() -> None:
    X = np.array([[[1.0], [3.0], [10.0]], [[2.0], [4.0], [20.0]]])  # 2 copies, 3 frames, 1 dim
    ids, inverse = first_appearance(["b", "b", "a"])
    assert list(ids) == ["b", "a"] and list(inverse) == [0, 0, 1]
    pooled = pool_videos(X, inverse, 2, ("mean", "std", "max"))
    assert pooled.shape == (2, 2, 3)
    assert np.allclose(pooled[0, 0], [2.0, 1.0, 3.0]) and np.allclose(pooled[1, 1], [20.0, 0.0, 20.0])
    with pytest.raises(ValueError, match="pooling"):
        pool_videos(X, inverse, 2, ("median",))


def synthetic_videos(n_videos: int = 80, frames: int = 10, seed: int = 0):
    # Each video's score shows in its mean feature; single frames are very noisy.
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, n_videos)
    X = np.repeat(scores * 1.0, frames)[:, None] + rng.normal(size=(n_videos * frames, 4)) * 3.0
    videos = np.repeat([f"v{i}" for i in range(n_videos)], frames)
    return X.astype(np.float32), np.repeat(scores, frames), videos


@pytest.mark.parametrize("estimator", [StandardisedLogisticRegression(C=1.0), OrdinalLogisticRegression(C=1.0)])
def test_learns_from_video_statistics_and_answers_per_frame(estimator) -> None:
    X, y, videos = synthetic_videos()
    model = VideoPoolingClassifier(estimator=estimator, pooling=("mean",), random_state=0).fit(X, y, index=at(videos))
    assert model.n_videos_ == 80
    X_test, y_test, videos_test = synthetic_videos(seed=1)
    probabilities = model.predict_proba(X_test, index=at(videos_test))
    assert probabilities.shape == (len(X_test), 4) and np.allclose(probabilities.sum(axis=1), 1.0)
    # All frames of a video share its answer.
    first = probabilities[videos_test == "v0"]
    assert np.allclose(first, first[0])
    video_accuracy = (model.predict(X_test, index=at(videos_test)) == y_test).mean()
    frame_accuracy = (StandardisedLogisticRegression(C=1.0).fit(X, y).predict(X_test) == y_test).mean()
    assert video_accuracy > frame_accuracy + 0.2


def test_copies_give_extra_training_videos_and_videos_are_required() -> None:
    X, y, videos = synthetic_videos(n_videos=20)
    copies = np.stack([X, X * 1.01])
    model = VideoPoolingClassifier(estimator=StandardisedLogisticRegression()).fit(copies, y, index=at(videos))
    assert model.estimator_.n_features_in_ == 3 * X.shape[1]
    with pytest.raises(ValueError, match="which video each frame belongs to"):
        VideoPoolingClassifier().fit(X, y)
    with pytest.raises(ValueError, match="which video each frame belongs to"):
        model.predict_proba(X, index=at(videos[:-1]))


def test_C_is_chosen_by_inner_patient_folds_of_the_training_videos() -> None:
    X, y, videos = synthetic_videos(n_videos=60)
    patients = np.repeat([f"p{i // 3}" for i in range(60)], 10)  # 20 patients of 3 videos each
    Cs = (1e-6, 0.01, 1.0)
    model = VideoPoolingClassifier(estimator=OrdinalLogisticRegression(), pooling=("mean",), Cs=Cs,
                                   random_state=0).fit(X, y, index=at(videos, patients))
    assert set(model.inner_qwk_) == {str(c) for c in Cs}
    assert model.C_ == max(Cs, key=lambda c: (model.inner_qwk_[str(c)], -c))
    assert model.estimator_.C == model.C_
    # so strong a penalty learns nothing, and the inner split says so
    assert model.inner_qwk_["1e-06"] < model.inner_qwk_["1.0"] and model.C_ != 1e-6
    again = VideoPoolingClassifier(estimator=OrdinalLogisticRegression(), pooling=("mean",), Cs=Cs,
                                   random_state=0).fit(X, y, index=at(videos, patients))
    assert again.inner_qwk_ == model.inner_qwk_  # reproducible from the seed


def test_choosing_C_refuses_a_video_of_two_patients_and_falls_back_with_one_patient() -> None:
    X, y, videos = synthetic_videos(n_videos=12)
    model = VideoPoolingClassifier(estimator=OrdinalLogisticRegression(C=0.5), Cs=(0.01, 0.1))
    with pytest.raises(ValueError, match="shared by several patients"):
        model.fit(X, y, index=at(np.repeat("same", len(y)), np.tile(["a", "b"], len(y) // 2)))
    single = model.fit(X, y, index=at(videos, np.repeat("only", len(y))))
    assert single.C_ == 0.5 and single.inner_qwk_ == {}
