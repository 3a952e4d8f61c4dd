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


def test_maps_of_a_feature_source_round_trip_resume_and_mismatch(tmp_path):
    from lusfeat.store import load_maps

    path = tmp_path / "xception-block13.h5"
    config = _config(source="block13", pooling="none", feature_dim=3, dtype="float16")
    maps = np.random.default_rng(0).normal(size=(2, 150, 2, 2, 3)).astype(np.float16)
    with FeatureWriter(path, config, _frames(), item_shape=(2, 2, 3)) as writer:
        writer.write(0, maps[:, :64])
    with FeatureWriter(path, config, _frames(), item_shape=(2, 2, 3)) as writer:
        assert writer.frames_done == 64
        writer.write(64, maps[:, 64:])
        writer.finish()
    loaded = load_maps(path, source="block13")
    np.testing.assert_array_equal(loaded.maps, maps)
    assert loaded.maps.dtype == np.float16 and loaded.config == config
    np.testing.assert_array_equal(load_maps(path, copies=[1]).maps, maps[1:])
    with h5py.File(path) as handle:
        assert "features" not in handle and handle["maps"].chunks == (1, 1, 2, 2, 3)
        assert handle.attrs["source"] == "block13"
    with pytest.raises(LusfeatError, match="source: 'block13' vs 'middle'"):
        FeatureWriter(path, _config(source="middle", pooling="none", feature_dim=3, dtype="float16"), _frames(),
                      item_shape=(2, 2, 3))
    with pytest.raises(LusfeatError, match="holds the 'block13' maps, not 'middle'"):
        load_maps(path, source="middle")
    with pytest.raises(LusfeatError, match="'block13' maps, not pooled features"):
        load_features(path)
    # A partial file of maps of another shape is not resumed
    with FeatureWriter(tmp_path / "m.h5", config, _frames(), item_shape=(2, 2, 3)) as writer:
        writer.write(0, maps[:, :64])
    with pytest.raises(LusfeatError, match=r"items of shape \(2, 2, 3\), not \(1, 1, 3\)"):
        FeatureWriter(tmp_path / "m.h5", config, _frames(), item_shape=(1, 1, 3))
    # Files written before sources named the tap: read as the source
    with h5py.File(path, "r+") as handle:
        del handle.attrs["source"]
        handle.attrs["tap"] = "block13"
    assert read_config(path).source == "block13" and load_maps(path, source="block13").maps.shape == maps.shape


def test_pooled_files_carry_no_source_attribute(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, _features())
        writer.finish()
    with h5py.File(path) as handle:
        assert "source" not in handle.attrs and "tap" not in handle.attrs  # as before sources existed
    assert read_config(path).source == ""


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


# --------------------------------------------------------------------------- write faults and integrity (issue 25)


def _complete(path: Path, features: np.ndarray | None = None) -> Path:
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, _features() if features is None else features)
        writer.finish()
    return path


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (not Linux)")
def test_a_write_the_disk_refuses_is_named_and_the_partial_resumes_bitwise(tmp_path):
    """A real ENOSPC from the kernel mid-run: the HDF5 file's descriptor is pointed at /dev/full after the first
    block. The write raises a named error, frames_done stays at the block before, a rerun gives the clean file."""
    import os

    path = tmp_path / "f.h5"
    features = _features()
    writer = FeatureWriter(path, _config(), _frames())
    writer.write(0, features[:, :64])
    descriptor = writer._file.id.get_vfd_handle()
    saved, full = os.dup(descriptor), os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, descriptor)
    try:
        with pytest.raises(LusfeatError, match=r"could not write .*f\.h5\.partial: No space left on device \(ENOSPC\); "
                           r"free space .* keeps the first 64 of 150 frames"):
            writer.write(64, features[:, 64:128])
        assert writer.frames_done == 64
    finally:
        os.dup2(saved, descriptor)  # before closing: HDF5 cannot close a file it cannot truncate (/dev/full)
        os.close(saved), os.close(full)
    writer.close()
    assert not path.exists()
    with h5py.File(tmp_path / "f.h5.partial") as handle:
        assert handle.attrs["frames_done"] == 64 and not handle.attrs["complete"]
    with FeatureWriter(path, _config(), _frames()) as writer:
        assert writer.frames_done == 64
        writer.write(64, features[:, 64:])
        writer.finish()
    clean = _complete(tmp_path / "clean" / "f.h5")
    with h5py.File(path) as resumed, h5py.File(clean) as whole:
        for name in ("features", "checksums"):
            assert resumed[name][:].tobytes() == whole[name][:].tobytes()


