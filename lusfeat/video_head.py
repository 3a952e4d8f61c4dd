"""A video-level head: pool each video's frame features, then classify the video.

COVID-BLUES scores each *video* once; every frame inherits that score, although a B-line or a
consolidation shows in some frames and not in others. Classifying frames one by one therefore
learns from many wrongly-labelled frames. Here each video becomes one row, the statistics of its
frames' features (``pooling``: any of ``mean``, ``std``, ``max``, concatenated), and any
scikit-learn style classifier over scores 0..3 (default: :class:`lusfeat.head.LogisticCheck`)
is trained on those rows.

Features are cached copies ``(copies, n, dim)`` (or ``(n, dim)``), one row per frame, with a
video id per frame. Copy ``c`` of a video pools copy ``c`` of its frames, so the augmented copies
give augmented videos, and the estimator sees them as extra training rows. A video's score is
the most frequent score of its frames (ties to the higher). :meth:`predict_proba` answers one
row per *frame* (its video's probabilities), so the frame, video, region and patient metrics of
the frame-level heads apply unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from lusfeat.aggregate import most_frequent
from lusfeat.head import LABELS, LogisticCheck, as_copies, check_scores

POOLINGS = ("mean", "std", "max")


def video_index(videos) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, inverse)``: the distinct video ids in order of first appearance, and each frame's position in them."""
    codes, ids = pd.factorize(pd.Series(np.asarray(videos)).astype(str), sort=False)
    return np.asarray(ids, dtype=object), codes.astype(np.int64)


def pool_videos(X, inverse: np.ndarray, n_videos: int, pooling: tuple[str, ...]) -> np.ndarray:
    """``(copies, n_videos, dim * len(pooling))``: per copy and video, the chosen statistics over its frames."""
    X = as_copies(X)
    unknown = [name for name in pooling if name not in POOLINGS]
    if not pooling or unknown:
        raise ValueError(f"pooling must be a non-empty subset of {', '.join(POOLINGS)}, got {pooling!r}")
    copies, n, dim = X.shape
    counts = np.bincount(inverse, minlength=n_videos)
    if len(counts) != n_videos or (counts == 0).any():
        raise ValueError("every video must have at least one frame")
    # Frames sorted by video, then one reduceat per statistic: far faster than np.add.at.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grouped = X[:, order].astype(np.float64)
    sizes = counts[np.newaxis, :, np.newaxis].astype(np.float64)
    mean = np.add.reduceat(grouped, starts, axis=1) / sizes
    parts = []
    for name in pooling:
        if name == "mean":
            parts.append(mean)
        elif name == "std":
            squares = np.add.reduceat(grouped ** 2, starts, axis=1) / sizes
            parts.append(np.sqrt(np.maximum(squares - mean ** 2, 0.0)))
        else:
            parts.append(np.maximum.reduceat(grouped, starts, axis=1))
    return np.concatenate(parts, axis=2).astype(np.float32)


