"""Partial fine-tuning on cached maps: retrain the backbone's top block(s) and the head, never the frozen part.

    python -m lusfeat.experiments.finetune --backbone xception --tap middle [--frame-step 10] [--out features]

stores an intermediate activation map per frame and copy (float16) in ``OUT/<backbone>-<tap>.h5``,
through stage one's loop (:func:`lusfeat.embed.write_features`) with this module's feature source
(:func:`maps_source`: the frozen backbone cut at the tap, on TensorFlow). :class:`TopBlockFineTuner` rebuilds the rest of the
backbone after that tap with its ImageNet weights (for Xception's ``middle`` tap: block13 and
block14), adds global average pooling and the paper's head (Dropout + Dense(4, softmax)), and
trains block and head together on the maps. Each epoch draws one cached copy per training frame,
as :class:`lusfeat.models.head.SeverityHead` does, so augmentation survives caching.

As in Keras' transfer-learning guide, batch normalisation stays in inference mode (the block is
called with ``training=False``: its ImageNet statistics are kept, its scales and offsets train),
and the block learns at a lower rate than the freshly initialised head, so that the head's first,
random gradients do not wreck the pretrained filters.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from lusfeat.engines import padded_batches
from lusfeat.errors import LusfeatError
from lusfeat.models.base import check_scores, integer_seeds
from lusfeat.models.head import build_head_model, epoch_schedule
from lusfeat.scores import CLASSES, argmax_high, balanced_class_weights

FINITE_CHECK_FRAMES = 256  # frames per block when checking maps for NaN (a full check would copy GBs)


@dataclass(frozen=True)
class TapSpec:
    """An intermediate activation map of a backbone: the input of one named layer.

    Keras names the residual ``Add`` layers ``add_N`` by build order, so a tap is located by the
    explicitly named layer that consumes it, never by an ``add_N`` name.
    """

    name: str
    layer: str  # the tap is this layer's input tensor
    channels: int
    top: str  # what is retrained on top of it, for people


TAPS: dict[str, dict[str, TapSpec]] = {  # backbone -> tap name -> tap
    "xception": {tap.name: tap for tap in (
        TapSpec("middle", "block13_sepconv1_act", 728, "block13 + block14 (19x19x728 maps at 299 px)"),
        TapSpec("block13", "block14_sepconv1", 1024, "block14 (10x10x1024 maps at 299 px)"),
    )},
}


def get_tap(backbone: str, name: str) -> TapSpec:
    try:
        return TAPS.get(backbone, {})[name]
    except KeyError:
        known = ", ".join(TAPS.get(backbone, {})) or "none"
        raise LusfeatError(f"--tap {name!r}: {backbone} has no such tap; known taps of {backbone}: {known}") from None


def tap_tensor(base, tap: TapSpec):
    """The symbolic tensor of ``tap`` in a built ``keras.applications`` model: its layer's one input."""
    try:
        layer = base.get_layer(tap.layer)
    except ValueError:
        raise LusfeatError(f"tap {tap.name}: {base.name} has no layer {tap.layer} (another Keras version?)") from None
    tensor = layer.input
    if isinstance(tensor, (list, tuple)) or tensor.shape[-1] != tap.channels:
        raise LusfeatError(f"tap {tap.name}: the input of {tap.layer} is not one {tap.channels}-channel map")
    return tensor


def build_tap_extractor(spec, source, tap: str, input_size: int | None = None, precision: str = "float32"):
    """Frozen ``uint8 RGB image -> float32 activation map (h, w, c)`` at ``tap``, preprocessing inside.

    The same frozen base as :func:`lusfeat.backbones.build_feature_extractor`, cut at the tap: everything
    after it is what :func:`build_top_block` rebuilds for training.
    """
    import keras

    from lusfeat.backbones import checked_base

    point = get_tap(spec.name, tap)
    base, size = checked_base(spec, source, input_size, precision)
    trunk = keras.Model(base.input, tap_tensor(base, point), name=f"{spec.name}_to_{tap}")
    trunk.trainable = False
    inputs = keras.Input((size, size, 3), dtype="uint8", name="rgb")
    x = keras.layers.Lambda(lambda t: spec.preprocess()(keras.ops.cast(t, "float32")), name="preprocess")(inputs)
    x = trunk(x, training=False)
    outputs = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"), name="as_float32", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_{tap}_maps")


