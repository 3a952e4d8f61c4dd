"""The paper's head and a logistic-regression cross-check, as scikit-learn style estimators.

Both take cached features ``X`` of shape ``(copies, n, dim)`` (copy 0 the original frame, copies
1..A augmented; a 2-D ``(n, dim)`` array is one copy) and scores ``y`` in 0..3, and both always
answer with the four classes 0..3, even when a training fold lacks one. Evaluation uses copy 0.

:class:`SeverityHead` is Dropout(0.5) then Dense(4, softmax), Adam, sparse cross-entropy, batch
32, 3 epochs, as in the paper. Each epoch draws one cached copy per training frame, so the
augmentation survives caching. Keras ``model.fit`` spends most of its time on per-step overhead
for a model this small; here all epochs run in one compiled graph loop (``tf.function`` over
``tf.range``), with the frame order, copy draws and batch boundaries computed up front by NumPy
from ``random_state``. The arithmetic is the same as ``model.fit``'s: same layers, optimizer,
loss, batch size and a smaller last batch. Measured on the shared 2-core CPU, 21,000 frames x 3
copies x 2048 dims: ``model.fit`` 9.9 s, ``steps_per_execution=32`` 4.3 s, this loop 2.0-2.3 s
of CPU (trace included); XLA (``jit_compile``) took over 100 s.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

LABELS = np.array([0, 1, 2, 3])


def as_copies(X) -> np.ndarray:
    """``X`` as float32 ``(copies, n, dim)``; a 2-D ``(n, dim)`` array becomes one copy."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2:
        X = X[np.newaxis]
    if X.ndim != 3 or X.shape[0] < 1 or X.shape[2] < 1:
        raise ValueError(f"X must be (n, dim) or (copies, n, dim) features, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


def evaluation_copy(X) -> np.ndarray:
    """The features a model is evaluated on: copy 0 (the original frame) of ``(copies, n, dim)``."""
    return as_copies(X)[0]


def check_scores(y, n: int) -> np.ndarray:
    """``y`` as int32 scores 0..3, one per frame."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must hold one score per frame ({n}), got shape {y.shape}")
    if len(y) and (not np.isin(y, LABELS).all()):
        bad = sorted(set(np.unique(y).tolist()) - set(LABELS.tolist()))
        raise ValueError(f"scores must be 0, 1, 2 or 3; found {bad}")
    return y.astype(np.int32)


def _integer_seeds(random_state, count: int) -> tuple[np.random.Generator, list[int]]:
    # One random_state feeds everything: the NumPy draws and the Keras layer seeds.
    if random_state is not None and not isinstance(random_state, numbers.Integral):
        raise ValueError(f"random_state must be None or an int, got {random_state!r}")
    rng = np.random.default_rng(random_state)
    return rng, [int(seed) for seed in rng.integers(0, 2**31 - 1, size=count)]


def build_head_model(feature_dim: int, dropout: float, seed: int):
    """The paper's head as a Keras functional model: features (dim,) -> Dropout -> Dense(4, softmax)."""
    import keras

    features = keras.Input(shape=(feature_dim,), name="features")
    dropped = keras.layers.Dropout(dropout, seed=seed, name="dropout")(features)
    kernel = keras.initializers.GlorotUniform(seed=seed + 1)
    probabilities = keras.layers.Dense(len(LABELS), activation="softmax", kernel_initializer=kernel,
                                       name="severity")(dropped)
    return keras.Model(features, probabilities, name="severity_head")


def epoch_schedule(n: int, copies: int, epochs: int, batch_size: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(index, weight)``, one row per training step, ``epochs * ceil(n / batch_size)`` rows.

    ``index[step, i] = (copy, frame)``; each epoch is a fresh permutation of the frames, each
    frame with a freshly drawn copy 0..copies-1. The last batch of an epoch is padded to full
    size with weight 0, so the loss is the mean over its real frames (as in ``model.fit``) and the
    compiled step sees one shape.
    """
    steps = -(-n // batch_size)
    index = np.zeros((epochs, steps * batch_size, 2), np.int32)
    weight = np.zeros((epochs, steps * batch_size), np.float32)
    for epoch in range(epochs):
        order = rng.permutation(n)
        index[epoch, :n, 0] = rng.integers(0, copies, size=n)
        index[epoch, :n, 1] = order
        weight[epoch, :n] = 1.0
    return index.reshape(epochs * steps, batch_size, 2), weight.reshape(epochs * steps, batch_size)


def _train(model, optimizer, X: np.ndarray, y: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Run every step in one compiled loop; ``(steps, 2)`` per-step (loss, correct frames)."""
    import keras
    import tensorflow as tf

    optimizer.build(model.trainable_variables)
    variables = model.trainable_variables

    @tf.function
    def run(features, scores, index, weight):
        steps = tf.shape(index)[0]
        record = tf.TensorArray(tf.float32, size=steps)
        for step in tf.range(steps):
            batch, mask = index[step], weight[step]
            inputs = tf.gather_nd(features, batch)
            targets = tf.gather(scores, batch[:, 1])
            with tf.GradientTape() as tape:
                probabilities = model(inputs, training=True)
                losses = keras.losses.sparse_categorical_crossentropy(targets, probabilities)
                # mask holds each frame's class weight (1 unless class_weight), 0 for padding;
                # dividing by the real frames (not the weights) keeps a weighted batch's scale.
                real = tf.cast(mask > 0, tf.float32)
                loss = tf.reduce_sum(losses * mask) / tf.reduce_sum(real)
            optimizer.apply(tape.gradient(loss, variables), variables)
            correct = tf.cast(tf.equal(tf.argmax(probabilities, axis=1, output_type=tf.int32), targets), tf.float32)
            record = record.write(step, tf.stack([loss, tf.reduce_sum(correct * real)]))
        return record.stack()

    return run(tf.convert_to_tensor(X), tf.convert_to_tensor(y), tf.convert_to_tensor(index),
               tf.convert_to_tensor(weight)).numpy()


def class_weights(y: np.ndarray) -> np.ndarray:
    """Weight per score, scikit-learn's 'balanced': ``n / (scores present * frames of that score)``; 0 if absent."""
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    present = np.count_nonzero(counts)
    return np.divide(len(y), present * counts, out=np.zeros(len(LABELS)), where=counts > 0).astype(np.float32)


class SeverityHead(ClassifierMixin, BaseEstimator):
    """Dropout then Dense(4, softmax) on cached features, trained with Adam on sparse cross-entropy.

    Parameters are the paper's defaults. ``class_weight="balanced"`` weights each frame's loss by
    ``n / (4 * frames of its score)`` (the rare score 3 counts more); the default (None) is the
    paper's unweighted loss. ``random_state`` (None or int) seeds the weights, the
    dropout masks, the frame order and the copy drawn per frame and epoch: the same seed on the
    same features gives the same model, bit for bit, on the same machine.

    Attributes: ``classes_`` (always [0, 1, 2, 3]), ``model_`` (the Keras model, input
    ``(dim,)`` features, output 4 probabilities), ``history_`` (``{"loss": [...], "accuracy":
    [...]}`` per epoch, on the drawn training copies with dropout active), ``n_features_in_``.
    """

    def __init__(self, *, dropout: float = 0.5, learning_rate: float = 1e-3, epochs: int = 3,
                 batch_size: int = 32, class_weight: str | None = None, random_state: int | None = None) -> None:
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y) -> SeverityHead:
        """Train on ``X`` ``(copies, n, dim)`` (or ``(n, dim)``) and scores ``y`` 0..3."""
        import keras

        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")
        X = as_copies(X)
        copies, n, dim = X.shape
        if n == 0:
            raise ValueError("no training frames")
        y = check_scores(y, n)
        rng, (layer_seed,) = _integer_seeds(self.random_state, 1)
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        index, weight = epoch_schedule(n, copies, self.epochs, self.batch_size, rng)
        if self.class_weight == "balanced":
            weight = weight * class_weights(y)[y[index[:, :, 1]]]
        model = build_head_model(dim, self.dropout, layer_seed)
        optimizer = keras.optimizers.Adam(learning_rate=self.learning_rate)
        record = _train(model, optimizer, X, y, index, weight).reshape(self.epochs, -1, 2)
        batch_frames = (weight > 0).reshape(self.epochs, -1, self.batch_size).sum(axis=2)
        self.history_ = {
            "loss": [float(value) for value in (record[:, :, 0] * batch_frames).sum(axis=1) / n],
            "accuracy": [float(value) for value in record[:, :, 1].sum(axis=1) / n],
        }
        self.model_ = model
        self.classes_ = LABELS.copy()
        self.n_features_in_ = dim
        return self

    def predict_proba(self, X) -> np.ndarray:
        """``(n, 4)`` probabilities of scores 0..3; of ``(copies, n, dim)`` input, copy 0 is used."""
        check_is_fitted(self)
        X = evaluation_copy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the head was fitted on {self.n_features_in_}")
        if len(X) == 0:
            return np.empty((0, len(LABELS)), np.float32)
        return np.asarray(self.model_(X, training=False), dtype=np.float64)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class LogisticCheck(ClassifierMixin, BaseEstimator):
    """Standardised multinomial logistic regression on the same frames and copies as the head.

    All copies are stacked as training rows (each copy a frame of its own, as the head sees them
    over its epochs). ``C=0.001`` is strong L2, on purpose: 2048 standardised dimensions, rows
    that are three copies of frames of a few dozen patients, and the earlier probes found nothing
    better anywhere in C 0.001-1 (FINDINGS). The smallest C is also the fastest: on Xception
    features of COVID-BLUES (every 10th frame, 6,500 rows a fold) L-BFGS converged in 74-80
    iterations against 127-140 at C=0.01 (about 2 s against 2.7 s CPU), with pooled QWK 0.15
    against 0.12. ``pipeline_`` is the fitted ``Pipeline(StandardScaler, LogisticRegression)``;
    its columns follow ``pipeline_.classes_``, which lacks a score absent from training, while
    this wrapper always answers with the four classes (an absent class gets probability 0).
    """

    def __init__(self, *, C: float = 0.001, max_iter: int = 200, random_state: int | None = None) -> None:
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y) -> LogisticCheck:
        X = as_copies(X)
        copies, n, dim = X.shape
        if n == 0:
            raise ValueError("no training frames")
        y = check_scores(y, n)
        rows, scores = X.reshape(copies * n, dim), np.tile(y, copies)
        scaler = fitted_standard_scaler(rows)
        regression = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="lbfgs", random_state=self.random_state)
        # One BLAS thread: the gradient products are skinny (4 x n times n x dim), and with two
        # threads on a busy 2-core machine OpenBLAS waited far more than it computed (measured
        # on 21,000 x 2048 rows: 3.9 s with two threads, 0.5 s with one).
        with threadpool_limits(limits=1, user_api="blas"):
            regression.fit(scaler.transform(rows), scores)
        pipeline = make_pipeline(scaler, regression)
        self.pipeline_: Pipeline = pipeline
        self.classes_ = LABELS.copy()
        self.n_features_in_ = dim
        self.n_iter_ = int(np.max(pipeline[-1].n_iter_))
        self.converged_ = self.n_iter_ < self.max_iter
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = evaluation_copy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the regression was fitted on {self.n_features_in_}")
        return pipeline_probabilities(self.pipeline_, X)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def fitted_standard_scaler(X: np.ndarray, block_rows: int = 4096) -> StandardScaler:
    """A ``StandardScaler`` fitted on ``X``, as ``StandardScaler().fit(X)`` would be, but fast.

    scikit-learn's fit makes full float64 temporaries of ``X`` (1.7 s CPU for 63,000 x 2048
    float32 rows, against 0.2 s here); this sums in float64 over blocks of rows and sets the
    documented fitted attributes, so the pipeline saved is a plain scikit-learn one.
    """
    n, dim = X.shape
    total, squares = np.zeros(dim), np.zeros(dim)
    for start in range(0, n, block_rows):
        block = X[start:start + block_rows].astype(np.float64)
        total += block.sum(axis=0)
    mean = total / n
    for start in range(0, n, block_rows):
        block = X[start:start + block_rows].astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", block, block)
    var = squares / n
    scale = np.sqrt(var)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0  # constant features: left unscaled, as scikit-learn does
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_samples_seen_ = n
    scaler.n_features_in_ = dim
    return scaler


def pipeline_probabilities(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """``(n, 4)`` probabilities from a fitted classifier whose ``classes_`` may lack some scores."""
    probabilities = np.zeros((len(X), len(LABELS)))
    if len(X):
        columns = np.searchsorted(LABELS, pipeline.classes_)
        probabilities[:, columns] = pipeline.predict_proba(X)
    return probabilities
