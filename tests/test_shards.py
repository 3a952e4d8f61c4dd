"""Shards and their merge: bitwise the unsharded file, on real frames and real MobileNet weights; every refusal."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import write_manifest

from lusfeat.embed import plan_spans
from lusfeat.errors import LusfeatError
from lusfeat.extract import main
from lusfeat.shards import merge_shards, plan_shard, shard_path, split_patients
from lusfeat.store import FeatureWriter, load_features

PATIENTS = ["1", "4", "9"]  # in manifest order: 22, 34 and 33 frames at --frame-step 20: 89 frames, two 64-frame blocks
# Batches of 8 images of 3 copies: frames straddle batches, and every shard edge falls inside a batch.
OPTIONS = ["--backbone", "mobilenet", "--frame-step", "20", "--batch-size", "8", "--no-progress"]


def _extract(manifest: Path, data_root: Path, weights_dir: Path, out: Path, *extra: str) -> int:
    return main(["--manifest", str(manifest), "--data-root", str(data_root), "--weights", str(weights_dir),
                 "--out", str(out), *OPTIONS, *extra])


def bits(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Features as raw bits, the frame table's columns and the attrs of a feature file."""
    with h5py.File(path, "r") as handle:
        features = handle["features"][:]
        frames = {name: handle["frames"][name][:] for name in handle["frames"]}
        attrs = {key: (value.item() if isinstance(value, np.generic) else value) for key, value in handle.attrs.items()}
    return features.view(np.uint32), frames, attrs


def assert_same_file(merged: Path, whole: Path) -> None:
    features, frames, attrs = bits(merged)
    whole_features, whole_frames, whole_attrs = bits(whole)
    assert features.shape == whole_features.shape and np.array_equal(features, whole_features)
    assert frames.keys() == whole_frames.keys()
    assert all(np.array_equal(frames[name], whole_frames[name]) for name in frames)
    attrs.pop("created"), whole_attrs.pop("created")
    assert attrs == whole_attrs


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.glob("*.shard-*"))}


