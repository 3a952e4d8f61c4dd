"""Stage one on Dask: ``--dask local:2`` and a worker killed mid-shard both end in the unsharded file, bitwise.

Workers compute with one TensorFlow thread each, so the reference is an unsharded run with
``--threads 1`` in its own process (the thread count changes the last bits; docs/distributed.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_manifest
from test_shards import OPTIONS, PATIENTS, assert_same_file

pytest.importorskip("distributed", reason="Dask is an optional extra: pip install -e '.[dask]'")

from lusfeat.extract import main  # noqa: E402

pytestmark = pytest.mark.slow  # Dask worker processes each start TensorFlow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(blues_manifest: pd.DataFrame, data_root: Path, weights_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The unsharded file with one TensorFlow thread, made by the command in a process of its own."""
    folder = tmp_path_factory.mktemp("dask")
    manifest = write_manifest(blues_manifest[blues_manifest["patient_id"].isin(PATIENTS)], folder / "three.csv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "lusfeat.extract", "--manifest", str(manifest), "--data-root", str(data_root),
               "--weights", str(weights_dir), "--out", str(folder / "whole"), "--threads", "1", *OPTIONS]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"manifest": manifest, "whole": folder / "whole" / "mobilenet.h5"}


def test_dask_local_2_gives_the_unsharded_file(reference, data_root, weights_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--manifest", str(reference["manifest"]), "--data-root", str(data_root), "--weights", str(weights_dir),
            "--out", str(out), *[option for option in OPTIONS if option != "--no-progress"], "--dask", "local:2",
            "--threads", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "mobilenet: merged: written" in captured.out and captured.out.count("shard-") == 2
    assert "extract (2 shards): 100%" in captured.err and "89/89" in captured.err  # one bar for the whole job
    assert_same_file(out / "mobilenet.h5", reference["whole"])
    assert sorted(path.name for path in out.iterdir()) == ["mobilenet.h5", "mobilenet.shard-1-of-2.h5",
                                                            "mobilenet.shard-2-of-2.h5"]
    # Once merged, a rerun has nothing to do.
    assert main([*argv, "--no-progress"]) == 0
    assert "merged: up to date" in capsys.readouterr().out


def test_a_worker_killed_mid_shard_still_ends_in_the_same_file(reference, data_root, weights_dir, tmp_path):
    from distributed import Client, LocalCluster

    from lusfeat.augment import AugmentParams
    from lusfeat.backbones import get_spec, resolve_weights
    from lusfeat.cluster import extract_on_dask
    from lusfeat.embed import make_config, plan_frames
    from lusfeat.manifest import file_sha256, read_manifest

    spec = get_spec("mobilenet")
    source = resolve_weights(spec, str(weights_dir))
    frames = plan_frames(read_manifest(reference["manifest"], data_root), 20)
    config = make_config(spec, source, input_size=None, dtype="float32", augment_copies=2, params=AugmentParams(),
                         seed=0, frame_step=20, manifest_sha256=file_sha256(reference["manifest"]))
    out = tmp_path / "mobilenet.h5"
    killed = []

    def kill_after_first_block(message):
        # Shard 2 of 2 (patient 9, frames 56-88) is stored in two blocks: kill its worker after the first.
        if message["index"] == 2 and 0 < message["done"] < message["total"] and not killed:
            killed.append(message["pid"])
            os.kill(message["pid"], signal.SIGKILL)

    env = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_kwargs={"dashboard": False}, env=env) as cluster, Client(cluster) as client:
        [result] = extract_on_dask("", [(spec, source, config, out)], frames, shards=2, batch_size=8, threads=1,
                                   progress=False, on_event=kill_after_first_block, client=client)
    assert killed and not result.errors, result.errors
    statuses = {summary.path.name: summary.status for summary in result.summaries}
    assert statuses == {"mobilenet.shard-1-of-2.h5": "written", "mobilenet.shard-2-of-2.h5": "resumed"}
    assert result.merge is not None and result.merge.status == "written"
    assert_same_file(out, reference["whole"])


def test_bad_dask_options(reference, data_root, weights_dir, tmp_path, capsys):
    base = ["--manifest", str(reference["manifest"]), "--data-root", str(data_root), "--weights", str(weights_dir),
            "--out", str(tmp_path), *OPTIONS]
    assert main([*base, "--dask", "local:x"]) == 1
    assert "--dask local:x: give local:N" in capsys.readouterr().err
    assert main([*base, "--dask", "local:1", "--shards", "4"]) == 1
    assert "4 shards asked for, but the manifest has 3 patient(s)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --shard and --dask exclude each other
        main([*base, "--dask", "local:1", "--shard", "1/2"])
    assert not list(tmp_path.glob("*.h5*"))
