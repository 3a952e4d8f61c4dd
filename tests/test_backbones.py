from __future__ import annotations

import numpy as np
import pytest

from lusfeat.backbones import BACKBONES, build_feature_extractor, get_spec, resolve_weights
from lusfeat.errors import LusfeatError
from lusfeat.frames import read_frames

VIDEO = "COVID-BLUES/lus_videos/patient_10_L1.mp4"


def test_registry_and_unknown_name():
    assert {"xception", "resnet50", "vgg16", "mobilenet"} <= set(BACKBONES)
    assert get_spec("xception").input_size == 299 and get_spec("vgg16").feature_dim == 512
    with pytest.raises(LusfeatError, match="known: xception"):
        get_spec("alexnet")


def test_weights_resolution(tmp_path, monkeypatch):
    spec = get_spec("vgg16")
    assert resolve_weights(spec, "none").identity == "none"
    monkeypatch.delenv("LUSFEAT_WEIGHTS_DIR", raising=False)
    assert resolve_weights(spec, "imagenet").keras_arg == "imagenet"
    with pytest.raises(LusfeatError, match="not found"):
        resolve_weights(spec, str(tmp_path / "missing.h5"))
    with pytest.raises(LusfeatError, match="has no vgg16_imagenet_notop.weights.h5"):
        resolve_weights(spec, str(tmp_path))
    (tmp_path / spec.weights_file).write_bytes(b"abc")
    from_dir = resolve_weights(spec, str(tmp_path))
    assert from_dir.identity == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    monkeypatch.setenv("LUSFEAT_WEIGHTS_DIR", str(tmp_path))
    assert resolve_weights(spec, "imagenet") == from_dir


def test_failed_download_is_a_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.delenv("LUSFEAT_WEIGHTS_DIR", raising=False)
    spec = get_spec("mobilenet")
    with pytest.raises(LusfeatError, match="could not download Keras' ImageNet weights.*LUSFEAT_WEIGHTS_DIR"):
        build_feature_extractor(spec, resolve_weights(spec, "imagenet"))


@pytest.mark.slow
def test_resnet50_takes_a_local_weights_file(tmp_path):
    import keras

    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    file = tmp_path / "resnet.weights.h5"
    reference.save_weights(file)
    spec = get_spec("resnet50")
    source = resolve_weights(spec, str(file))
    model = build_feature_extractor(spec, source, input_size=64)
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    expected = reference(keras.applications.resnet50.preprocess_input(images.astype("float32")), training=False)
    np.testing.assert_allclose(model(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_mobilenet_real_weights_differ_from_random(data_root, weights_dir):
    spec = get_spec("mobilenet")
    images = read_frames(data_root / VIDEO, step=25, size=224)
    real = np.asarray(build_feature_extractor(spec, resolve_weights(spec, str(weights_dir)))(images))
    random = np.asarray(build_feature_extractor(spec, resolve_weights(spec, "none"))(images))
    assert real.shape == (4, 256) and np.isfinite(real).all()
    assert not np.allclose(real, random, atol=1e-3)
    with pytest.raises(LusfeatError, match="only at 224"):
        build_feature_extractor(spec, resolve_weights(spec, str(weights_dir)), input_size=160)


@pytest.mark.slow
def test_xception_real_weights_match_keras_reference(data_root, weights_dir):
    """Our extractor (uint8 in, preprocessing inside) equals Keras' own Xception with pooling='avg'."""
    import keras

    spec = get_spec("xception")
    file = weights_dir / spec.weights_file
    images = read_frames(data_root / VIDEO, step=40, size=299)
    ours = np.asarray(build_feature_extractor(spec, resolve_weights(spec, str(file)))(images))
    reference = keras.applications.Xception(include_top=False, weights=str(file), pooling="avg")
    expected = np.asarray(reference(keras.applications.xception.preprocess_input(images.astype("float32")), training=False))
    assert ours.shape == (3, 2048)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    # ImageNet features of ultrasound are sparse but not dead.
    assert 0.01 < (ours > 0).mean() < 1.0


@pytest.mark.slow
def test_bfloat16_features_are_close_to_float32(data_root, weights_dir):
    import keras

    spec = get_spec("mobilenet")
    source = resolve_weights(spec, str(weights_dir))
    images = read_frames(data_root / VIDEO, step=25, size=224)
    full = np.asarray(build_feature_extractor(spec, source)(images))
    half_model = build_feature_extractor(spec, source, precision="bfloat16")
    half = half_model(images)
    assert half.dtype == "float32" and keras.config.dtype_policy().name == "float32"  # global policy restored
    half = np.asarray(half)
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.9 and not np.array_equal(full, half)
    with pytest.raises(LusfeatError, match="precision 'int8' unknown"):
        build_feature_extractor(spec, source, precision="int8")


def test_a_random_backbone_is_the_same_network_every_build():
    # --weights none must be reproducible, or predict could not recompute a model's features.
    spec, source = get_spec("mobilenet"), resolve_weights(get_spec("mobilenet"), "none")
    images = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    first = np.asarray(build_feature_extractor(spec, source)(images, training=False))
    np.random.default_rng(5).random(10)  # unrelated draws in between change nothing
    second = np.asarray(build_feature_extractor(spec, source)(images, training=False))
    np.testing.assert_array_equal(first, second)
    assert np.abs(first).max() > 0