def build_top_block(spec, source, tap: str, input_size: int | None = None):
    """The part of the backbone after ``tap``, with its (ImageNet) weights: maps -> final unpooled activations.

    Built from the whole float32 model, so its layers hold exactly the weights the frozen
    extractor uses; the tap's map of an image, fed through it and average-pooled, gives that
    image's pooled feature.
    """
    import keras

    from lusfeat.backbones import checked_base

    point = get_tap(spec.name, tap)
    base, _ = checked_base(spec, source, input_size, "float32")
    return keras.Model(tap_tensor(base, point), base.output, name=f"{spec.name}_after_{tap}")


def maps_source(spec, source, tap: str, config, batch_size: int):
    """Stage one's feature source of the ``tap`` maps (TensorFlow; the file's map shape comes from the network)."""
    from lusfeat.embed import FeatureSource
    from lusfeat.engines import Embedder

    model = build_tap_extractor(spec, source, tap, config.input_size, config.precision)
    return FeatureSource(f"{spec.name}-{tap}", tuple(model.output_shape[1:]), lambda: Embedder(model, batch_size))


def as_map_copies(X) -> np.ndarray:
    """``X`` as ``(copies, n, h, w, c)`` in its own float dtype; a 4-D ``(n, h, w, c)`` array is one copy."""
    X = np.asarray(X)
    if X.dtype.kind != "f":
        X = X.astype(np.float32)
    if X.ndim == 4:
        X = X[np.newaxis]
    if X.ndim != 5 or X.shape[0] < 1:
        raise ValueError(f"X must be (n, h, w, c) or (copies, n, h, w, c) maps, got shape {X.shape}")
    for start in range(0, X.shape[1], FINITE_CHECK_FRAMES):
        if not np.isfinite(X[:, start:start + FINITE_CHECK_FRAMES]).all():
            raise ValueError("X contains NaN or infinite values")
    return X


