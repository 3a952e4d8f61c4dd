"""A small registry of frozen ImageNet backbones: name -> constructor, preprocessing, sizes, weights.

Adding a backbone is one entry in :data:`BACKBONES`. Weights come from, in order:
``weights="none"`` (random initialisation, recorded as such), an explicit file, a folder
(``weights=DIR`` or $LUSFEAT_WEIGHTS_DIR) holding the spec's ``weights_file``, or Keras'
own ``"imagenet"`` download (cached under ~/.keras/models).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lusfeat.errors import LusfeatError

WEIGHTS_DIR_ENV = "LUSFEAT_WEIGHTS_DIR"


@dataclass(frozen=True)
class BackboneSpec:
    """What lusfeat needs to know of one ``keras.applications`` family."""

    name: str
    application: str  # keras.applications constructor, e.g. "Xception"
    module: str  # keras.applications submodule holding preprocess_input
    input_size: int  # native input size in pixels
    feature_dim: int  # channels after global average pooling
    weights_file: str  # file name looked up in a weights folder
    min_input_size: int = 32
    fixed_input_size: bool = False  # the ImageNet weights only exist at the native size
    kwargs: dict[str, Any] = field(default_factory=dict)

    def constructor(self) -> Callable[..., Any]:
        import keras

        return getattr(keras.applications, self.application)

    def preprocess(self) -> Callable[..., Any]:
        import keras

        return getattr(keras.applications, self.module).preprocess_input


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("xception", "Xception", "xception", 299, 2048, "xception_imagenet_notop.weights.h5", 71),
        BackboneSpec("resnet50", "ResNet50", "resnet50", 224, 2048, "resnet50_imagenet_notop.weights.h5", 32),
        BackboneSpec("vgg16", "VGG16", "vgg16", 224, 512, "vgg16_imagenet_notop.weights.h5", 32),
        BackboneSpec(
            "mobilenet", "MobileNet", "mobilenet", 224, 256, "mobilenet_0.25_224_imagenet_notop.h5", 32,
            fixed_input_size=True, kwargs={"alpha": 0.25},
        ),
    )
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise LusfeatError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from, and their identity as recorded in the feature file."""

    keras_arg: str | None  # what the Keras constructor takes: "imagenet", a file path, or None
    identity: str  # "imagenet", "none" or the file's sha256
    description: str  # for people: "imagenet (Keras download)", a path, "none (random)"


def resolve_weights(spec: BackboneSpec, weights: str = "imagenet") -> WeightsSource:
    """Turn ``--weights`` into a concrete source, or raise naming what is missing and how to fix it."""
    from lusfeat.manifest import file_sha256

    if weights in ("none", "random"):
        return WeightsSource(None, "none", "none (random initialisation)")
    candidate: Path | None = None
    if weights == "imagenet":
        folder = os.environ.get(WEIGHTS_DIR_ENV)
        if folder and (Path(folder) / spec.weights_file).is_file():
            candidate = Path(folder) / spec.weights_file
        else:
            return WeightsSource("imagenet", "imagenet", "imagenet (Keras download and cache)")
    else:
        path = Path(weights)
        if path.is_dir():
            candidate = path / spec.weights_file
            if not candidate.is_file():
                raise LusfeatError(
                    f"{spec.name}: weights folder {path} has no {spec.weights_file}; put the ImageNet "
                    f"weights there under that name, or pass --weights FILE / imagenet / none"
                )
        elif path.is_file():
            candidate = path
        else:
            raise LusfeatError(
                f"{spec.name}: weights file {path} not found; pass an existing file or folder, "
                "'imagenet' (downloads) or 'none' (random initialisation)"
            )
    return WeightsSource(str(candidate), file_sha256(candidate), str(candidate))


RANDOM_INIT_SEED = 0  # --weights none: the same random network every build


