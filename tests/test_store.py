from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.store import ExtractionConfig, FeatureWriter, load_features, read_config


def _config(**changes) -> ExtractionConfig:
    values = dict(backbone="mobilenet", weights="none", input_size=224, feature_dim=4, dtype="float32", copies=2,
                  aug_rotation=10.0, aug_shift=0.1, aug_zoom=0.1, aug_flip=True, seed=0, frame_step=1,
                  manifest_sha256="m")
    values.update(changes)
    return ExtractionConfig(**values)


def _frames(n: int = 150) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"v{i // 50}.mp4" for i in range(n)], "frame_index": [i % 50 for i in range(n)],
        "patient_id": ["p1"] * n, "region": ["L1"] * n, "score": [i % 4 for i in range(n)],
        "video_id": [f"v{i // 50}" for i in range(n)], "group": ["covid"] * n,
    })


def _features(n: int = 150) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, n, 4)).astype(np.float32)


def test_write_then_load_round_trip(tmp_path):
    path = tmp_path / "mobilenet.h5"
    features, frames = _features(), _frames()
    with FeatureWriter(path, _config(), frames, weights_source="random") as writer:
        writer.write(0, features[:, :100])
        assert not path.exists()  # only a finished file gets the final name
        writer.write(100, features[:, 100:])
        writer.finish()
    loaded = load_features(path)
    np.testing.assert_array_equal(loaded.features, features)
    pd.testing.assert_frame_equal(loaded.frames, frames, check_dtype=False)
    assert loaded.config == _config() and read_config(path) == _config()
    assert loaded.attrs["complete"] and loaded.attrs["weights_source"] == "random"
    with h5py.File(path) as handle:
        assert handle["features"].chunks[1] == 64  # chunked along frames


def test_resume_continues_where_it_stopped(tmp_path):
    path = tmp_path / "f.h5"
    features, frames = _features(), _frames()
    with FeatureWriter(path, _config(), frames) as writer:
        writer.write(0, features[:, :64])
    with pytest.raises(LusfeatError, match="did not finish"):
        load_features(path)
    with FeatureWriter(path, _config(), frames) as writer:
        assert writer.frames_done == 64 and not writer.complete
        with pytest.raises(ValueError):
            writer.write(0, features[:, :64])
        writer.write(64, features[:, 64:])
        writer.finish()
    np.testing.assert_array_equal(load_features(path).features, features)
    with FeatureWriter(path, _config(), frames) as writer:
        assert writer.complete and writer.frames_done == 150


def test_mismatched_settings_are_refused_and_kept(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, _features())
        writer.finish()
    before = path.read_bytes()
    with pytest.raises(LusfeatError, match=r"seed: 0 vs 1; input_size|input_size: 224 vs 299"):
        FeatureWriter(path, _config(seed=1, input_size=299), _frames())
    relabelled = _frames().assign(score=0)
    with pytest.raises(LusfeatError, match="per-frame table"):
        FeatureWriter(path, _config(), relabelled)
    assert path.read_bytes() == before
    with FeatureWriter(path, _config(seed=1), _frames(), overwrite=True) as writer:
        assert writer.frames_done == 0
        writer.write(0, _features()[:, :64])
    assert read_config(path).seed == 0  # the old file stands until the new one is complete
    with FeatureWriter(path, _config(seed=1), _frames(), overwrite=True) as writer:
        assert writer.frames_done == 64  # a matching partial file is resumed
        writer.write(64, _features()[:, 64:])
        writer.finish()
    assert read_config(path).seed == 1


def test_partial_file_with_other_settings_is_not_appended_to(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, _features()[:, :64])
    with pytest.raises(LusfeatError, match="dtype: 'float32' vs 'float16'"):
        FeatureWriter(path, _config(dtype="float16"), _frames())


def test_unreadable_partial_restarts_and_bad_file_is_named(tmp_path):
    path = tmp_path / "f.h5"
    (tmp_path / "f.h5.partial").write_bytes(b"half an hdf5 file")
    with FeatureWriter(path, _config(), _frames()) as writer:
        assert writer.frames_done == 0
    path.write_bytes(b"not hdf5")
    with pytest.raises(LusfeatError, match="not a readable HDF5 file"):
        load_features(path)


def test_records_without_later_optional_fields_still_read():
    record = {key: value for key, value in _config().__dict__.items() if key != "precision"}
    assert ExtractionConfig.from_record(record, "old.h5").precision == "float32"
    del record["seed"]
    with pytest.raises(LusfeatError, match="old.h5: not a lusfeat feature record \\(seed missing\\)"):
        ExtractionConfig.from_record(record, "old.h5")


def test_tap_maps_round_trip_resume_and_mismatch(tmp_path):
    from lusfeat.store import load_maps

    path = tmp_path / "xception-block13.h5"
    config = _config(tap="block13", pooling="none", feature_dim=3, dtype="float16")
    maps = np.random.default_rng(0).normal(size=(2, 150, 2, 2, 3)).astype(np.float16)
    with FeatureWriter(path, config, _frames(), item_shape=(2, 2, 3)) as writer:
        writer.write(0, maps[:, :64])
    with FeatureWriter(path, config, _frames(), item_shape=(2, 2, 3)) as writer:
        assert writer.frames_done == 64
        writer.write(64, maps[:, 64:])
        writer.finish()
    loaded = load_maps(path, tap="block13")
    np.testing.assert_array_equal(loaded.maps, maps)
    assert loaded.maps.dtype == np.float16 and loaded.config == config
    np.testing.assert_array_equal(load_maps(path, copies=[1]).maps, maps[1:])
    with h5py.File(path) as handle:
        assert "features" not in handle and handle["maps"].chunks == (1, 1, 2, 2, 3)
        assert handle.attrs["tap"] == "block13"
    with pytest.raises(LusfeatError, match="tap: 'block13' vs 'middle'"):
        FeatureWriter(path, _config(tap="middle", pooling="none", feature_dim=3, dtype="float16"), _frames())
    with pytest.raises(LusfeatError, match="holds the 'block13' tap, not 'middle'"):
        load_maps(path, tap="middle")
    with pytest.raises(LusfeatError, match="activation maps, not pooled features"):
        load_features(path)


def test_pooled_files_carry_no_tap_attribute(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, _features())
        writer.finish()
    with h5py.File(path) as handle:
        assert "tap" not in handle.attrs  # as before taps existed
    assert read_config(path).tap == ""


def test_a_partial_file_another_process_writes_is_refused_not_deleted(tmp_path):
    """Two extractions on one .partial (a Dask task retried while a lost worker still runs): the second stops."""
    import subprocess
    import sys

    path = tmp_path / "f.h5"
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, _features()[:, :64])
        code = ("import sys, pandas as pd; sys.path[:0] = [sys.argv[1]]; from test_store import _config, _frames; "
                "from lusfeat.store import FeatureWriter\n"
                "try:\n    FeatureWriter(sys.argv[2], _config(), _frames())\nexcept Exception as e:\n    print(e)")
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(path)], capture_output=True,
                             text=True, timeout=120)
        assert "is being written by another running extraction" in out.stdout, out.stderr[-2000:]
        writer.write(64, _features()[:, 64:])
        writer.finish()
    np.testing.assert_array_equal(load_features(path).features, _features())
