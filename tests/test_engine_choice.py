"""The choice of engine and precision: the command line, $LUSFEAT_ENGINE, then the measured rule per CPU kind and backbones."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import REPO

from lusfeat import engines
from lusfeat.engine_choice import (
    FASTEST_FIRST,
    QWK_BOUND,
    QWK_MOVES,
    choose_engine,
    default_choice,
    qualifies,
)
from lusfeat.engines import CPU_KINDS, ENGINES, cpu_kind, native_bfloat16
from lusfeat.errors import LusfeatError

FLAGS = {"amx": "fpu avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8",
         "avx512_bf16": "fpu sse avx2 avx512f avx512_bf16 avx512_vnni",
         "avx2": "fpu sse avx2 fma"}


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """Set this CPU's flags: ``cpu("amx")``; $LUSFEAT_ENGINE unset so that the measured default decides."""
    monkeypatch.delenv("LUSFEAT_ENGINE", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(engines, "CPUINFO", cpuinfo)

    def set_kind(kind: str) -> None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {FLAGS[kind]}\n")
        assert cpu_kind()[0] == kind

    return set_kind


@pytest.fixture
def without_openvino(monkeypatch):
    absent = dataclasses.replace(ENGINES["openvino"], package="lusfeat_no_such_package")
    monkeypatch.setitem(ENGINES, "openvino", absent)


def test_the_command_line_wins_then_the_environment(monkeypatch):
    monkeypatch.delenv("LUSFEAT_ENGINE", raising=False)
    assert choose_engine(None, "bfloat16", ["xception"])[:2] == ("tensorflow", "bfloat16")  # --precision alone
    assert choose_engine("openvino", None, ["xception"])[:2] == ("openvino", "float32")
    engine, precision, why = choose_engine(None, None, ["xception"])
    assert (engine, precision) == default_choice(["xception"])[:2] and "the default for this CPU" in why
    assert cpu_kind()[1] in why
    monkeypatch.setenv("LUSFEAT_ENGINE", "openvino:int8")
    assert choose_engine(None, None, ["vgg16"]) == ("openvino", "int8", "LUSFEAT_ENGINE=openvino:int8")
    assert choose_engine("tensorflow", None, ["vgg16"])[:2] == ("tensorflow", "float32")  # the command line wins
    monkeypatch.setenv("LUSFEAT_ENGINE", "openvino")
    assert choose_engine(None, None, ["vgg16"])[:2] == ("openvino", "float32")
    monkeypatch.setenv("LUSFEAT_ENGINE", "onnx")
    with pytest.raises(LusfeatError, match="unknown engine 'onnx'"):
        choose_engine(None, None, ["xception"])
    monkeypatch.setenv("LUSFEAT_ENGINE", "tensorflow:fp8")
    with pytest.raises(LusfeatError, match="LUSFEAT_ENGINE=tensorflow:fp8: unknown precision 'fp8'"):
        choose_engine(None, None, ["xception"])


def test_the_rule_on_the_measured_rows():
    assert qualifies("avx2", "resnet50", "tensorflow", "float32")[0]  # float32's own features, measured or not
    ok, why = qualifies("avx512_bf16", "xception", "openvino", "bfloat16")
    assert ok and why == f"xception's QWKs moved +0.0024 at most, within {QWK_BOUND}"
    ok, why = qualifies("avx512_bf16", "vgg16", "openvino", "bfloat16")
    assert not ok and why == f"vgg16's QWKs moved +0.0112 at most, beyond {QWK_BOUND}"
    ok, why = qualifies("avx512_bf16", "xception", "openvino", "int8")  # within the bound, and still not a default
    assert max(map(abs, QWK_MOVES["avx512_bf16", "xception", "openvino", "int8"])) <= QWK_BOUND
    assert not ok and why.startswith("never a default")
    ok, why = qualifies("amx", "resnet50", "openvino", "bfloat16")
    assert not ok and why == "not measured for resnet50 on this kind of CPU"
    for kind, _, engine, precision in QWK_MOVES:
        assert (engine, precision) in FASTEST_FIRST[kind]
    every = {(engine, precision) for engine, spec in ENGINES.items() for precision in spec.precisions}
    for kind, order in FASTEST_FIRST.items():  # every engine and precision the kind runs, once
        refused = {("openvino", "bfloat16")} if kind == "avx2" else set()  # it would run float32 there
        assert sorted(order) == sorted(every - refused)


@pytest.mark.parametrize(("kind", "table"), [("avx512_bf16", "extract_throughput-20261207-180201.json"),
                                             ("avx2", "extract_throughput-20261203-134928.json")])
def test_the_speed_order_is_the_measured_one(kind, table):
    """FASTEST_FIRST is data: on each kind with a recorded engine table, Xception's bare rates in that order."""
    record = json.loads((REPO / "benchmarks" / "results" / table).read_text())
    rates = {tuple(name.split(":")): row["bare_images_per_second"]
             for name, row in record["backbones"]["xception"]["engines"].items()}
    assert list(FASTEST_FIRST[kind]) == sorted(rates, key=rates.get, reverse=True)


@pytest.mark.parametrize(("kind", "backbones", "chosen"), [
    ("amx", ["xception"], ("openvino", "bfloat16")),
    ("avx512_bf16", ["xception"], ("openvino", "bfloat16")),
    ("avx2", ["xception"], ("openvino", "float32")),
    # One extraction's backbones share one choice: VGG16's bfloat16 moved its QWKs beyond the bound.
    ("avx512_bf16", ["vgg16"], ("openvino", "float32")),
    ("avx512_bf16", ["xception", "vgg16"], ("openvino", "float32")),
    ("amx", ["xception", "vgg16"], ("openvino", "float32")),  # VGG16 not measured on AMX
    ("amx", ["resnet50"], ("openvino", "float32")),
])
def test_the_default_per_cpu_kind_and_backbones(cpu, kind, backbones, chosen):
    pytest.importorskip("openvino")
    cpu(kind)
    assert native_bfloat16()[0] == (kind != "avx2")
    engine, precision, why = default_choice(backbones)
    assert (engine, precision) == chosen
    assert why.startswith(f"{CPU_KINDS[kind][0].split(' (')[0]} ({cpu_kind()[1]}): ")
    assert f"{engine} {precision} is the fastest whose QWKs stay within {QWK_BOUND} of float32's" in why
    assert "faster: openvino int8 (never a default" in why
    if ("avx512_bf16", "vgg16") == (kind, backbones[-1]):
        assert "openvino bfloat16 (vgg16's QWKs moved +0.0112 at most, beyond 0.01)" in why


def test_without_openvino_the_fastest_installed_qualifying_engine(cpu, without_openvino):
    cpu("avx512_bf16")
    engine, precision, why = default_choice(["xception"])
    assert (engine, precision) == ("tensorflow", "bfloat16")  # measured within the bound on this kind
    assert "openvino bfloat16 (engine 'openvino' needs the lusfeat_no_such_package package" in why
    cpu("amx")  # TensorFlow bfloat16 not measured there
    engine, precision, why = default_choice(["xception"])
    assert (engine, precision) == ("tensorflow", "float32") and 'pip install "lusfeat[openvino]"' in why
    cpu("avx2")
    assert default_choice(["vgg16"])[:2] == ("tensorflow", "float32")
    assert "no native bfloat16" in choose_engine(None, "bfloat16", ["xception"])[2]
