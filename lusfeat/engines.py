"""Inference engines of stage one: a frozen backbone as an ``uint8 images -> pooled features`` call.

A small registry like :mod:`lusfeat.backbones`: one :class:`EngineSpec` per engine, each with the
precisions it runs, how to tell its version, and how to build the call.

- ``tensorflow`` (always there): the Keras feature extractor of :mod:`lusfeat.backbones` as a
  compiled ``tf.function`` on fixed-size batches (:class:`Embedder`); ``float32`` or mixed
  ``bfloat16``.
- ``openvino`` (``pip install "lusfeat[openvino]"``): the *same* Keras model, converted in process
  with ``openvino.convert_model`` and cached on disk (:func:`cache_root`, keyed by backbone,
  weights sha256, input size, precision and OpenVINO version); ``float32``, ``bfloat16`` (an
  inference-precision hint, refused on CPUs that would silently run float32) or ``int8``
  (post-training quantisation with NNCF, calibrated on real frames of the manifest being
  extracted: :class:`Calibration`).

The Keras backbone and its weights stay the single source of truth: an engine never loads
weights of its own. Which engine and precision ``lusfeat.extract`` uses by default is decided by
:mod:`lusfeat.engine_choice` from measurements (``docs/engines.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lusfeat.backbones import BackboneSpec, WeightsSource, build_feature_extractor
from lusfeat.errors import LusfeatError

log = logging.getLogger("lusfeat.engines")

CACHE_ENV = "LUSFEAT_CACHE_DIR"
CPUINFO = Path("/proc/cpuinfo")
ALL_PRECISIONS = ("float32", "bfloat16", "int8")
DEFAULT_ENGINE, DEFAULT_PRECISION = "tensorflow", "float32"
CALIBRATION_FRAMES = 300  # int8: at most this many real frames of the manifest calibrate the quantisation
CONVERTER_REVISION = 1  # bump when the conversion below changes, so that cached models are rebuilt
# NNCF's MIXED preset (symmetric weights, asymmetric activations) with fast bias correction: on Xception
# cosine to float32 0.987 mean / 0.976 min against 0.961 / 0.915 with the PERFORMANCE preset (64
# calibration frames, 32 others; full bias correction: 0.954 / 0.924 at 4x the time; docs/engines.md).
INT8_RECIPE = "mixed"

Embed = Callable[[np.ndarray], np.ndarray]  # uint8 (n, size, size, 3) -> float32 (n, dim)


@dataclass(frozen=True)
class Calibration:
    """The frames an int8 model is calibrated on: ``key`` names them (recorded in the feature file),
    ``images()`` decodes them (``None`` where they cannot be decoded, e.g. in ``lusfeat.predict``:
    the quantised model must then come from the cache)."""

    key: str
    images: Callable[[], np.ndarray] | None = None


@dataclass(frozen=True)
class EngineSpec:
    name: str
    precisions: tuple[str, ...]
    package: str  # the distribution that must be installed
    extra: str  # pip install "lusfeat[<extra>]" installs it; "" for a core dependency
    build: Callable[..., Embed]  # (spec, source, input_size, precision, batch_size, calibration) -> Embed
    version: Callable[[], str]

    def missing(self) -> str:
        """Why the engine cannot run here ("" when it can)."""
        from importlib.util import find_spec

        if find_spec(self.package) is None:
            return (f"engine {self.name!r} needs the {self.package} package, which is not installed: "
                    f'pip install "lusfeat[{self.extra}]"')
        return ""


def _distribution_version(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def padded_batches(images: np.ndarray, batch_size: int):
    """``(batch, n)`` per ``batch_size`` slice of ``images``, the last one zero-padded to full size (``n`` real
    rows): one input shape, so one trace or one compiled plan."""
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        yield batch, n


# --------------------------------------------------------------------------- tensorflow


class Embedder:
    """A compiled ``uint8 images -> features`` call on fixed-size batches (no retracing)."""

    def __init__(self, model, batch_size: int) -> None:
        import tensorflow as tf

        self.batch_size = batch_size
        self.model = model

        def forward(images):
            return model(images, training=False)

        # A compiled call: 1.2-1.5x faster than model.predict on this CPU (docs/benchmarks.md).
        self._call = tf.function(forward, autograph=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = [np.asarray(self._call(batch))[:n] for batch, n in padded_batches(images, self.batch_size)]
        return np.concatenate(out) if out else np.empty((0, self.model.output_shape[-1]), np.float32)


def _build_tensorflow(spec: BackboneSpec, source: WeightsSource, input_size: int, precision: str, batch_size: int,
                      calibration: Calibration | None = None) -> Embed:
    return Embedder(build_feature_extractor(spec, source, input_size, precision), batch_size)


# --------------------------------------------------------------------------- openvino


def cache_root() -> Path:
    """``$LUSFEAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lusfeat``, else ``~/.cache/lusfeat``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lusfeat"


CPU_KINDS = {  # kind: what it is, the CPU flag that shows it (first match wins, in this order)
    "amx": ("AMX (amx_bf16: bfloat16 and int8 tile units, e.g. Xeon Sapphire Rapids and later)", "amx_bf16"),
    "avx512_bf16": ("AVX-512 BF16 without AMX (e.g. AMD EPYC Zen 4, Xeon Cooper Lake)", "avx512_bf16"),
    "avx2": ("no native bfloat16 (AVX2 or older)", ""),
}


def _cpu_flags() -> set[str] | None:
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_kind() -> tuple[str, str]:
    """This CPU's kind (a key of :data:`CPU_KINDS`: ``amx``, ``avx512_bf16`` or ``avx2``) and the evidence."""
    flags = _cpu_flags()
    if flags is not None:
        for kind, (_, flag) in CPU_KINDS.items():
            if flag and flag in flags:
                return kind, f"CPU flag {flag}"
        return "avx2", "no avx512_bf16/amx_bf16 CPU flag"
    try:  # not Linux: ask OpenVINO, if installed (it does not tell AMX apart)
        import openvino as ov

        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return ("avx512_bf16" if "BF16" in capabilities else "avx2",
                f"OpenVINO CPU capabilities {', '.join(capabilities)}")
    except Exception:  # noqa: BLE001 - no OpenVINO, or no answer: assume not
        return "avx2", "CPU flags unknown"


def native_bfloat16() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), and the evidence."""
    kind, evidence = cpu_kind()
    return kind != "avx2", evidence


def _openvino_version() -> str:
    return _distribution_version("openvino")


def _openvino_int8_version() -> str:
    return f"{_openvino_version()}+nncf{_distribution_version('nncf')}+{INT8_RECIPE}"


def _ov_precision(precision: str) -> str:
    return {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}[precision]


def cache_key(spec: BackboneSpec, source: WeightsSource, input_size: int, precision: str,
              calibration: Calibration | None) -> dict[str, Any] | None:
    """What the cached OpenVINO model depends on; ``None`` when it must not be cached (random weights)."""
    if source.identity == "none":
        return None
    ir_precision = "int8" if precision == "int8" else "float32"  # bfloat16 is a compile-time hint on the float32 model
    return {"backbone": spec.name, "weights": source.identity, "input_size": input_size, "precision": ir_precision,
            "calibration": calibration.key if precision == "int8" and calibration else "",
            "openvino": _openvino_version(), "nncf": _openvino_int8_version() if precision == "int8" else "",
            "converter": CONVERTER_REVISION}


def cache_folder(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "openvino" / f"{key['backbone']}-{key['input_size']}px-{key['precision']}-{digest}"


def _read_cached(folder: Path, key: dict[str, Any]):
    import openvino as ov

    try:
        if json.loads((folder / "key.json").read_text()) != key:
            return None
        return ov.Core().read_model(folder / "model.xml")
    except (OSError, ValueError, RuntimeError):
        return None


def _write_cached(folder: Path, key: dict[str, Any], model) -> None:
    """Save ``model`` as the cache entry ``folder``: whole or not at all. Written in a scratch folder, each file
    flushed to the disk, ``key.json`` (what :func:`_read_cached` looks for) last, then renamed into place; a
    failure (full disk, read-only cache) leaves no entry and costs a conversion per run, nothing more."""
    import openvino as ov

    from lusfeat.files import fsync_file, fsync_folder

    scratch = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        ov.save_model(model, scratch / "model.xml", compress_to_fp16=False)
        for path in scratch.iterdir():
            fsync_file(path)
        (scratch / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))
        fsync_file(scratch / "key.json")
        fsync_folder(scratch)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(scratch, folder)
        fsync_folder(folder.parent)
    except (OSError, RuntimeError) as error:  # OpenVINO reports a failed save as a RuntimeError
        shutil.rmtree(scratch, ignore_errors=True)
        cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        log.warning("could not cache the OpenVINO model in %s (%s); it is converted again next time; free space "
                    "there or set %s to a writable folder", folder, cause, CACHE_ENV)


def convert_to_openvino(spec: BackboneSpec, source: WeightsSource, input_size: int):
    """The Keras feature extractor (float32, preprocessing inside) as an OpenVINO model, dynamic batch."""
    import warnings

    import openvino as ov

    model = build_feature_extractor(spec, source, input_size, "float32")
    with warnings.catch_warnings():  # Keras' "Expected: rgb, Received: inputs=..." while the converter traces
        warnings.simplefilter("ignore", UserWarning)
        return ov.convert_model(model)


def quantize_int8(model, images: np.ndarray):
    """NNCF post-training quantisation of ``model`` calibrated on ``images`` (uint8, one at a time, in order)."""
    import nncf

    if len(images) == 0:
        raise LusfeatError("int8 calibration needs at least one frame; the manifest gave none")
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    return nncf.quantize(model, dataset, subset_size=len(images), preset=nncf.QuantizationPreset.MIXED,
                         fast_bias_correction=True)


def openvino_model(spec: BackboneSpec, source: WeightsSource, input_size: int, precision: str,
                   calibration: Calibration | None):
    """The (cached) OpenVINO model of one backbone, weights, size and precision."""
    key = cache_key(spec, source, input_size, precision, calibration)
    folder = cache_folder(key) if key else None
    if folder is not None and (cached := _read_cached(folder, key)) is not None:
        log.info("%s: OpenVINO %s model from the cache %s", spec.name, key["precision"], folder)
        return cached
    if precision == "int8" and (calibration is None or calibration.images is None):
        raise LusfeatError(
            f"{spec.name}: the int8 model calibrated on frames {calibration.key if calibration else '?'} is not in the "
            f"cache {cache_root() / 'openvino'}; it is made by python -m lusfeat.extract --engine openvino --precision "
            f"int8 on the manifest the features came from (rerun it on this machine, or copy that cache folder here, "
            f"or set {CACHE_ENV})")
    float_key = cache_key(spec, source, input_size, "float32", None)
    model = _read_cached(cache_folder(float_key), float_key) if float_key and precision == "int8" else None
    if model is None:
        log.info("%s: converting the Keras model to OpenVINO (%s)", spec.name,
                 f"once, cached in {cache_folder(float_key)}" if float_key else "random weights: not cached")
        model = convert_to_openvino(spec, source, input_size)
        if float_key:
            _write_cached(cache_folder(float_key), float_key, model)
    if precision == "int8":
        images = calibration.images()
        log.info("%s: int8 quantisation (NNCF) calibrated on %d frames", spec.name, len(images))
        model = quantize_int8(model, images)
        if folder is not None:
            _write_cached(folder, key, model)
    return model


class OpenVinoEmbed:
    """A compiled OpenVINO model on fixed-size batches: one infer request, batches padded to ``batch_size``."""

    def __init__(self, compiled, batch_size: int, feature_dim: int) -> None:
        self.batch_size = batch_size
        self.feature_dim = feature_dim
        self.compiled = compiled
        self._request = compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = np.empty((len(images), self.feature_dim), np.float32)
        start = 0
        for batch, n in padded_batches(images, self.batch_size):
            self._request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
            out[start:start + n] = self._request.get_output_tensor(0).data[:n]
            start += n
        return out


def _build_openvino(spec: BackboneSpec, source: WeightsSource, input_size: int, precision: str, batch_size: int,
                    calibration: Calibration | None = None) -> Embed:
    model = openvino_model(spec, source, input_size, precision, calibration)
    model.reshape([batch_size, input_size, input_size, 3])  # static shapes: one plan, as the TF engine's one trace
    compiled = compile_openvino(model, precision)
    check_inference_precision(spec.name, precision, compiled.get_property("INFERENCE_PRECISION_HINT"))
    return OpenVinoEmbed(compiled, batch_size, spec.feature_dim)


def compile_openvino(model, precision: str):
    """``model`` compiled for this CPU with the inference-precision hint of ``precision``."""
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                  "INFERENCE_PRECISION_HINT": _ov_precision(precision)})


def check_inference_precision(name: str, precision: str, reported) -> None:
    """Refuse bfloat16 where OpenVINO reports it will compute in another precision (a CPU without native bfloat16
    silently falls back to float32). ``reported`` is what the compiled model's ``INFERENCE_PRECISION_HINT`` says:
    an ``openvino.Type`` (``<Type: 'bfloat16'>``), compared as a type, never by its text."""
    import openvino as ov

    if precision != "bfloat16":
        return
    if isinstance(reported, ov.Type):
        runs_bfloat16 = reported == ov.Type.bf16
    else:  # a string, as some OpenVINO versions answer: its element-type names
        runs_bfloat16 = str(reported).strip().lower() in {"bf16", "bfloat16"}
    if not runs_bfloat16:
        evidence = native_bfloat16()[1]
        raise LusfeatError(f"{name}: OpenVINO runs {reported}, not bfloat16, on this CPU ({evidence}): its features "
                           "would be float32 ones labelled bfloat16. Use --precision float32 here, or a CPU with "
                           "AVX-512 BF16 or AMX")


# --------------------------------------------------------------------------- the registry


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("tensorflow", ("float32", "bfloat16"), "tensorflow", "", _build_tensorflow,
                   lambda: _distribution_version("tensorflow", "tensorflow-cpu")),
        EngineSpec("openvino", ("float32", "bfloat16", "int8"), "openvino", "openvino", _build_openvino,
                   _openvino_version),
    )
}


def get_engine(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise LusfeatError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None


def check_engine(name: str, precision: str) -> EngineSpec:
    """The engine, after checking that it is installed and runs ``precision``."""
    engine = get_engine(name)
    if precision not in engine.precisions:
        others = [other.name for other in ENGINES.values() if precision in other.precisions]
        hint = f"; use --engine {others[0]}" if others else ""
        raise LusfeatError(f"engine {name!r} does not run {precision!r} (it runs {', '.join(engine.precisions)}){hint}")
    if reason := engine.missing():
        raise LusfeatError(reason)
    return engine


def engine_version(name: str, precision: str) -> str:
    """The version recorded in a feature file (OpenVINO int8 adds NNCF's)."""
    return _openvino_int8_version() if name == "openvino" and precision == "int8" else get_engine(name).version()


def build_embed(engine: str, spec: BackboneSpec, source: WeightsSource, input_size: int, precision: str,
                batch_size: int, calibration: Calibration | None = None) -> Embed:
    """The ``uint8 images -> float32 features`` call of ``engine`` at ``precision``."""
    return check_engine(engine, precision).build(spec, source, input_size, precision, batch_size, calibration)