@pytest.fixture(scope="module")
def sharded(blues_manifest: pd.DataFrame, data_root: Path, weights_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An unsharded run, and shards 1/3, 2/3, 3/3 of the same settings (shard 3 interrupted once, then resumed)."""
    folder = tmp_path_factory.mktemp("shards")
    manifest = write_manifest(blues_manifest[blues_manifest["patient_id"].isin(PATIENTS)], folder / "three.csv")
    assert _extract(manifest, data_root, weights_dir, folder / "whole") == 0
    for index in (1, 2):
        assert _extract(manifest, data_root, weights_dir, folder / "shards", "--shard", f"{index}/3") == 0
    # Shard 3 spans two blocks: stop it after the first, then resume it.
    original = FeatureWriter.write
    writes = []

    def dies_after_one_block(self, start, features):
        if writes:
            raise KeyboardInterrupt
        writes.append(start)
        original(self, start, features)

    FeatureWriter.write = dies_after_one_block
    try:
        assert _extract(manifest, data_root, weights_dir, folder / "shards", "--shard", "3/3") == 130
    finally:
        FeatureWriter.write = original
    assert (folder / "shards" / "mobilenet.shard-3-of-3.h5.partial").exists()
    assert _extract(manifest, data_root, weights_dir, folder / "shards", "--shard", "3/3") == 0
    return {"manifest": manifest, "whole": folder / "whole" / "mobilenet.h5", "shards": folder / "shards",
            "folder": folder}


@pytest.mark.slow  # the sharded fixture extracts
def test_merged_shards_are_the_unsharded_file_bitwise(sharded, capsys):
    before = fingerprint(sharded["shards"])
    assert len(before) == 3
    assert main(["merge", str(sharded["shards"])]) == 0
    assert "merged: written" in capsys.readouterr().out
    merged = sharded["shards"] / "mobilenet.h5"
    assert_same_file(merged, sharded["whole"])
    assert fingerprint(sharded["shards"]) == before  # the shards are only read
    loaded = load_features(merged)
    assert loaded.features.shape == (3, 89, 256) and list(dict.fromkeys(loaded.frames["patient_id"])) == PATIENTS
    with h5py.File(merged) as handle:
        record = __import__("json").loads(handle["shards"][()])
    assert [item["index"] for item in record] == [1, 2, 3] and sum(item["frames"] for item in record) == 89
    # A second merge finds the file up to date and leaves it alone.
    stamp = merged.stat().st_mtime_ns
    assert main(["merge", str(sharded["shards"]), "--backbone", "mobilenet"]) == 0
    assert "up to date" in capsys.readouterr().out and merged.stat().st_mtime_ns == stamp


@pytest.mark.slow  # the sharded fixture extracts
def test_a_shard_is_a_feature_file_of_its_patients(sharded):
    shard = load_features(sharded["shards"] / "mobilenet.shard-2-of-3.h5")
    whole = load_features(sharded["whole"])
    rows = plan_shard(whole.frames, 2, 3).rows
    assert set(shard.frames["patient_id"]) == {"4"} and len(shard.frames) == len(rows) == 34
    assert np.array_equal(shard.features.view(np.uint32), whole.features[:, rows].view(np.uint32))
    assert shard.attrs["batch_size"] == 8 and shard.attrs["tf_threads"] >= 1


def test_the_split_is_whole_patients_balanced_by_frames():
    frames = pd.DataFrame({"patient_id": ["a"] * 5 + ["b"] * 50 + ["c"] * 40 + ["d"] * 10 + ["a"] * 5})
    assert split_patients(frames, 2) == [["a", "b"], ["c", "d"]]  # 60 and 50 frames; patient a's rows together
    assert split_patients(frames, 4) == [["a"], ["b"], ["c"], ["d"]]
    plan = plan_shard(frames, 1, 2)
    assert plan.rows.tolist() == [*range(55), *range(105, 110)] and plan.record["frames"] == [60, 50]
    with pytest.raises(LusfeatError, match="4 patient"):
        split_patients(frames, 5)


@pytest.mark.parametrize("copies,batch,block", [(3, 8, 64), (1, 32, 64), (3, 32, 64), (2, 5, 7)])
def test_spans_are_whole_batches_of_the_unsharded_run(copies, batch, block):
    rng = np.random.default_rng(copies * 100 + batch)
    total = 150
    for _ in range(30):
        rows = np.flatnonzero(rng.random(total) < rng.uniform(0.05, 1))
        covered = []
        for span in plan_spans(total, rows, block, copies, batch):
            start = span.first // block * block
            assert span.rows[0] // block * block == start and span.rows[-1] < start + block
            first_image = (span.first - start) * copies + span.skip  # in the block's image order
            last_image = first_image + span.images
            block_images = (min(start + block, total) - start) * copies
            assert first_image % batch == 0 and (last_image % batch == 0 or last_image == block_images)
            assert (span.stop - start) * copies >= last_image > (span.stop - 1 - start) * copies
            wanted = (span.rows - start) * copies
            assert (wanted >= first_image).all() and (wanted + copies <= last_image).all()
            covered.extend(span.rows.tolist())
        assert covered == rows.tolist()


def _copy_shards(sharded, folder: Path) -> Path:
    folder.mkdir()
    for path in sharded["shards"].glob("mobilenet.shard-*-of-3.h5"):
        shutil.copy2(path, folder / path.name)
    return folder


def _set_attr(path: Path, key: str, value) -> None:
    with h5py.File(path, "r+") as handle:
        handle.attrs[key] = value


@pytest.mark.slow  # the sharded fixture extracts
def test_merge_refusals_name_the_shard(sharded, tmp_path, capsys):
    out = _copy_shards(sharded, tmp_path / "s")
    before = fingerprint(out)
    third = out / "mobilenet.shard-3-of-3.h5"

    # Missing, then incomplete (its .partial is there).
    os.rename(third, tmp_path / "kept.h5")
    with pytest.raises(LusfeatError, match=r"shard 3 of 3 is missing .*mobilenet.shard-3-of-3.h5.*--shard 3/3"):
        merge_shards(out / "mobilenet.h5")
    (out / "mobilenet.shard-3-of-3.h5.partial").write_bytes(b"")
    with pytest.raises(LusfeatError, match=r"incomplete \(mobilenet.shard-3-of-3.h5.partial exists\)"):
        merge_shards(out / "mobilenet.h5")
    (out / "mobilenet.shard-3-of-3.h5.partial").unlink()
    os.rename(tmp_path / "kept.h5", third)
    assert fingerprint(out) == before

    def refused(path_changed: Path, key: str, value, pattern: str) -> None:
        original, stat = path_changed.read_bytes(), path_changed.stat()
        _set_attr(path_changed, key, value)
        try:
            with pytest.raises(LusfeatError, match=pattern):
                merge_shards(out / "mobilenet.h5")
        finally:  # this test's own change undone, to the time stamp
            path_changed.write_bytes(original)
            os.utime(path_changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    refused(third, "complete", False, r"shard .*shard-3-of-3.h5 is incomplete")
    refused(third, "seed", 1, r"shard .*shard-3-of-3.h5 was made with other settings .*seed: 1 vs 0")
    refused(third, "manifest_sha256", "0" * 64, r"shard .*shard-3-of-3.h5 was made from another manifest")
    refused(third, "batch_size", 16, r"shard .*shard-3-of-3.h5 was computed in network batches of 16")

    # Listed twice: the same file, or a copy of another shard.
    second = out / "mobilenet.shard-2-of-3.h5"
    first = out / "mobilenet.shard-1-of-3.h5"
    with pytest.raises(LusfeatError, match=r"shard .*shard-2-of-3.h5 is listed twice"):
        merge_shards(out / "mobilenet.h5", [first, second, second, third])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(second, elsewhere / second.name)
    with pytest.raises(LusfeatError, match=r"shard 2 of 3 is listed twice: .*s/mobilenet.shard-2-of-3.h5 and .*elsewhere"):
        merge_shards(out / "mobilenet.h5", [first, second, elsewhere / second.name, third])
    # A shard copied under another shard's name.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy2(second, renamed / "mobilenet.shard-3-of-3.h5")
    with pytest.raises(LusfeatError, match=r"holds shard 2 of 3, not what its name says"):
        merge_shards(out / "mobilenet.h5", [first, second, renamed / "mobilenet.shard-3-of-3.h5"])
    # Shards of another split beside these.
    shutil.copy2(first, out / "mobilenet.shard-1-of-2.h5")
    _set_attr(out / "mobilenet.shard-1-of-2.h5", "shard", '{"count": 2, "index": 1}')
    with pytest.raises(LusfeatError, match=r"shards of different splits .*mobilenet.shard-1-of-2.h5: of 2"):
        merge_shards(out / "mobilenet.h5")
    (out / "mobilenet.shard-1-of-2.h5").unlink()

    # The command line says the same, as an error, and writes nothing.
    os.rename(second, tmp_path / "kept.h5")
    assert main(["merge", str(out)]) == 1
    assert "error: shard 2 of 3 is missing" in capsys.readouterr().err
    os.rename(tmp_path / "kept.h5", second)
    assert fingerprint(out) == before and not (out / "mobilenet.h5").exists()
    assert not list(out.glob(".partial-*"))


@pytest.mark.slow  # the sharded fixture extracts
def test_merge_keeps_an_existing_file_and_writes_atomically(sharded, tmp_path, monkeypatch, capsys):
    out = _copy_shards(sharded, tmp_path / "s")
    target = out / "mobilenet.h5"
    target.write_bytes(b"an earlier file")
    with pytest.raises(LusfeatError, match="not a readable HDF5 file"):
        merge_shards(target)
    shutil.copy2(sharded["folder"] / "shards" / "mobilenet.shard-1-of-3.h5", target)  # a complete file, other frames
    assert main(["merge", str(out)]) == 1
    assert "exists with other settings or frames than its shards; it is kept" in capsys.readouterr().err
    kept = target.read_bytes()

    import lusfeat.shards

    def fails(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lusfeat.shards, "_copy_rows", fails)
    with pytest.raises(OSError, match="disk full"):
        merge_shards(target, overwrite=True)
    assert target.read_bytes() == kept and not list(out.glob(".partial-*"))
    monkeypatch.undo()
    assert main(["merge", str(out), "--overwrite"]) == 0
    assert_same_file(target, sharded["whole"])


@pytest.mark.slow  # the sharded fixture extracts
def test_shard_options_are_checked(sharded, data_root, weights_dir, tmp_path, capsys):
    manifest = sharded["manifest"]
    assert _extract(manifest, data_root, weights_dir, tmp_path, "--shard", "4/3") == 1
    assert "--shard '4/3': give K/N with 1 <= K <= N" in capsys.readouterr().err
    assert _extract(manifest, data_root, weights_dir, tmp_path, "--shard", "1/4") == 1
    assert "4 shards asked for, but the manifest has 3 patient(s)" in capsys.readouterr().err
    assert _extract(manifest, data_root, weights_dir, tmp_path, "--shards", "2") == 1
    assert "--shards N goes with --dask" in capsys.readouterr().err
    # A shard file is not resumed with another batch size: its batches would not be the others'.
    shard = sharded["shards"] / "mobilenet.shard-1-of-3.h5"
    shutil.copy2(shard, tmp_path / shard.name)
    assert main(["--manifest", str(manifest), "--data-root", str(data_root), "--weights", str(weights_dir),
                 "--out", str(tmp_path), "--backbone", "mobilenet", "--frame-step", "20", "--no-progress",
                 "--shard", "1/3"]) == 1
    assert "batch_size: 8 vs 32" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.partial"))
    assert shard_path(tmp_path / "x.h5", 2, 7).name == "x.shard-2-of-7.h5"