def _damage(path: Path, copy: int, frame: int) -> None:
    """Change one stored value behind the writer's back (its checksum stays)."""
    with h5py.File(path, "r+") as handle:
        handle["features"][copy, frame, 0] += 1.0


def test_every_reader_refuses_a_damaged_file_naming_the_item(tmp_path):
    from lusfeat.integrity import DamagedFile
    from lusfeat.store import verify_file

    path = _complete(tmp_path / "f.h5")
    assert verify_file(path)
    _damage(path, copy=1, frame=70)
    message = r"f\.h5 is damaged: 1 stored item\(s\) differ .*copy 1 of row 70, v1\.mp4 frame 20\); .*--overwrite"
    for read in (verify_file, load_features, lambda p: load_features(p, copies=[1]),
                 lambda p: FeatureWriter(p, _config(), _frames())):  # extract's "up to date" checks too
        with pytest.raises(DamagedFile, match=message):
            read(path)
    assert load_features(path, copies=[0]).features.shape == (1, 150, 4)  # what is read is checked, no more


def test_a_file_marked_complete_without_all_its_frames_is_refused(tmp_path):
    path = _complete(tmp_path / "f.h5")
    with h5py.File(path, "r+") as handle:
        handle.attrs["frames_done"] = 64  # the state the full-disk bug left: complete, frames missing
    with pytest.raises(LusfeatError, match="damaged: marked complete with 64 of 150 frames written; remake it with "
                       "python -m lusfeat.extract --backbone mobilenet --frame-step 1 --augment-copies 1"):
        load_features(path)


def test_finish_reads_the_file_back_and_a_rerun_recomputes_from_the_bad_item(tmp_path):
    from lusfeat.integrity import DamagedFile

    path, features = tmp_path / "f.h5", _features()
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, features)
        writer._file["features"][0, 100, 2] = -1.0  # the disk gave back other bytes than were written
        with pytest.raises(DamagedFile, match="copy 0 of row 100"):
            writer.finish()
    assert not path.exists()  # never renamed to its final name
    with FeatureWriter(path, _config(), _frames()) as writer:
        assert writer.frames_done == 100 and not writer.complete
        writer.write(100, features[:, 100:])
        writer.finish()
    np.testing.assert_array_equal(load_features(path).features, features)


def _strip_checksums(path: Path) -> Path:
    """``path`` as lusfeat wrote it before checksums existed."""
    with h5py.File(path, "r+") as handle:
        del handle["checksums"], handle.attrs["checksum"]
    return path


def test_files_from_before_checksums_are_read_with_one_warning(tmp_path, caplog):
    from lusfeat.store import verify_file

    path = _strip_checksums(_complete(tmp_path / "old.h5"))
    with caplog.at_level("WARNING", logger="lusfeat"):
        np.testing.assert_array_equal(load_features(path).features, _features())
        assert verify_file(path) is False
    warnings = [record.getMessage() for record in caplog.records if "no checksums" in record.getMessage()]
    assert len(warnings) == 1 and "old.h5 was written before lusfeat checked feature files" in warnings[0]
    assert "--overwrite" in warnings[0]


def test_a_partial_file_begun_without_checksums_is_begun_again(tmp_path, caplog):
    path = tmp_path / "f.h5"
    with FeatureWriter(path, _config(), _frames()) as writer:
        writer.write(0, _features()[:, :64])
    _strip_checksums(tmp_path / "f.h5.partial")
    with caplog.at_level("WARNING", logger="lusfeat"), FeatureWriter(path, _config(), _frames()) as writer:
        assert writer.frames_done == 0
    assert "begun by a lusfeat without write checks: its 64 frames are computed again" in caplog.text


def test_a_disk_too_small_for_the_file_fails_when_it_is_made_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE (what ``ulimit -f`` sets) in a child process: the file is allocated when made, so the limit is
    met before any block, with the OS's cause named; no partial file is left."""
    import subprocess
    import sys

    code = ("import resource, sys; sys.path[:0] = [sys.argv[1]]; from test_store import _config, _frames; "
            "from lusfeat.store import FeatureWriter; from lusfeat.errors import LusfeatError\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
            "try:\n    FeatureWriter(sys.argv[2], _config(), _frames())\nexcept LusfeatError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "f.h5")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "f.h5.partial: File too large (EFBIG); raise the file-size limit (ulimit -f)" in out.stdout
    assert "then run the command again (its features take 0.006 MB)" in out.stdout and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []
