"""The paper's head, a scikit-learn style estimator on cached features.

It takes features ``X`` of shape ``(copies, n, dim)`` (copy 0 the original frame, copies 1..A
augmented; a 2-D ``(n, dim)`` array is one copy) and scores ``y`` in 0..3, and always answers
with the four classes 0..3, even when a training fold lacks one. Evaluation uses copy 0.

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

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from lusfeat.models.base import as_copies, check_scores, evaluation_copy, integer_seeds
from lusfeat.models.saving import saved_as_data
from lusfeat.scores import CLASSES, argmax_high, balanced_class_weights


def build_head_model(feature_dim: int, dropout: float, seed: int):
    """The paper's head as a Keras functional model: features (dim,) -> Dropout -> Dense(4, softmax)."""
    import keras

    features = keras.Input(shape=(feature_dim,), name="features")
    dropped = keras.layers.Dropout(dropout, seed=seed, name="dropout")(features)
    kernel = keras.initializers.GlorotUniform(seed=seed + 1)
    probabilities = keras.layers.Dense(len(CLASSES), activation="softmax", kernel_initializer=kernel,
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


def _drop_retracing_warning(record: logging.LogRecord) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _one_trace_per_fit_expected() -> Iterator[None]:
    """Silence TensorFlow's "N out of the last N calls ... triggered tf.function retracing".

    Each fit builds a new model and traces its own compiled loop once, by design. TensorFlow counts
    traces per code object, not per function, so from the sixth fit in a process (cross-validation,
    seeds) it warns of a problem there is not. Only that message, only during the call.
    """
    logger = logging.getLogger("tensorflow")
    logger.addFilter(_drop_retracing_warning)
    try:
        yield
    finally:
        logger.removeFilter(_drop_retracing_warning)


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

    with _one_trace_per_fit_expected():
        return run(tf.convert_to_tensor(X), tf.convert_to_tensor(y), tf.convert_to_tensor(index),
                   tf.convert_to_tensor(weight)).numpy()


@saved_as_data
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
    Saved (:mod:`lusfeat.models.saving`) as the Dense layer's ``kernel`` and ``bias``: a loaded
    head rebuilds the same Keras model from them, no Keras file is deserialised.
    """

    _not_saved = ("model_",)

    def __init__(self, *, dropout: float = 0.5, learning_rate: float = 1e-3, epochs: int = 3,
                 batch_size: int = 32, class_weight: str | None = None, random_state: int | None = None) -> None:
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X, y, *, index=None) -> SeverityHead:
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
        rng, (layer_seed,) = integer_seeds(self.random_state, 1)
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        index, weight = epoch_schedule(n, copies, self.epochs, self.batch_size, rng)
        if self.class_weight == "balanced":
            weight = weight * balanced_class_weights(y).astype(np.float32)[y[index[:, :, 1]]]
        model = build_head_model(dim, self.dropout, layer_seed)
        optimizer = keras.optimizers.Adam(learning_rate=self.learning_rate)
        record = _train(model, optimizer, X, y, index, weight).reshape(self.epochs, -1, 2)
        batch_frames = (weight > 0).reshape(self.epochs, -1, self.batch_size).sum(axis=2)
        self.history_ = {
            "loss": [float(value) for value in (record[:, :, 0] * batch_frames).sum(axis=1) / n],
            "accuracy": [float(value) for value in record[:, :, 1].sum(axis=1) / n],
        }
        self.model_ = model
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = dim
        return self

    def predict_proba(self, X, *, index=None) -> np.ndarray:
        """``(n, 4)`` probabilities of scores 0..3; of ``(copies, n, dim)`` input, copy 0 is used."""
        check_is_fitted(self)
        X = evaluation_copy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the head was fitted on {self.n_features_in_}")
        if len(X) == 0:
            return np.empty((0, len(CLASSES)), np.float32)
        return np.asarray(self.model_(X, training=False), dtype=np.float64)

    def predict(self, X, *, index=None) -> np.ndarray:
        return self.classes_[argmax_high(self.predict_proba(X))]

    def fit_record(self) -> dict:
        """What ``metrics.json`` says of this fit: the loss and accuracy per epoch."""
        return {"history": self.history_}

    def gradcam_target(self):
        """``(f, what)`` for :mod:`lusfeat.heatmaps`: ``f`` maps frame features (a TF tensor ``(n, dim)``) to the sum
        over frames of the logit (before softmax) of each frame's own predicted score."""
        import tensorflow as tf

        layer = self.model_.get_layer("severity")
        kernel = tf.constant(np.asarray(layer.kernel), tf.float32)
        bias = tf.constant(np.asarray(layer.bias), tf.float32)

        def head_logit(features):
            logits = features @ kernel + bias
            chosen = tf.stop_gradient(len(CLASSES) - 1 - tf.argmax(tf.reverse(logits, axis=[1]), axis=1))
            return tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))

        return head_logit, "frame logit of the head's predicted score"

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        kernel, bias = self.model_.get_layer("severity").get_weights()
        return {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        kernel, bias = arrays["kernel"], arrays["bias"]
        if kernel.shape != (self.n_features_in_, len(CLASSES)) or bias.shape != (len(CLASSES),):
            raise ValueError(f"the head's kernel {kernel.shape} and bias {bias.shape} do not map "
                             f"{self.n_features_in_} features to {len(CLASSES)} scores")
        self.model_ = build_head_model(self.n_features_in_, self.dropout, 0)
        self.model_.get_layer("severity").set_weights([kernel, bias])
