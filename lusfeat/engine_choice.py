"""Which inference engine and precision stage one uses when the command line does not say: the measured rule.

:mod:`lusfeat.engines` runs engines; this module chooses one. ``--engine`` / ``--precision`` win, then
``$LUSFEAT_ENGINE`` (one setting for every machine of a cluster), then :func:`default_choice`: for this
CPU's kind (:func:`lusfeat.engines.cpu_kind`) and the backbones being extracted, the fastest engine and
precision (:data:`FASTEST_FIRST`, from the engine tables of ``docs/engines.md``) that **qualifies** for
every one of those backbones. The rule, the same for every row:

- float32 in either engine qualifies: it computes float32's own features (equal QWKs to 4 decimals);
- bfloat16 qualifies for a backbone on a CPU kind where it was measured there (:data:`QWK_MOVES`: all 63
  patients of COVID-BLUES, frame step 10, seeds 0-2, the same folds) and each of its four QWK means (paper
  head and default model, frame and video level) stays within :data:`QWK_BOUND` of float32's, either way;
  a backbone not measured on that kind does not qualify;
- int8 is never a default, whatever its QWKs (:data:`NOT_A_DEFAULT`): a model fitted on int8 features
  predicts on another machine only with the frames that calibrated its quantisation.

All the backbones of one extraction share one choice: ``lusfeat.fit`` compares and combines them only
when they come from one engine at one precision.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lusfeat.engines import (
    ALL_PRECISIONS,
    CPU_KINDS,
    DEFAULT_ENGINE,
    DEFAULT_PRECISION,
    cpu_kind,
    get_engine,
    native_bfloat16,
)
from lusfeat.errors import LusfeatError

ENGINE_ENV = "LUSFEAT_ENGINE"  # ENGINE[:PRECISION]: the default for every command line that gives neither
QWK_BOUND = 0.01

# Measured QWK moves against float32's features: (paper head frame, paper head video, default model frame,
# default model video), means over seeds 0-2 (docs/engines.md, "Accuracy per engine and precision").
QWK_MOVES: dict[tuple[str, str, str, str], tuple[float, float, float, float]] = {
    # (CPU kind, backbone, engine, precision)
    ("amx", "xception", "openvino", "bfloat16"): (0.000, 0.007, 0.007, 0.008),  # issue 22, 3 decimals
    ("avx512_bf16", "xception", "openvino", "bfloat16"): (-0.0005, 0.0024, -0.0001, -0.0012),
    ("avx512_bf16", "xception", "tensorflow", "bfloat16"): (-0.0022, -0.0094, -0.0020, -0.0000),
    ("avx512_bf16", "xception", "openvino", "int8"): (-0.0074, -0.0075, -0.0059, -0.0030),
    ("avx512_bf16", "vgg16", "openvino", "bfloat16"): (-0.0004, 0.0022, 0.0105, 0.0112),
    ("avx512_bf16", "vgg16", "openvino", "int8"): (-0.0057, 0.0055, 0.0131, 0.0135),
    ("avx2", "xception", "openvino", "int8"): (-0.0100, -0.0045, 0.0129, 0.0144),
}

# Per CPU kind, every engine and precision, fastest first (Xception's engine tables, one run each:
# AMX issue 22; AVX-512 BF16 benchmarks/results/extract_throughput-20261207-180201.json; AVX2
# extract_throughput-20261203-134928.json, where bfloat16 is emulated).
FASTEST_FIRST: dict[str, tuple[tuple[str, str], ...]] = {
    "amx": (("openvino", "int8"), ("openvino", "bfloat16"), ("tensorflow", "bfloat16"), ("openvino", "float32"),
            ("tensorflow", "float32")),
    "avx512_bf16": (("openvino", "int8"), ("openvino", "bfloat16"), ("tensorflow", "bfloat16"),
                    ("openvino", "float32"), ("tensorflow", "float32")),
    "avx2": (("openvino", "int8"), ("openvino", "float32"), ("tensorflow", "float32"), ("tensorflow", "bfloat16")),
}

NOT_A_DEFAULT = {
    "int8": "never a default: a model of int8 features predicts on another machine only with the frames that "
            "calibrated it",
}


def qualifies(kind: str, backbone: str, engine: str, precision: str) -> tuple[bool, str]:
    """Whether ``engine`` ``precision`` may be the default for ``backbone`` on CPUs of ``kind``, and why (not)."""
    if precision == "float32":
        return True, "float32's own features"
    if precision in NOT_A_DEFAULT:
        return False, NOT_A_DEFAULT[precision]
    moves = QWK_MOVES.get((kind, backbone, engine, precision))
    if moves is None:
        return False, f"not measured for {backbone} on this kind of CPU"
    largest = max(moves, key=abs)
    verdict = "within" if abs(largest) <= QWK_BOUND else "beyond"
    return abs(largest) <= QWK_BOUND, f"{backbone}'s QWKs moved {largest:+.4f} at most, {verdict} {QWK_BOUND}"


def default_choice(backbones: Sequence[str]) -> tuple[str, str, str]:
    """``(engine, precision, why)``: the fastest installed engine and precision qualifying for every one of
    ``backbones`` on this CPU's kind; ``why`` names the kind, the choice's evidence and what faster was passed over."""
    kind, evidence = cpu_kind()
    passed_over = []
    for engine, precision in FASTEST_FIRST[kind]:
        verdicts = [qualifies(kind, backbone, engine, precision) for backbone in backbones]
        failed = [reason for ok, reason in verdicts if not ok]
        if failed:
            passed_over.append(f"{engine} {precision} ({'; '.join(dict.fromkeys(failed))})")
            continue
        if missing := get_engine(engine).missing():
            passed_over.append(f"{engine} {precision} ({missing})")
            continue
        reasons = "; ".join(dict.fromkeys(reason for _, reason in verdicts))
        why = (f"{CPU_KINDS[kind][0].split(' (')[0]} ({evidence}): {engine} {precision} is the fastest whose QWKs stay "
               f"within {QWK_BOUND} of float32's for {', '.join(backbones)} ({reasons})")
        if passed_over:
            why += "; faster: " + ", ".join(passed_over)
        return engine, precision, why
    raise AssertionError("float32 always qualifies and TensorFlow is always installed")


def environment_choice() -> tuple[str, str, str] | None:
    """``$LUSFEAT_ENGINE`` (``ENGINE`` or ``ENGINE:PRECISION``) as ``(engine, precision, why)``; ``None`` if unset.

    One setting for every machine of a site or cluster, so that shards extracted on CPUs of different
    kinds come from one engine and precision (and so that a test suite does not depend on the CPU).
    """
    value = os.environ.get(ENGINE_ENV, "").strip()
    if not value:
        return None
    engine, _, precision = value.partition(":")
    get_engine(engine)
    precision = precision or DEFAULT_PRECISION
    if precision not in ALL_PRECISIONS:
        raise LusfeatError(f"{ENGINE_ENV}={value}: unknown precision {precision!r}; known: {', '.join(ALL_PRECISIONS)}")
    return engine, precision, f"{ENGINE_ENV}={value}"


def choose_engine(engine: str | None, precision: str | None, backbones: Sequence[str]) -> tuple[str, str, str]:
    """``(engine, precision, why)`` from the command line's ``--engine`` / ``--precision`` (``None``: not given),
    else ``$LUSFEAT_ENGINE``, else the measured default for this CPU and these ``backbones``."""
    if engine is None and precision is None:
        if chosen := environment_choice():
            return chosen
        engine, precision, why = default_choice(backbones)
        return engine, precision, f"the default for this CPU: {why}; see docs/engines.md"
    engine = engine or DEFAULT_ENGINE
    precision = precision or DEFAULT_PRECISION
    why = "as asked"
    if precision == "bfloat16" and not (native := native_bfloat16())[0]:
        why += f"; this CPU has no native bfloat16 ({native[1]}): expect it slower than float32"
    return engine, precision, why
