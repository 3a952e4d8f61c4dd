from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.experiments.finetune import TAPS, TopBlockFineTuner, get_tap, pooled_top_features

pytestmark = [pytest.mark.experiments, pytest.mark.slow]  # each test needs Xception tap maps

VIDEOS = ["patient_10_L1", "patient_9_L1"]  # scores 0 and 3


@pytest.fixture(scope="module")
def xception_files(blues_manifest: pd.DataFrame, data_root: Path, weights_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pooled features (lusfeat.extract) and block13 / middle maps (this experiment's feature source, through stage
    one's loop) of the same 4 real frames x 2 copies."""
    from lusfeat.experiments.finetune import main as maps
    from lusfeat.extract import main as extract

    if not (weights_dir / "xception_imagenet_notop.weights.h5").is_file():
        pytest.skip(f"Xception weights not found in {weights_dir}")
    folder = tmp_path_factory.mktemp("xception_maps")
    manifest = folder / "two.csv"
    blues_manifest[blues_manifest["video_id"].isin(VIDEOS)].to_csv(manifest, index=False)
    common = ["--manifest", str(manifest), "--data-root", str(data_root), "--backbone", "xception",
              "--weights", str(weights_dir), "--frame-step", "60", "--augment-copies", "1", "--batch-size", "8",
              "--out", str(folder), "--no-progress"]
    assert extract(common) == 0
    for tap in ("block13", "middle"):
        assert maps([*common, "--tap", tap]) == 0
    assert maps([*common, "--tap", "middle"]) == 0  # a second run: up to date
    return {"pooled": folder / "xception.h5", "block13": folder / "xception-block13.h5",
            "middle": folder / "xception-middle.h5"}


@pytest.mark.parametrize("tap", ["middle", "block13"])
def test_top_block_of_cached_maps_gives_the_extracted_pooled_features(xception_files, weights_dir, tap):
    """The rebuilt ImageNet block on stored float16 maps reproduces stage one's pooled features, every copy."""
    from lusfeat.store import load_features, load_maps

    pooled = load_features(xception_files["pooled"])
    maps = load_maps(xception_files[tap], source=tap)
    assert maps.maps.dtype == np.float16 and maps.frames.equals(pooled.frames)
    block = TopBlockFineTuner(tap=tap, weights=str(weights_dir)).build_block()
    for copy in range(2):
        ours = pooled_top_features(block, maps.maps[copy], batch_size=4)
        # float16 maps round to ~1e-3 relative; the pooled features are O(0.1-2).
        np.testing.assert_allclose(ours, pooled.features[copy], rtol=0, atol=2e-3)
    assert np.abs(pooled.features[0] - pooled.features[1]).max() > 1e-2  # the copies do differ


def test_fit_learns_returns_self_and_is_deterministic(xception_files, weights_dir):
    from lusfeat.store import load_maps

    maps = load_maps(xception_files["block13"])
    X, y = maps.maps, maps.frames["score"].to_numpy()
    assert set(y) == {0, 3}
    params = dict(tap="block13", weights=str(weights_dir), epochs=6, batch_size=4)
    model = TopBlockFineTuner(**params, random_state=0)
    assert model.fit(X, y) is model
    assert model.history_["loss"][-1] < model.history_["loss"][0]
    probabilities = model.predict_proba(X)
    assert probabilities.shape == (len(y), 4) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    # The block itself was trained, not only the head.
    before = pooled_top_features(model.build_block(), X[0], batch_size=4)
    assert np.abs(model.transform(X) - before).max() > 1e-4
    again = TopBlockFineTuner(**params, random_state=0).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(again, probabilities, rtol=1e-5, atol=1e-6)
    other = TopBlockFineTuner(**params, random_state=1).fit(X, y).predict_proba(X)
    assert not np.allclose(other, probabilities, atol=1e-4)


def test_wrong_maps_and_options_are_clear_errors(xception_files, weights_dir):
    from sklearn.exceptions import NotFittedError

    from lusfeat.store import load_features, load_maps

    middle = load_maps(xception_files["middle"]).maps
    with pytest.raises(ValueError, match=r"maps of shape \(19, 19, 728\) do not fit .* tap 'block13'"):
        TopBlockFineTuner(tap="block13", weights=str(weights_dir), epochs=1).fit(middle[0], np.zeros(len(middle[0])))
    with pytest.raises(LusfeatError, match="xception has no such tap; known taps of xception: middle, block13"):
        TopBlockFineTuner(tap="block12", weights=str(weights_dir)).build_block()
    with pytest.raises(NotFittedError):
        TopBlockFineTuner().predict_proba(middle)
    with pytest.raises(LusfeatError, match="holds the 'middle' maps, not 'block13'"):
        load_maps(xception_files["middle"], source="block13")
    with pytest.raises(LusfeatError, match="holds pooled features, not maps"):
        load_maps(xception_files["pooled"])
    with pytest.raises(LusfeatError, match="'block13' maps, not pooled features"):
        load_features(xception_files["block13"])


def test_tap_registry_and_unknown_tap():
    assert list(TAPS["xception"]) == ["middle", "block13"]
    assert get_tap("xception", "middle").channels == 728 and get_tap("xception", "block13").layer == "block14_sepconv1"
    with pytest.raises(LusfeatError, match="known taps of xception: middle, block13"):
        get_tap("xception", "block4")
    with pytest.raises(LusfeatError, match="known taps of vgg16: none"):
        get_tap("vgg16", "middle")


def test_maps_are_float16_and_their_file_names_its_source(xception_files):
    from lusfeat.store import load_maps

    maps = load_maps(xception_files["block13"], source="block13")
    assert maps.maps.shape == (2, len(maps.frames), 10, 10, 1024) and maps.maps.dtype == np.float16
    assert (maps.config.source, maps.config.pooling, maps.config.feature_dim) == ("block13", "none", 1024)