def pooled_top_features(block, maps: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``(n, dim)`` float32: ``maps`` through ``block`` (inference mode), global-average pooled.

    With the untouched ImageNet block this is the backbone's pooled feature of each frame, as
    ``python -m lusfeat.extract`` stores it (up to the float16 rounding of the maps).
    """
    return _Forward(block, None, batch_size)(maps, features=True)


class _Forward:
    """Compiled inference over fixed-size batches (one trace): pooled features, or head probabilities."""

    def __init__(self, block, head, batch_size: int) -> None:
        import tensorflow as tf

        self.batch_size = batch_size
        self.dim = block.output_shape[-1]

        def pooled(maps):
            return tf.reduce_mean(block(tf.cast(maps, tf.float32), training=False), axis=[1, 2])

        def probabilities(maps):
            return head(pooled(maps), training=False)

        self._pooled = tf.function(pooled, autograph=False)
        self._probabilities = tf.function(probabilities, autograph=False) if head is not None else None

    def __call__(self, maps: np.ndarray, features: bool = False) -> np.ndarray:
        call = self._pooled if features else self._probabilities
        width = self.dim if features else len(CLASSES)
        out = [np.asarray(call(batch))[:n] for batch, n in padded_batches(maps, self.batch_size)]
        return np.concatenate(out) if out else np.empty((0, width), np.float32)


class TopBlockFineTuner(ClassifierMixin, BaseEstimator):
    """The backbone's block(s) after ``tap`` + average pooling + Dropout + Dense(4, softmax), trained on maps.

    ``X`` is ``(copies, n, h, w, c)`` cached maps of ``tap`` (copy 0 the original frame; a 4-D
    array is one copy), as ``lusfeat.store.load_maps`` returns them; ``y`` scores 0..3.
    ``weights`` is resolved as ``--weights`` of stage one (``imagenet`` looks in
    $LUSFEAT_WEIGHTS_DIR first) and must be the weights the maps were made with.

    Adam with ``learning_rate`` for the head (the paper's 1e-3) and ``block_learning_rate`` for
    the block (1e-4, ten times lower; fixed before any COVID-BLUES result was seen, not tuned),
    sparse cross-entropy, batch 32, 3 epochs, batch normalisation in inference mode.
    ``class_weight="balanced"`` weights each frame's loss as ``SeverityHead`` does.
    ``random_state`` (None or int) seeds the head's weights, the dropout masks, the frame order
    and the copy drawn per frame and epoch.

    Learned state: ``block_`` (the retrained Keras block), ``head_``, ``history_`` (loss and
    accuracy per epoch), ``classes_``, ``map_shape_``.
    """

    def __init__(self, *, backbone: str = "xception", tap: str = "middle", weights: str = "imagenet",
                 input_size: int | None = None, epochs: int = 3, batch_size: int = 32,
                 learning_rate: float = 1e-3, block_learning_rate: float = 1e-4, dropout: float = 0.5,
                 class_weight: str | None = None, random_state: int | None = None) -> None:
        self.backbone = backbone
        self.tap = tap
        self.weights = weights
        self.input_size = input_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.block_learning_rate = block_learning_rate
        self.dropout = dropout
        self.class_weight = class_weight
        self.random_state = random_state

    def build_block(self):
        """The ImageNet block after ``tap`` (a fresh Keras model, untrained here)."""
        from lusfeat.backbones import get_spec, resolve_weights

        spec = get_spec(self.backbone)
        return build_top_block(spec, resolve_weights(spec, self.weights), self.tap, self.input_size)

    def fit(self, X, y) -> TopBlockFineTuner:
        """Train block and head on maps ``X`` ``(copies, n, h, w, c)`` (or ``(n, h, w, c)``) and scores ``y``."""
        import keras

        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.block_learning_rate < 0:
            raise ValueError("epochs and batch_size must be >= 1, learning_rate > 0 and block_learning_rate >= 0")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        X = as_map_copies(X)
        copies, n = X.shape[:2]
        if n == 0:
            raise ValueError("no training frames")
        y = check_scores(y, n)
        rng, (layer_seed,) = integer_seeds(self.random_state, 1)
        block = self.build_block()
        if tuple(block.input_shape[1:]) != X.shape[2:]:
            raise ValueError(f"maps of shape {X.shape[2:]} do not fit the {self.backbone} block after tap "
                             f"{self.tap!r}, which takes {tuple(block.input_shape[1:])} (another tap or input size?)")
        block.trainable = True
        head = build_head_model(block.output_shape[-1], self.dropout, layer_seed)
        index, weight = epoch_schedule(n, copies, self.epochs, self.batch_size, rng)
        if self.class_weight == "balanced":
            weight = weight * balanced_class_weights(y).astype(np.float32)[y[index[:, :, 1]]]
        step = _train_step(block, head, keras.optimizers.Adam(learning_rate=self.block_learning_rate),
                           keras.optimizers.Adam(learning_rate=self.learning_rate))
        record = np.zeros((len(index), 2), np.float32)
        for position, (batch, mask) in enumerate(zip(index, weight, strict=True)):
            # The batch is gathered here, from float16 maps in memory: one batch of float32 at a time.
            maps = X[batch[:, 0], batch[:, 1]]
            record[position] = np.asarray(step(maps, y[batch[:, 1]], mask))
        record = record.reshape(self.epochs, -1, 2)
        batch_frames = (weight > 0).reshape(self.epochs, -1, self.batch_size).sum(axis=2)
        self.history_ = {
            "loss": [float(value) for value in (record[:, :, 0] * batch_frames).sum(axis=1) / n],
            "accuracy": [float(value) for value in record[:, :, 1].sum(axis=1) / n],
        }
        self.block_ = block
        self.head_ = head
        self.classes_ = CLASSES.copy()
        self.map_shape_ = tuple(X.shape[2:])
        self._forward = _Forward(block, head, self.batch_size)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """``(n, 4)`` probabilities of scores 0..3; of ``(copies, n, h, w, c)`` maps, copy 0 is used."""
        check_is_fitted(self)
        X = as_map_copies(X)[0]
        if X.shape[1:] != self.map_shape_:
            raise ValueError(f"maps of shape {X.shape[1:]}, the model was fitted on {self.map_shape_}")
        return self._forward(X).astype(np.float64)

    def predict(self, X) -> np.ndarray:
        return self.classes_[argmax_high(self.predict_proba(X))]

    def transform(self, X) -> np.ndarray:
        """``(n, dim)`` pooled features of copy 0 through the retrained block."""
        check_is_fitted(self)
        return pooled_top_features(self.block_, as_map_copies(X)[0], self.batch_size)


def _train_step(block, head, block_optimizer, head_optimizer):
    """One compiled step: maps -> block (BN inference) -> pool -> head (dropout on) -> masked loss, two Adams."""
    import keras
    import tensorflow as tf

    block_variables, head_variables = block.trainable_variables, head.trainable_variables
    block_optimizer.build(block_variables)
    head_optimizer.build(head_variables)

    @tf.function
    def step(maps, scores, mask):
        with tf.GradientTape() as tape:
            features = tf.reduce_mean(block(tf.cast(maps, tf.float32), training=False), axis=[1, 2])
            probabilities = head(features, training=True)
            losses = keras.losses.sparse_categorical_crossentropy(scores, probabilities)
            # mask: each frame's class weight (1 unless class_weight), 0 for padding; as SeverityHead.
            real = tf.cast(mask > 0, tf.float32)
            loss = tf.reduce_sum(losses * mask) / tf.reduce_sum(real)
        gradients = tape.gradient(loss, block_variables + head_variables)
        block_optimizer.apply(gradients[:len(block_variables)], block_variables)
        head_optimizer.apply(gradients[len(block_variables):], head_variables)
        predicted = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        correct = tf.cast(tf.equal(predicted, tf.cast(scores, tf.int32)), tf.float32)
        return tf.stack([loss, tf.reduce_sum(correct * real)])

    return step


def build_parser() -> argparse.ArgumentParser:
    from lusfeat.cli import add_frame_arguments

    parser = argparse.ArgumentParser(prog="python -m lusfeat.experiments.finetune",
                                     description="store a backbone's intermediate activation maps for fine-tuning")
    add_frame_arguments(parser)
    parser.add_argument("--backbone", default="xception", help="one backbone with taps (default: %(default)s)")
    parser.add_argument("--tap", default="middle", help="xception: middle = middle-flow output, 19x19x728 at 299 px; "
                        "block13 = block13 output, 10x10x1024 (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="as for lusfeat.extract")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="TensorFlow compute type")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored type (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--out", default="features", help="output folder of <backbone>-<tap>.h5 (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``OUT/<backbone>-<tap>.h5``: the maps of every frame and copy, by stage one's loop and :func:`maps_source`."""
    from lusfeat.augment import AugmentParams
    from lusfeat.backbones import get_spec, resolve_weights
    from lusfeat.cli import start
    from lusfeat.embed import extract_source, make_config, plan_frames
    from lusfeat.manifest import file_sha256, read_manifest

    args = build_parser().parse_args(argv)
    start()
    try:
        spec = get_spec(args.backbone)
        tap = get_tap(spec.name, args.tap)
        source = resolve_weights(spec, args.weights)
        frames = plan_frames(read_manifest(args.manifest, args.data_root, check_readable=False), args.frame_step)
        pooled = make_config(spec, source, input_size=None, dtype=args.dtype, augment_copies=args.augment_copies,
                             params=AugmentParams(), seed=args.seed, frame_step=args.frame_step,
                             manifest_sha256=file_sha256(args.manifest), precision=args.precision)
        config = dataclasses.replace(pooled, source=tap.name, pooling="none", feature_dim=tap.channels)
        feature_source = maps_source(spec, source, tap.name, config, args.batch_size)
        summary = extract_source(frames, config, Path(args.out) / f"{feature_source.name}.h5", feature_source, source,
                                 batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.no_progress)
        print(summary.line())
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
