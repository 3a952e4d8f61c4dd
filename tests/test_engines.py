"""Inference engines: the registry, parity with TensorFlow on real frames, the engine recorded in
feature files and model folders, mixing refused, int8 calibration deterministic."""

from __future__ import annotations

import dataclasses
import json
import shutil
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lusfeat import engines
from lusfeat.backbones import get_spec, resolve_weights
from lusfeat.engines import (
    ENGINES,
    Calibration,
    build_embed,
    check_engine,
    get_engine,
    native_bfloat16,
)
from lusfeat.errors import LusfeatError
from lusfeat.frames import read_frames
from lusfeat.store import ExtractionConfig, FeatureWriter, read_config

VIDEO = "COVID-BLUES/lus_videos/patient_10_L1.mp4"


@pytest.fixture
def openvino(tmp_path, monkeypatch):
    """OpenVINO installed (else skip), with the converted-model cache in a fresh folder."""
    if find_spec("openvino") is None:
        pytest.skip('OpenVINO is not installed (pip install "lusfeat[openvino]")')
    monkeypatch.setenv("LUSFEAT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def nncf(openvino):
    if find_spec("nncf") is None:
        pytest.skip('NNCF is not installed (pip install "lusfeat[openvino]")')
    return openvino


def _relative_error(features: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(features - reference).max() / np.abs(reference).max())


# --------------------------------------------------------------------------- registry and choice (no engine needed)


def test_registry_of_engines(monkeypatch):
    assert set(ENGINES) == {"tensorflow", "openvino"}
    assert ENGINES["openvino"].precisions == ("float32", "bfloat16", "int8")
    with pytest.raises(LusfeatError, match="engine 'tensorflow' does not run 'int8'.*use --engine openvino"):
        check_engine("tensorflow", "int8")
    with pytest.raises(LusfeatError, match="unknown engine 'onnx'; known: tensorflow, openvino"):
        get_engine("onnx")


def test_a_missing_engine_names_the_extra_to_install(monkeypatch):
    absent = dataclasses.replace(ENGINES["openvino"], package="lusfeat_no_such_package")
    monkeypatch.setitem(ENGINES, "openvino", absent)
    with pytest.raises(LusfeatError, match=r'needs the lusfeat_no_such_package package.*pip install "lusfeat\[openvino\]"'):
        check_engine("openvino", "float32")


def test_extract_refuses_an_engine_that_cannot_run_the_request(tmp_path, capsys):
    from lusfeat.extract import main

    missing = str(tmp_path / "none.csv")
    assert main(["--manifest", missing, "--precision", "int8"]) == 1
    assert "engine 'tensorflow' does not run 'int8'" in capsys.readouterr().err


# --------------------------------------------------------------------------- recorded and refused (no engine needed)


def _config(**changes) -> ExtractionConfig:
    values = dict(backbone="mobilenet", weights="none", input_size=224, feature_dim=4, dtype="float32", copies=1,
                  aug_rotation=10.0, aug_shift=0.1, aug_zoom=0.1, aug_flip=True, seed=0, frame_step=1,
                  manifest_sha256="m", engine="tensorflow", engine_version="2.21.0")
    values.update(changes)
    return ExtractionConfig(**values)


def _frames(n: int = 24) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"p{i % 6}/v.mp4" for i in range(n)], "frame_index": list(range(n)),
        "patient_id": [str(i % 6 + 1) for i in range(n)], "region": ["L1"] * n, "score": [i % 4 for i in range(n)],
        "video_id": [f"v{i % 6}" for i in range(n)], "group": ["covid" if i % 2 else "negative" for i in range(n)],
    })


def _write(path: Path, config: ExtractionConfig, complete: bool = True) -> Path:
    frames = _frames()
    with FeatureWriter(path, config, frames) as writer:
        writer.write(0, np.random.default_rng(0).normal(size=(1, len(frames), 4)).astype(np.float32))
        if complete:
            writer.finish()
    return path