def _load_base(spec: BackboneSpec, source: WeightsSource, input_size: int):
    constructor = spec.constructor()
    shape = (input_size, input_size, 3)
    if source.keras_arg is None:
        import keras

        # Keras' initialisers are unseeded: without this every build of a random backbone would be
        # another network, and predict could never recompute the features a model was trained on.
        keras.utils.set_random_seed(RANDOM_INIT_SEED)
    try:
        return constructor(include_top=False, weights=source.keras_arg, input_shape=shape, **spec.kwargs)
    except ValueError as error:
        if source.keras_arg not in (None, "imagenet"):
            raise LusfeatError(f"{spec.name}: {source.keras_arg} does not fit {spec.application} ({error})") from error
        raise LusfeatError(f"{spec.name}: cannot build at input size {input_size} ({error})") from error
    except Exception as error:  # the download: URLError, HTTPError, socket errors, Keras' own wrapping
        if source.keras_arg == "imagenet":
            raise LusfeatError(
                f"{spec.name}: could not download Keras' ImageNet weights ({type(error).__name__}: {error}). "
                f"Without internet, pass --weights FILE, or put {spec.weights_file} in a folder and set "
                f"{WEIGHTS_DIR_ENV} to it"
            ) from error
        raise


def fetch_weights(spec: BackboneSpec, source: WeightsSource, input_size: int | None = None) -> None:
    """Make sure Keras' ImageNet download is cached now, so that a failure shows before hours of work."""
    if source.keras_arg == "imagenet":
        import keras

        _load_base(spec, source, input_size or spec.input_size)
        keras.backend.clear_session()


PRECISIONS = ("float32", "bfloat16")


def checked_base(spec: BackboneSpec, source: WeightsSource, input_size: int | None, precision: str):
    """``(keras base, input size)`` after checking size and precision; the base built under ``precision``
    (also what the experiments cut their own networks from)."""
    import keras

    if precision not in PRECISIONS:
        raise LusfeatError(f"precision {precision!r} unknown; choose from {', '.join(PRECISIONS)}")
    size = input_size or spec.input_size
    if size < spec.min_input_size:
        raise LusfeatError(f"{spec.name}: input size {size} is below its minimum {spec.min_input_size}")
    if spec.fixed_input_size and size != spec.input_size and source.keras_arg is not None:
        raise LusfeatError(f"{spec.name}: its ImageNet weights exist only at {spec.input_size} px, not {size}")
    # Layers keep the dtype policy they were built under, so the global policy is set only here.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        return _load_base(spec, source, size), size
    finally:
        keras.config.set_dtype_policy(previous)


def build_feature_extractor(spec: BackboneSpec, source: WeightsSource, input_size: int | None = None,
                            precision: str = "float32"):
    """Frozen ``uint8 RGB image -> pooled float32 feature`` Keras model, preprocessing inside.

    Functional API as in Keras' transfer-learning guide: the base runs with ``training=False``
    so batch-norm layers use their ImageNet statistics. ``precision="bfloat16"`` computes the
    base in mixed bfloat16 (float32 weights), much faster on CPUs with AVX-512 BF16.
    """
    import keras

    base, size = checked_base(spec, source, input_size, precision)
    base.trainable = False
    inputs = keras.Input((size, size, 3), dtype="uint8", name="rgb")
    x = keras.layers.Lambda(lambda t: spec.preprocess()(keras.ops.cast(t, "float32")), name="preprocess")(inputs)
    x = base(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_features")


def build_map_extractor(spec: BackboneSpec, source: WeightsSource, input_size: int | None = None):
    """Frozen ``uint8 RGB image -> float32 last convolutional maps (h, w, feature_dim)``, preprocessing inside.

    :func:`build_feature_extractor` without its global average pooling: the average of these maps
    over ``h, w`` is the pooled feature (float32 only; heat maps, ``lusfeat.heatmaps``).
    """
    import keras

    base, size = checked_base(spec, source, input_size, "float32")
    base.trainable = False
    inputs = keras.Input((size, size, 3), dtype="uint8", name="rgb")
    x = keras.layers.Lambda(lambda t: spec.preprocess()(keras.ops.cast(t, "float32")), name="preprocess")(inputs)
    outputs = base(x, training=False)
    return keras.Model(inputs, outputs, name=f"{spec.name}_maps")
