"""Attention pooling over a video's frames (Ilse et al., 2018): a candidate that lost to the default.

Measured in ``benchmarks/accuracy.py`` (``xception/video-attention``, seeds 0-2, 2026-12-02):
video QWK 0.15 against 0.24 for ``lusfeat.fit``'s default video model (``docs/experiments.md``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from lusfeat.index import FrameIndex
from lusfeat.models.base import as_copies, check_scores, standardisation
from lusfeat.scores import CLASSES, argmax_high, balanced_class_weights, most_frequent


def padded_videos(X: np.ndarray, inverse: np.ndarray, n_videos: int) -> tuple[np.ndarray, np.ndarray]:
    """``(copies * n_videos, T, dim)`` frames of each video padded to the longest, and the ``(.., T)`` mask (1 = real)."""
    copies, n, dim = X.shape
    counts = np.bincount(inverse, minlength=n_videos)
    longest = int(counts.max())
    order = np.argsort(inverse, kind="stable")
    position = np.empty(n, dtype=np.int64)  # each frame's place within its video
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position[order] = np.arange(n) - np.repeat(starts, counts)
    frames = np.zeros((copies, n_videos, longest, dim), np.float32)
    frames[:, inverse, position] = X
    mask = np.zeros((n_videos, longest), np.float32)
    mask[inverse, position] = 1.0
    return frames.reshape(copies * n_videos, longest, dim), np.tile(mask, (copies, 1))


def build_attention_model(feature_dim: int, hidden: int, attention: int, dropout: float, seed: int):
    """Frames ``(T, dim)`` + mask -> Dense(hidden) per frame -> attention weights over the real frames -> Dense(4)."""
    import keras
    from keras import ops

    frames = keras.Input(shape=(None, feature_dim), name="frames")
    mask = keras.Input(shape=(None,), name="mask")
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout_in")(frames)
    x = keras.layers.Dense(hidden, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed + 1),
                           name="embed")(x)
    scores = keras.layers.Dense(attention, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed + 2),
                                name="attention_hidden")(x)
    scores = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed + 3), name="attention")(scores)
    scores = ops.squeeze(scores, axis=-1) + (1.0 - mask) * -1e9  # padded frames get no weight
    weights = ops.softmax(scores, axis=1)
    pooled = ops.sum(x * ops.expand_dims(weights, -1), axis=1)
    pooled = keras.layers.Dropout(dropout, seed=seed + 4, name="dropout_out")(pooled)
    probabilities = keras.layers.Dense(len(CLASSES), activation="softmax",
                                       kernel_initializer=keras.initializers.GlorotUniform(seed + 5), name="severity")(pooled)
    return keras.Model([frames, mask], probabilities, name="attention_video_head")


class AttentionVideoClassifier(ClassifierMixin, BaseEstimator):
    """Attention pooling over a video's frames (Ilse et al., 2018, attention-based MIL), trained per video.

    Features are standardised on the training frames; each frame passes Dropout and a ReLU
    ``Dense(hidden)``; a small tanh network gives each frame a weight (softmax over the video's
    real frames); the weighted mean feeds Dropout + Dense(4, softmax). Trained with Adam on
    cross-entropy per video (``class_weight="balanced"``: weights by video score), each cached
    copy a training video of its own. Answers per frame, like :class:`VideoPoolingClassifier`.

    Attributes: ``model_`` (Keras), ``mean_`` / ``scale_``, ``classes_``, ``n_features_in_``, ``n_videos_``.
    """

    def __init__(self, *, hidden: int = 64, attention: int = 32, dropout: float = 0.5, epochs: int = 40,
                 batch_size: int = 16, learning_rate: float = 1e-3, weight_decay: float = 1e-3,
                 class_weight: str | None = "balanced", random_state: int | None = None) -> None:
        self.hidden = hidden
        self.attention = attention
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y, *, index: FrameIndex | None = None) -> AttentionVideoClassifier:
        import keras

        X = as_copies(X)
        y = check_scores(y, X.shape[1])
        if index is None or len(index) != X.shape[1]:
            raise ValueError(f"index must say which video each frame belongs to ({X.shape[1]} frames)")
        ids, inverse = index.videos()
        rows = X.reshape(-1, X.shape[2])
        mean, _, scale = standardisation(rows)
        self.mean_, self.scale_ = mean.astype(np.float32), scale.astype(np.float32)
        frames, mask = padded_videos((X - self.mean_) / self.scale_, inverse, len(ids))
        scores = pd.Series(y).groupby(inverse).agg(most_frequent).to_numpy().astype(np.int32)
        scores = np.tile(scores, X.shape[0])
        weights = balanced_class_weights(scores).astype(np.float32)[scores] if self.class_weight == "balanced" else np.ones(len(scores), np.float32)
        rng = np.random.default_rng(self.random_state)
        seed = int(rng.integers(0, 2**31 - 1))
        keras.utils.set_random_seed(seed)  # the shuffling of model.fit
        model = build_attention_model(X.shape[2], self.hidden, self.attention, self.dropout, seed)
        model.compile(optimizer=keras.optimizers.AdamW(self.learning_rate, weight_decay=self.weight_decay),
                      loss="sparse_categorical_crossentropy")
        history = model.fit([frames, mask], scores, sample_weight=weights, epochs=self.epochs,
                            batch_size=self.batch_size, shuffle=True, verbose=0)
        self.model_ = model
        self.history_ = {"loss": [float(v) for v in history.history["loss"]]}
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = X.shape[2]
        self.n_videos_ = len(ids)
        return self

    def predict_video_proba(self, X, *, index: FrameIndex) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = as_copies(X)[:1]
        if X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, the head was fitted on {self.n_features_in_}")
        if index is None or len(index) != X.shape[1]:
            raise ValueError(f"index must say which video each frame belongs to ({X.shape[1]} frames)")
        ids, inverse = index.videos()
        frames, mask = padded_videos((X - self.mean_) / self.scale_, inverse, len(ids))
        return ids, np.asarray(self.model_.predict([frames, mask], verbose=0, batch_size=64), dtype=np.float64)

    def predict_proba(self, X, *, index: FrameIndex | None = None) -> np.ndarray:
        _, probabilities = self.predict_video_proba(X, index=index)
        return probabilities[index.videos()[1]]

    def predict(self, X, *, index: FrameIndex | None = None) -> np.ndarray:
        return self.classes_[argmax_high(self.predict_proba(X, index=index))]