class VideoPoolingClassifier(ClassifierMixin, BaseEstimator):
    """Pool frame features per video, classify videos; answer per frame (see the module docstring).

    ``Cs``: when given, the estimator's ``C`` is chosen from these values by an inner
    patient-level split of the *training* videos only (``inner_folds`` folds of the patients
    named by ``groups``, stratified by ``strata`` as :func:`lusfeat.folds.patient_strata` does,
    seeded ``random_state + 1000``; fewer folds when there are fewer training patients), for the
    best video-level quadratic weighted kappa; a tie goes to the smaller C (the stronger
    penalty). The test patients are never seen by the choice.

    Attributes: ``estimator_`` (the fitted clone), ``classes_`` ([0, 1, 2, 3]),
    ``n_features_in_`` (frame feature size), ``n_videos_`` (training videos), and with ``Cs``:
    ``C_`` (the chosen value) and ``inner_qwk_`` (inner video QWK per candidate, keys ``str(C)``).
    """

    def __init__(self, *, estimator=None, pooling: tuple[str, ...] = ("mean", "std", "max"),
                 Cs: tuple[float, ...] | None = None, inner_folds: int = 3,
                 random_state: int | None = None) -> None:
        self.estimator = estimator
        self.pooling = pooling
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.random_state = random_state

    def _pooled(self, X, videos) -> tuple[np.ndarray, np.ndarray]:
        X = as_copies(X)
        if videos is None or len(videos) != X.shape[1]:
            raise ValueError(f"videos must give one video id per frame ({X.shape[1]})")
        ids, inverse = video_index(videos)
        return pool_videos(X, inverse, len(ids), tuple(self.pooling)), inverse

    def fit(self, X, y, videos=None, groups=None, strata=None) -> VideoPoolingClassifier:
        """Fit on frames ``X`` with scores ``y``; ``videos`` per frame, and with ``Cs`` also ``groups`` (patients)."""
        X = as_copies(X)
        y = check_scores(y, X.shape[1])
        pooled, inverse = self._pooled(X, videos)
        video_scores = pd.Series(y).groupby(inverse).agg(most_frequent).to_numpy().astype(np.int32)
        estimator = clone(self.estimator) if self.estimator is not None else LogisticCheck()
        if self.random_state is not None and "random_state" in estimator.get_params():
            estimator.set_params(random_state=self.random_state)
        if self.Cs:
            self.C_, self.inner_qwk_ = self._choose_C(estimator, pooled, video_scores, inverse, y, groups, strata)
            estimator.set_params(C=self.C_)
        self.estimator_ = estimator.fit(pooled, video_scores)
        self.classes_ = LABELS.copy()
        self.n_features_in_ = X.shape[2]
        self.n_videos_ = pooled.shape[1]
        return self

    def _choose_C(self, estimator, pooled: np.ndarray, video_scores: np.ndarray, inverse: np.ndarray, y: np.ndarray,
                  groups, strata) -> tuple[float, dict[str, float]]:
        from sklearn.metrics import cohen_kappa_score

        from lusfeat.folds import make_folds, patient_strata

        if groups is None or len(groups) != len(inverse):
            raise ValueError(f"choosing C (Cs={self.Cs}) needs groups: one patient id per frame ({len(inverse)})")
        if min(self.Cs) <= 0:
            raise ValueError(f"Cs must be positive, got {self.Cs}")
        frames = pd.DataFrame({"patient_id": np.asarray(groups).astype(str), "score": y,
                               "group": "" if strata is None else np.asarray(strata).astype(str)})
        video_patients = frames.groupby(inverse)["patient_id"].agg(lambda values: set(values))
        if (video_patients.map(len) > 1).any():
            raise ValueError("a video id is shared by several patients: give ids unique across patients")
        video_patient = video_patients.map(lambda values: next(iter(values))).to_numpy()
        strata_per_patient = patient_strata(frames)
        n_inner = min(self.inner_folds, len(strata_per_patient))
        if n_inner < 2:  # one training patient: nothing to hold out, keep the estimator's own C
            return float(estimator.get_params()["C"]), {}
        seed = 1000 + (self.random_state or 0)
        folds = make_folds(strata_per_patient, n_inner, seed=seed).set_index("patient_id")["fold"]
        video_fold = folds.reindex(video_patient).to_numpy()
        scores = {}
        for C in self.Cs:
            predicted = np.zeros(len(video_scores), dtype=np.int64)
            for fold in range(1, n_inner + 1):
                train, test = video_fold != fold, video_fold == fold
                inner = clone(estimator).set_params(C=C).fit(pooled[:, train], video_scores[train])
                predicted[test] = inner.predict(pooled[:1, test])
            scores[str(C)] = float(cohen_kappa_score(video_scores, predicted, weights="quadratic", labels=LABELS))
        best = max(self.Cs, key=lambda C: (scores[str(C)], -C))
        return float(best), scores

    def _video_rows(self, X, videos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = as_copies(X)
        if X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, the head was fitted on {self.n_features_in_}")
        if videos is None or len(videos) != X.shape[1]:
            raise ValueError(f"videos must give one video id per frame ({X.shape[1]})")
        ids, inverse = video_index(videos)
        return ids, inverse, pool_videos(X[:1], inverse, len(ids), tuple(self.pooling))

    def predict_video_proba(self, X, videos) -> tuple[np.ndarray, np.ndarray]:
        """``(video ids, (n_videos, 4) probabilities)`` for the videos of ``X`` (copy 0)."""
        ids, _, pooled = self._video_rows(X, videos)
        return ids, np.asarray(self.estimator_.predict_proba(pooled), dtype=np.float64)

    def predict_video(self, X, videos) -> tuple[np.ndarray, np.ndarray]:
        """``(video ids, scores)``: each video's score by the estimator's own rule (its ``predict``)."""
        ids, _, pooled = self._video_rows(X, videos)
        return ids, np.asarray(self.estimator_.predict(pooled)).astype(np.int64)

    def predict_proba(self, X, videos=None) -> np.ndarray:
        """``(n_frames, 4)``: each frame gets its video's probabilities."""
        _, probabilities = self.predict_video_proba(X, videos)
        return probabilities[video_index(videos)[1]]

    def predict(self, X, videos=None) -> np.ndarray:
        """Per frame, its video's score (the estimator's ``predict``: the median rule for ordinal regression)."""
        _, scores = self.predict_video(X, videos)
        return scores[video_index(videos)[1]]


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
    probabilities = keras.layers.Dense(len(LABELS), activation="softmax",
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

    def fit(self, X, y, videos=None) -> AttentionVideoClassifier:
        import keras

        from lusfeat.head import class_weights

        X = as_copies(X)
        y = check_scores(y, X.shape[1])
        if videos is None or len(videos) != X.shape[1]:
            raise ValueError(f"videos must give one video id per frame ({X.shape[1]})")
        ids, inverse = video_index(videos)
        rows = X.reshape(-1, X.shape[2])
        self.mean_ = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        scale = rows.std(axis=0, dtype=np.float64).astype(np.float32)
        self.scale_ = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
        frames, mask = padded_videos((X - self.mean_) / self.scale_, inverse, len(ids))
        scores = pd.Series(y).groupby(inverse).agg(most_frequent).to_numpy().astype(np.int32)
        scores = np.tile(scores, X.shape[0])
        weights = class_weights(scores)[scores] if self.class_weight == "balanced" else np.ones(len(scores), np.float32)
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
        self.classes_ = LABELS.copy()
        self.n_features_in_ = X.shape[2]
        self.n_videos_ = len(ids)
        return self

    def predict_video_proba(self, X, videos) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = as_copies(X)[:1]
        if X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, the head was fitted on {self.n_features_in_}")
        if videos is None or len(videos) != X.shape[1]:
            raise ValueError(f"videos must give one video id per frame ({X.shape[1]})")
        ids, inverse = video_index(videos)
        frames, mask = padded_videos((X - self.mean_) / self.scale_, inverse, len(ids))
        return ids, np.asarray(self.model_.predict([frames, mask], verbose=0, batch_size=64), dtype=np.float64)

    def predict_proba(self, X, videos=None) -> np.ndarray:
        _, probabilities = self.predict_video_proba(X, videos)
        return probabilities[video_index(videos)[1]]

    def predict(self, X, videos=None) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X, videos), axis=1)]