def test_engine_fields_are_recorded_and_older_files_read_as_tensorflow(tmp_path):
    import h5py

    path = _write(tmp_path / "f.h5", _config(engine="openvino", engine_version="2026.4.1", precision="int8",
                                             calibration="c" * 64))
    with h5py.File(path) as handle:
        assert (handle.attrs["engine"], handle.attrs["engine_version"]) == ("openvino", "2026.4.1")
        assert (handle.attrs["precision"], handle.attrs["calibration"]) == ("int8", "c" * 64)
    older = {key: value for key, value in dataclasses.asdict(_config()).items()
             if key not in ("engine", "engine_version", "calibration")}
    config = ExtractionConfig.from_record(older, "old.h5")
    assert (config.engine, config.engine_version, config.calibration) == ("tensorflow", "", "")
    # An older file's unknown engine version matches any; a known one must be equal.
    assert config.differences(_config()) == []
    assert _config().differences(_config(engine_version="2.22.0")) == ["engine_version: '2.21.0' vs '2.22.0'"]


def test_resuming_with_another_engine_or_precision_is_refused(tmp_path):
    path = _write(tmp_path / "f.h5", _config(), complete=False)
    with pytest.raises(LusfeatError, match="engine: 'tensorflow' vs 'openvino'"):
        FeatureWriter(path, _config(engine="openvino", engine_version="2026.4.1"), _frames())
    with pytest.raises(LusfeatError, match="precision: 'float32' vs 'bfloat16'"):
        FeatureWriter(path, _config(precision="bfloat16"), _frames())
    with FeatureWriter(path, _config(), _frames()) as writer:  # the same request resumes
        assert writer.frames_done == len(_frames()) and not writer.complete


def test_a_rerun_on_defaults_keeps_the_engine_its_file_was_made_with(tmp_path, monkeypatch):
    from lusfeat.extract import kept_engine

    path = tmp_path / "mobilenet.h5"
    assert kept_engine(path, ("openvino", "float32")) == ("openvino", "float32")  # no file: the default
    _write(path, _config(), complete=False)  # an interrupted TensorFlow float32 extraction
    assert kept_engine(path, ("openvino", "float32")) == ("tensorflow", "float32")
    path.with_name(path.name + ".partial").rename(path)  # finished
    assert kept_engine(path, ("tensorflow", "float32")) == ("tensorflow", "float32")
    int8 = _write(tmp_path / "int8" / "mobilenet.h5", _config(engine="openvino", precision="int8",
                                                               engine_version="2026.4.1"))
    absent = dataclasses.replace(ENGINES["openvino"], package="lusfeat_no_such_package")
    monkeypatch.setitem(ENGINES, "openvino", absent)  # made with an engine no longer installed: said, not redone
    with pytest.raises(LusfeatError, match=r'pip install "lusfeat\[openvino\]"'):
        kept_engine(int8, ("tensorflow", "float32"))


def test_fit_refuses_features_of_different_engines(tmp_path, synthetic_run, capsys):
    from lusfeat.fit import main as fit

    mobilenet = _write(tmp_path / "a" / "mobilenet.h5", _config())
    vgg16 = _write(tmp_path / "b" / "vgg16.h5", _config(backbone="vgg16", engine="openvino", engine_version="2026.4.1"))
    assert fit(["--fold", "1", "--features", str(mobilenet), str(vgg16), "--out", str(tmp_path / "mixed")]) == 1
    error = capsys.readouterr().err
    assert "different inference engines or precisions" in error and "engine: 'tensorflow' vs 'openvino'" in error
    assert not (tmp_path / "mixed").exists()
    # Into a run folder whose earlier folds (TensorFlow float32 MobileNet) came from another precision:
    vgg16_bf16 = _write(tmp_path / "c" / "vgg16.h5", _config(backbone="vgg16", precision="bfloat16"))
    assert fit(["--fold", "1", "--features", str(vgg16_bf16), "--out", str(synthetic_run)]) == 1
    error = capsys.readouterr().err
    assert "precision: 'bfloat16' vs 'float32'" in error and "mobilenet/fold1/model.json" in error


# --------------------------------------------------------------------------- OpenVINO on real frames and weights


