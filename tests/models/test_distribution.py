"""VideoDistribution: distances of videos to the training videos' features, a calibrated threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from lusfeat.index import FrameIndex
from lusfeat.models.distribution import VideoDistribution


def at(videos, groups=None) -> FrameIndex:
    return FrameIndex.of_videos(videos, groups)


def patients_videos(n_patients: int = 30, videos_per_patient: int = 6, frames: int = 8, dim: int = 40,
                    seed: int = 0, shift: float = 0.0):
    """Frame features of videos of patients: a low-rank structure shared by all, patient and video effects, noise."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(123).normal(size=(5, dim))  # the same "anatomy" for every seed
    X, videos, groups = [], [], []
    for patient in range(n_patients):
        patient_effect = rng.normal(size=5) * 0.5
        for video in range(videos_per_patient):
            latent = rng.normal(size=5) * 2 + patient_effect
            centre = latent @ basis + shift
            X.append(centre + rng.normal(size=(frames, dim)) * 0.5)
            videos += [f"p{seed}_{patient}/v{video}"] * frames
            groups += [f"p{seed}_{patient}"] * frames
    return np.concatenate(X).astype(np.float32), np.array(videos), np.array(groups)


def test_about_five_percent_of_new_like_videos_are_flagged_and_unlike_ones_all():
    X, videos, groups = patients_videos()
    model = VideoDistribution(random_state=0).fit(X, index=at(videos, groups))
    assert model.n_videos_ == 180 and model.n_components_ == 10 and model.threshold_ > 0
    assert len(model.inner_distances_) == 180
    # New patients from the same distribution: about 5% flagged.
    X_new, videos_new, _ = patients_videos(n_patients=100, seed=1)
    ids, distances = model.video_distances(X_new, index=at(videos_new))
    inside = distances <= model.threshold_
    assert len(ids) == 600 and 0.01 <= 1 - inside.mean() <= 0.12
    # Videos unlike them: shifted off the training subspace, or pure noise of another scale.
    X_far, videos_far, _ = patients_videos(n_patients=5, seed=2, shift=3.0)
    assert (model.video_distances(X_far, index=at(videos_far))[1] > model.threshold_).all()
    noise = np.random.default_rng(3).uniform(0, 10, size=(40, 40)).astype(np.float32)
    assert not model.predict(noise, index=at(np.repeat(["n1", "n2", "n3", "n4"], 10))).any()
    # Per frame: every frame carries its video's answer.
    per_frame = model.predict(X_new, index=at(videos_new))
    assert per_frame.shape == (len(X_new),) and per_frame[videos_new == ids[0]].all() == inside[0]


def test_distances_grow_with_the_departure():
    X, videos, groups = patients_videos()
    model = VideoDistribution(random_state=0).fit(X, index=at(videos, groups))
    new = [patients_videos(n_patients=5, seed=4, shift=shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    medians = [np.median(model.video_distances(X_new, index=at(videos_new))[1]) for X_new, videos_new, _ in new]
    assert medians == sorted(medians) and medians[-1] > 2 * medians[0]


def test_scikit_learn_conventions_and_determinism():
    X, videos, groups = patients_videos(n_patients=12)
    model = VideoDistribution(n_components=4, quantile=0.9, random_state=7)
    assert clone(model).get_params() == model.get_params()
    first = model.fit(X, index=at(videos, groups))
    assert first is model
    again = clone(model).fit(X, index=at(videos, groups))
    assert again.threshold_ == first.threshold_
    assert np.array_equal(again.video_distances(X, index=at(videos))[1], first.video_distances(X, index=at(videos))[1])
    # Copies (augmented frames) are ignored: copy 0 is the video as it is.
    copies = np.stack([X, X + 5.0])
    assert clone(model).fit(copies, index=at(videos, groups)).threshold_ == first.threshold_


def test_bad_arguments_are_refused():
    X, videos, groups = patients_videos(n_patients=4)
    with pytest.raises(ValueError, match="which video each frame belongs to"):
        VideoDistribution().fit(X, index=at(videos[:-1], groups[:-1]))
    with pytest.raises(ValueError, match="which video each frame belongs to"):
        VideoDistribution().fit(X)
    with pytest.raises(ValueError, match="two training patients"):
        VideoDistribution().fit(X, index=at(videos, np.full(len(X), "one")))
    with pytest.raises(ValueError, match="quantile"):
        VideoDistribution(quantile=1.0).fit(X, index=at(videos, groups))
    model = VideoDistribution().fit(X, index=at(videos, groups))
    with pytest.raises(ValueError, match="features"):
        model.video_distances(X[:, :5], index=at(videos))
