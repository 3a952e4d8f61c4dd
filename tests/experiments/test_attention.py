"""AttentionVideoClassifier (the candidate that lost to the default video model): padding, masking, learning, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from lusfeat.experiments.attention import AttentionVideoClassifier, padded_videos
from lusfeat.index import FrameIndex


def at(videos) -> FrameIndex:
    return FrameIndex.of_videos(videos)

pytestmark = pytest.mark.experiments


def synthetic_videos(n_videos: int, frames: int, seed: int, noise: float = 1.5):
    """Videos whose score shows in their mean feature; a frame alone is noisy. Every 4th frame is dropped,
    so videos differ in length and the shorter ones are padded."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, n_videos)
    X = np.repeat(scores * 1.0, frames)[:, None] + rng.normal(size=(n_videos * frames, 4)) * noise
    videos = np.repeat([f"v{i}" for i in range(n_videos)], frames)
    keep = rng.random(len(videos)) > 0.25
    keep[::frames] = True  # no video vanishes
    return X[keep].astype(np.float32), np.repeat(scores, frames)[keep], videos[keep]


def test_padded_videos_keep_each_frame_once_in_order() -> None:
    X = np.arange(10, dtype=np.float32).reshape(1, 5, 2)  # 1 copy, 5 frames, 2 dims
    frames, mask = padded_videos(X, np.array([1, 0, 1, 1, 0]), 2)
    assert frames.shape == (2, 3, 2) and mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert frames[0, :2, 0].tolist() == [2.0, 8.0] and frames[1, :, 0].tolist() == [0.0, 4.0, 6.0]
    assert (frames[0, 2] == 0).all()
    copies, copy_mask = padded_videos(np.concatenate([X, X + 100]), np.array([1, 0, 1, 1, 0]), 2)
    assert copies.shape == (4, 3, 2) and (copies[2:, :, 0][copy_mask[2:] == 1] >= 100).all()  # copy 1 after copy 0


@pytest.mark.slow
def test_attention_pooling_learns_videos_ignores_padding_and_is_seeded() -> None:
    # A small network and few epochs (two fits of a few seconds), enough to learn videos this clear.
    params = dict(hidden=16, attention=8, epochs=6, batch_size=8, learning_rate=1e-2, random_state=0)
    X, y, videos = synthetic_videos(n_videos=40, frames=5, seed=0)
    model = AttentionVideoClassifier(**params).fit(X, y, index=at(videos))
    assert model.n_videos_ == 40 and len(model.history_["loss"]) == 6
    assert model.history_["loss"][-1] < 0.85 * model.history_["loss"][0]
    X_test, y_test, videos_test = synthetic_videos(n_videos=40, frames=5, seed=1)
    probabilities = model.predict_proba(X_test, index=at(videos_test))
    assert probabilities.shape == (len(y_test), 4) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    first = probabilities[videos_test == "v0"]
    assert np.allclose(first, first[0])
    assert (model.predict(X_test, index=at(videos_test)) == y_test).mean() > 0.5  # chance is 0.25
    # Padding gets no weight: a short video scored alone (no padding) is scored as among longer ones;
    # attention pools a set: the frames' order does not matter.
    lengths = {video: (videos_test == video).sum() for video in set(videos_test)}
    short = min(lengths, key=lambda video: (lengths[video], video))
    assert lengths[short] < max(lengths.values())
    alone = model.predict_proba(X_test[videos_test == short], index=at(videos_test[videos_test == short]))
    np.testing.assert_allclose(alone, probabilities[videos_test == short], atol=1e-5)
    order = np.random.default_rng(2).permutation(len(y_test))
    np.testing.assert_allclose(model.predict_proba(X_test[order], index=at(videos_test[order])), probabilities[order], atol=1e-5)
    again = AttentionVideoClassifier(**params).fit(X, y, index=at(videos))
    np.testing.assert_array_equal(again.predict_proba(X_test, index=at(videos_test)), probabilities)