@pytest.fixture(scope="module")
def real_frames(data_root) -> np.ndarray:
    """Eight real frames of one video at 299 px (resized to 224 px where needed)."""
    frames = read_frames(data_root / VIDEO, step=12, size=299)[:8]
    assert len(frames) == 8
    return frames


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for image in images])


@pytest.mark.slow
def test_openvino_float32_matches_tensorflow_on_real_frames(openvino, weights_dir, real_frames):
    spec = get_spec("mobilenet")
    source = resolve_weights(spec, str(weights_dir))
    images = _resized(real_frames, 224)
    reference = build_embed("tensorflow", spec, source, 224, "float32", 4)(images)
    features = build_embed("openvino", spec, source, 224, "float32", 4)(images)  # 8 images: two batches of 4
    assert features.shape == reference.shape == (8, 256) and features.dtype == np.float32
    assert _relative_error(features, reference) < 1e-4
    cached = list((openvino / "openvino").glob("mobilenet-224px-float32-*/key.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["weights"] == source.identity
    again = build_embed("openvino", spec, source, 224, "float32", 8)(images[:3])  # from the cache, another batch
    np.testing.assert_allclose(again, features[:3], rtol=1e-6, atol=1e-6)
    if (weights_dir / "xception_imagenet_notop.weights.h5").is_file():
        spec = get_spec("xception")
        source = resolve_weights(spec, str(weights_dir))
        reference = build_embed("tensorflow", spec, source, 299, "float32", 2)(real_frames[:2])
        features = build_embed("openvino", spec, source, 299, "float32", 2)(real_frames[:2])
        assert _relative_error(features, reference) < 1e-4


@pytest.mark.slow
def test_openvino_bfloat16_is_refused_where_it_would_run_float32(openvino, weights_dir):
    if native_bfloat16()[0]:
        pytest.skip("this CPU computes bfloat16 natively")
    spec = get_spec("mobilenet")
    with pytest.raises(LusfeatError, match="not bfloat16, on this CPU.*--precision float32"):
        build_embed("openvino", spec, resolve_weights(spec, str(weights_dir)), 224, "bfloat16", 4)


class _Reporting:
    """A compiled OpenVINO model whose ``INFERENCE_PRECISION_HINT`` answer is ``reported`` (what a CPU would say)."""

    def __init__(self, compiled, reported) -> None:
        self.compiled, self.reported = compiled, reported

    def get_property(self, name: str):
        return self.reported if name == "INFERENCE_PRECISION_HINT" else self.compiled.get_property(name)

    def create_infer_request(self):
        return self.compiled.create_infer_request()


def _tiny_openvino_model(*_args):
    """uint8 (n, s, s, 3) -> float32 (n, 256), each row the image's mean: a stand-in for a converted backbone."""
    import openvino as ov
    from openvino import opset13 as ops

    images = ops.parameter([-1, -1, -1, 3], ov.Type.u8)
    mean = ops.reduce_mean(ops.convert(images, ov.Type.f32), ops.constant(np.array([1, 2, 3])), keep_dims=False)
    rows = ops.tile(ops.unsqueeze(mean, ops.constant(np.array([1]))), ops.constant(np.array([1, 256])))
    return ov.Model([rows], [images])


@pytest.mark.parametrize("reported, runs", [("bfloat16", True), ("float32", False)])
def test_openvino_bfloat16_is_judged_by_the_reported_type_whatever_the_cpu(openvino, monkeypatch, reported, runs):
    """OpenVINO reports ``<Type: 'bfloat16'>``; the check compares types (it once looked for the text "bf16" and
    refused every CPU that has bfloat16). The report is mocked both ways, so the test does not depend on this CPU."""
    import openvino as ov

    real_compile = engines.compile_openvino
    monkeypatch.setattr(engines, "openvino_model", _tiny_openvino_model)
    answer = {"bfloat16": ov.Type.bf16, "float32": ov.Type.f32}[reported]
    monkeypatch.setattr(engines, "compile_openvino",
                        lambda model, precision: _Reporting(real_compile(model, "float32"), answer))
    spec = get_spec("mobilenet")
    source = resolve_weights(spec, "none")
    if runs:
        embed = build_embed("openvino", spec, source, 32, "bfloat16", 2)
        images = np.full((3, 32, 32, 3), 7, np.uint8)
        np.testing.assert_allclose(embed(images), np.full((3, 256), 7.0))
    else:
        with pytest.raises(LusfeatError, match=r"OpenVINO runs <Type: 'float32'>, not bfloat16, on this CPU"):
            build_embed("openvino", spec, source, 32, "bfloat16", 2)
    engines.check_inference_precision("x", "float32", ov.Type.f32)  # float32 and int8 are never refused
    engines.check_inference_precision("x", "bfloat16", "bf16")  # a text answer, as older versions give
    with pytest.raises(LusfeatError, match="OpenVINO runs f32, not bfloat16"):
        engines.check_inference_precision("x", "bfloat16", "f32")


@pytest.mark.slow
def test_openvino_bfloat16_runs_where_the_cpu_has_it(openvino, weights_dir, real_frames):
    if not native_bfloat16()[0]:
        pytest.skip("this CPU has no native bfloat16")
    spec = get_spec("mobilenet")
    source = resolve_weights(spec, str(weights_dir))
    images = _resized(real_frames, 224)
    reference = build_embed("openvino", spec, source, 224, "float32", 4)(images)
    features = build_embed("openvino", spec, source, 224, "bfloat16", 4)(images)
    assert features.shape == reference.shape and features.dtype == np.float32
    cosine = (features * reference).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.95  # bfloat16 arithmetic: close to float32 ...
    assert _relative_error(features, reference) > 1e-4  # ... but not float32 relabelled


@pytest.mark.slow
def test_int8_calibration_is_deterministic_for_a_seed(nncf, weights_dir, real_frames):
    from lusfeat.embed import calibration_set
    from lusfeat.engines import convert_to_openvino, openvino_model, quantize_int8

    frames = _frames(400)
    subset, key = calibration_set(frames, seed=0)
    assert len(subset) == engines.CALIBRATION_FRAMES and subset.index.is_monotonic_increasing
    assert calibration_set(frames, seed=0)[1] == key and calibration_set(frames, seed=1)[1] != key
    assert len(calibration_set(frames.iloc[:10], seed=0)[0]) == 10  # at most what there is

    spec = get_spec("mobilenet")
    source = resolve_weights(spec, str(weights_dir))
    images = _resized(real_frames, 224)
    model = convert_to_openvino(spec, source, 224)
    import openvino as ov

    outputs = [ov.Core().compile_model(quantize_int8(model, images[:6]), "CPU")(images)[0] for _ in range(2)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    # Cached by calibration key: the second build neither decodes nor quantises.
    calls = []

    def calibration_images():
        calls.append(1)
        return images[:6]

    openvino_model(spec, source, 224, "int8", Calibration(key, calibration_images))
    openvino_model(spec, source, 224, "int8", Calibration(key, calibration_images))
    assert calls == [1]
    with pytest.raises(LusfeatError, match="int8 model calibrated on frames other is not in the cache"):
        openvino_model(spec, source, 224, "int8", Calibration("other"))


@pytest.mark.slow
def test_extract_with_openvino_records_the_engine_and_refuses_mixing(openvino, two_patient_manifest, data_root,
                                                                      weights_dir, tmp_path, capsys):
    from lusfeat.extract import main

    rows = pd.read_csv(two_patient_manifest, dtype=str, keep_default_na=False)
    manifest = tmp_path / "one.csv"
    rows[rows["video_id"] == "patient_1_L1"].to_csv(manifest, index=False)
    common = ["--manifest", str(manifest), "--data-root", str(data_root), "--backbone", "mobilenet", "--weights",
              str(weights_dir), "--frame-step", "40", "--augment-copies", "1", "--no-progress"]
    assert main([*common, "--engine", "openvino", "--out", str(tmp_path / "ov")]) == 0
    assert "mobilenet: written" in capsys.readouterr().out
    config = read_config(tmp_path / "ov" / "mobilenet.h5")
    assert (config.engine, config.precision, config.calibration) == ("openvino", "float32", "")
    assert config.engine_version == engines.engine_version("openvino", "float32")
    assert main([*common, "--engine", "tensorflow", "--out", str(tmp_path / "ov")]) == 1
    assert "engine: 'openvino' vs 'tensorflow'" in capsys.readouterr().err
    assert main([*common, "--engine", "tensorflow", "--out", str(tmp_path / "tf")]) == 0
    from lusfeat.store import load_features

    assert _relative_error(load_features(tmp_path / "ov" / "mobilenet.h5").features,
                           load_features(tmp_path / "tf" / "mobilenet.h5").features) < 1e-4


@pytest.fixture
def tiny_model(tiny_fit_run: Path) -> Path:
    return tiny_fit_run / "mobilenet" / "fold1"


def _model_copy(model: Path, folder: Path, **extraction) -> Path:
    shutil.copytree(model, folder)
    info = json.loads((folder / "model.json").read_text())
    info["extraction"].update(extraction)
    (folder / "model.json").write_text(json.dumps(info))
    return folder


@pytest.mark.slow
def test_predict_embeds_with_the_models_engine_or_refuses(openvino, tiny_model, data_root, weights_dir,
                                                          blues_manifest, tmp_path, capsys):
    from lusfeat.predict import main

    manifest = tmp_path / "new.csv"
    blues_manifest[blues_manifest["video_id"] == "patient_9_L1"].to_csv(manifest, index=False)
    common = [str(manifest), "--data-root", str(data_root), "--weights", str(weights_dir), "--no-progress"]
    assert main([*common, "--model", str(tiny_model), "--engine", "openvino", "--out", str(tmp_path / "x")]) == 1
    assert ("engine: model trained on features of tensorflow float32, you asked openvino float32"
            in capsys.readouterr().err)
    # The same model as if its features had come from OpenVINO: predict embeds with OpenVINO, the scores agree.
    as_openvino = _model_copy(tiny_model, tmp_path / "ov_model", engine="openvino", engine_version="")
    assert main([*common, "--model", str(as_openvino), "--out", str(tmp_path / "ov")]) == 0
    assert main([*common, "--model", str(tiny_model), "--out", str(tmp_path / "tf")]) == 0
    ov_frames = pd.read_csv(tmp_path / "ov" / "frames.csv")
    tf_frames = pd.read_csv(tmp_path / "tf" / "frames.csv")
    columns = [f"{model}_p{k}" for model in ("head", "logreg", "video") for k in range(4)]
    np.testing.assert_allclose(ov_frames[columns], tf_frames[columns], atol=1e-4)
    assert json.loads((tmp_path / "ov" / "predictions.json").read_text())["model"]["engine"] == "openvino"
    assert main([*common, "--model", str(as_openvino), "--engine", "tensorflow", "--out", str(tmp_path / "y")]) == 1
    assert "model trained on features of openvino float32, you asked tensorflow float32" in capsys.readouterr().err
    # int8 features: the quantised model comes from the extraction's cache, never from the new input's frames.
    as_int8 = _model_copy(tiny_model, tmp_path / "int8_model", engine="openvino", precision="int8",
                          calibration="f" * 64)
    assert main([*common, "--model", str(as_int8), "--out", str(tmp_path / "z")]) == 1
    assert f"int8 model calibrated on frames {'f' * 64} is not in the cache" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_and_explain_with_a_model_of_bfloat16_or_int8_features(nncf, tiny_model, data_root, weights_dir,
                                                                       blues_manifest, real_frames, tmp_path, caplog):
    """A model fitted on OpenVINO bfloat16 or int8 features: predict embeds with that engine and precision (bfloat16
    where the CPU has it; int8 from the extraction's cached model) and scores like the float32 model; explain draws
    its maps through the TensorFlow float32 backbone and says so."""
    from lusfeat.embed import calibration_set
    from lusfeat.engines import openvino_model
    from lusfeat.explain import main as explain
    from lusfeat.predict import main as predict

    manifest = tmp_path / "new.csv"
    blues_manifest[blues_manifest["video_id"] == "patient_9_L1"].to_csv(manifest, index=False)
    common = [str(manifest), "--data-root", str(data_root), "--weights", str(weights_dir), "--no-progress"]
    assert predict([*common, "--model", str(tiny_model), "--out", str(tmp_path / "tf")]) == 0
    reference = pd.read_csv(tmp_path / "tf" / "frames.csv")
    columns = [f"{model}_p{k}" for model in ("head", "logreg", "video") for k in range(4)]
    spec = get_spec("mobilenet")
    key = calibration_set(_frames(40), seed=0)[1]  # the extraction made and cached this int8 model
    openvino_model(spec, resolve_weights(spec, str(weights_dir)), 224, "int8",
                   Calibration(key, lambda: _resized(real_frames, 224)))
    made = {"int8": _model_copy(tiny_model, tmp_path / "int8_model", engine="openvino", precision="int8",
                                engine_version="", calibration=key)}
    if native_bfloat16()[0]:
        made["bfloat16"] = _model_copy(tiny_model, tmp_path / "bf16_model", engine="openvino", precision="bfloat16",
                                       engine_version="")
    for precision, model in made.items():
        assert predict([*common, "--model", str(model), "--out", str(tmp_path / precision)]) == 0
        scored = pd.read_csv(tmp_path / precision / "frames.csv")
        recorded = json.loads((tmp_path / precision / "predictions.json").read_text())["model"]
        assert (recorded["engine"], recorded["precision"]) == ("openvino", precision)
        difference = np.abs(scored[columns].to_numpy() - reference[columns].to_numpy())
        print(precision, "probability difference to float32: mean", difference.mean(), "max", difference.max())
        # close (int8 here is calibrated on 8 frames: up to 0.21 apart), and not float32 relabelled
        assert difference.mean() < 0.08 and difference.max() < 0.3 and difference.max() > 1e-6, precision
        caplog.clear()
        assert explain(["--model", str(model), str(manifest), "--data-root", str(data_root), "--weights",
                        str(weights_dir), "--per-video", "1", "--out", str(tmp_path / f"maps-{precision}")]) == 0
        assert f"features came from openvino {precision}" in caplog.text
        table = pd.read_csv(tmp_path / f"maps-{precision}" / "heatmaps.csv")
        assert len(table) == 1 and (tmp_path / f"maps-{precision}" / table["png"].iloc[0]).is_file()


CACHE_UNDER_A_FILE_SIZE_LIMIT = """
import logging, resource, sys
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from lusfeat.engines import _read_cached, _write_cached

logging.basicConfig(level=logging.INFO, format="%(message)s")
x = ops.parameter([1, 1000], np.float32)
weights = ops.constant(np.random.default_rng(0).random((1000, 1000), dtype=np.float32))  # a 4 MB model.bin
model = ov.Model([ops.matmul(x, weights, False, False)], [x])
folder = Path(sys.argv[1]) / "entry"
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # what ulimit -f 1024 sets
_write_cached(folder, {"key": 1}, model)
print(sorted(path.name for path in folder.parent.iterdir()), _read_cached(folder, {"key": 1}))
"""


def test_a_cache_entry_the_disk_cannot_hold_is_never_left_half_written(openvino, tmp_path):
    """The OpenVINO model is saved under a file-size limit (a child process): the save fails (OpenVINO raises a
    RuntimeError, not an OSError: before, a traceback and a half-written scratch folder), a warning says so,
    and nothing is left in the cache; an entry without its key.json (written last) is never read."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    out = subprocess.run([sys.executable, "-c", CACHE_UNDER_A_FILE_SIZE_LIMIT, str(cache)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[] None"
    assert "could not cache the OpenVINO model in" in out.stderr and "converted again next time" in out.stderr
    entry = cache / "half"
    entry.mkdir()
    (entry / "model.xml").write_text("<net/>")
    assert engines._read_cached(entry, {"key": 1}) is None
