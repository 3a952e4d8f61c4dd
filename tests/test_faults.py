"""Write faults, for real, in child processes: a full disk (a small tmpfs, where this process may mount one), a
file-size limit (RLIMIT_FSIZE, what ``ulimit -f`` sets), a disk that refuses every write from the middle of a run
(the file's descriptor pointed at /dev/full: the kernel's own ENOSPC), a folder made read-only mid-run
(``chattr +i``: root ignores permission bits) and SIGKILL at the final rename; for extract, merge, fit and
predict. Each asserts one named ``error:`` line (no traceback), nothing complete-looking and wrong on disk, and,
where it applies, that the rerun (in this process, as a user's next command) equals a clean run bitwise. Real
COVID-BLUES frames and real MobileNet weights (patient 1, every 4th frame, one augmented copy: two 64-frame blocks);
fit on synthetic features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import write_manifest, write_synthetic_features

pytestmark = pytest.mark.slow

DRIVER = r"""
import json, os, resource, signal, subprocess, sys

spec = json.loads(sys.argv[1])
if spec.get("fsize"):
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], spec["fsize"]))


def act():
    if spec["do"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    subprocess.run(["chattr", "+i", spec["folder"]], check=True)  # "immutable": the folder turns read-only


if spec.get("when") in ("before-rename", "after-rename"):
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if not str(target).endswith(spec["target"]):
            return real_replace(source, target, *args, **kwargs)
        if spec["when"] == "before-rename":
            act()
        real_replace(source, target, *args, **kwargs)
        if spec["when"] == "after-rename":
            act()

    os.replace = replace
if spec.get("when") == "after-first-block":
    from lusfeat import store

    real_write = store.FeatureWriter.write

    def write(self, start, features):
        real_write(self, start, features)
        store.FeatureWriter.write = real_write
        if spec["do"] == "full":  # every later write of this file gets the kernel's ENOSPC
            os.dup2(os.open("/dev/full", os.O_WRONLY), self._file.id.get_vfd_handle())
        else:
            act()

    store.FeatureWriter.write = write
from importlib import import_module

sys.exit(import_module(spec["module"]).main(spec["argv"]))
"""


def run(module: str, argv: list[str], **fault) -> subprocess.CompletedProcess:
    """``python -m lusfeat.<module> argv`` in a child process, with ``fault`` (see DRIVER)."""
    spec = {"module": f"lusfeat.{module}", "argv": [str(arg) for arg in argv], **fault}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True,
                          timeout=900, env=env)


def one_error(out: subprocess.CompletedProcess, *expected: str) -> str:
    """The one ``error:`` line of a failed command, which holds every ``expected`` text; no traceback, no crash."""
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def rerun(module: str, argv: list, capsys=None) -> str:
    """The command run again in this process (as a user does after the fault), which must succeed; its stdout."""
    from importlib import import_module

    code = import_module(f"lusfeat.{module}").main([str(arg) for arg in argv])
    out = capsys.readouterr() if capsys is not None else None
    assert code == 0, out.err[-3000:] if out else code
    return out.out if out else ""


def feature_bits(path: Path) -> dict[str, bytes]:
    """What a feature file holds, as bytes: its data sets and frame table (attrs hold times and versions)."""
    with h5py.File(path, "r") as handle:
        bits = {name: handle[name][:].tobytes() for name in ("features", "checksums")}
        for name, column in handle["frames"].items():
            bits[f"frames/{name}"] = ("\n".join(column.asstr()[:]).encode() if column.dtype.kind == "O"
                                      else column[:].tobytes())
        assert handle.attrs["complete"] and handle.attrs["frames_done"] == handle["features"].shape[1]
    return bits


def complete_looking(folder: Path) -> list[Path]:
    """Feature files under a final name (``.h5``; ``.h5.partial`` and ``.partial-*`` are not)."""
    return sorted(path for path in folder.rglob("*.h5") if path.is_file() and not path.name.startswith(".partial-"))


def chattr_or_skip(folder: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a read-only folder for a writer that is root needs chattr +i; not root here")
    try:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, timeout=30).returncode == 0
    except OSError:
        made = False
    if not made:
        pytest.skip(f"chattr +i is not supported on {folder}'s file system")
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def unfreeze(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 100 KB tmpfs (the feature file takes 0.22 MB); skips where this process may not mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(disk)], capture_output=True,
                                 text=True, timeout=30)
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root and CAP_SYS_ADMIN needed): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], capture_output=True)


# --------------------------------------------------------------------------- extract


@pytest.fixture(scope="module")
def one_patient(blues_manifest: pd.DataFrame, data_root: Path, weights_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Patient 1's manifest, the extract options, and a clean run's feature file (made as the faulted ones are)."""
    folder = tmp_path_factory.mktemp("faults")
    manifest = write_manifest(blues_manifest[blues_manifest["patient_id"] == "1"], folder / "one.csv")
    options = ["--manifest", manifest, "--data-root", data_root, "--backbone", "mobilenet", "--weights",
               weights_dir / "mobilenet_0.25_224_imagenet_notop.h5", "--engine", "tensorflow", "--frame-step", "4",
               "--augment-copies", "1", "--no-progress"]
    rerun("extract", [*options, "--out", folder / "clean"])
    return {"options": options, "clean": feature_bits(folder / "clean" / "mobilenet.h5"), "folder": folder}


def extract(one_patient: dict, out: Path, **fault) -> subprocess.CompletedProcess:
    return run("extract", [*one_patient["options"], "--out", out], **fault)


def extract_again(one_patient: dict, out: Path, capsys) -> str:
    return rerun("extract", [*one_patient["options"], "--out", out], capsys)


def test_extract_on_a_full_disk_stops_at_once_and_reruns_to_the_clean_file(one_patient, small_disk, capsys):
    out = small_disk / "features"
    one_error(extract(one_patient, out), f"could not write {out / 'mobilenet.h5.partial'}: No space left on device "
              "(ENOSPC); free space on that disk", "its features take 0.")
    assert complete_looking(small_disk) == [] and list(out.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)  # space freed
    assert "mobilenet: written" in extract_again(one_patient, out, capsys)
    assert feature_bits(out / "mobilenet.h5") == one_patient["clean"]


def test_extract_over_the_file_size_limit_stops_at_once_and_reruns_to_the_clean_file(one_patient, tmp_path,
                                                                                     capsys):
    out = tmp_path / "features"
    one_error(extract(one_patient, out, fsize=100_000), "mobilenet.h5.partial: File too large (EFBIG); raise the "
              "file-size limit (ulimit -f)")
    assert complete_looking(tmp_path) == [] and list(out.iterdir()) == []
    extract_again(one_patient, out, capsys)
    assert feature_bits(out / "mobilenet.h5") == one_patient["clean"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (not Linux)")
def test_extract_on_a_disk_that_fails_mid_run_keeps_its_blocks_and_resumes_bitwise(one_patient, tmp_path, capsys):
    out = tmp_path / "features"
    one_error(extract(one_patient, out, when="after-first-block", do="full"),
              "mobilenet.h5.partial: No space left on device (ENOSPC)", "keeps the first 64 of 106 frames")
    assert complete_looking(tmp_path) == [] and sorted(out.iterdir()) == [out / "mobilenet.h5.partial"]
    with h5py.File(out / "mobilenet.h5.partial") as handle:
        assert handle.attrs["frames_done"] == 64 and not handle.attrs["complete"]
    assert "mobilenet: resumed" in extract_again(one_patient, out, capsys)
    assert feature_bits(out / "mobilenet.h5") == one_patient["clean"]


def test_extract_into_a_folder_made_read_only_mid_run_keeps_the_checked_partial(one_patient, tmp_path, capsys):
    out = tmp_path / "features"
    out.mkdir()
    chattr_or_skip(out)
    try:
        one_error(extract(one_patient, out, when="after-first-block", do="immutable", folder=str(out)),
                  f"could not write {out / 'mobilenet.h5'}: Operation not permitted (EPERM)",
                  "it checks mobilenet.h5.partial and gives it its final name")
    finally:
        unfreeze(out)
    assert complete_looking(tmp_path) == [] and sorted(out.iterdir()) == [out / "mobilenet.h5.partial"]
    extract_again(one_patient, out, capsys)
    assert feature_bits(out / "mobilenet.h5") == one_patient["clean"]


@pytest.mark.parametrize("when", ["before-rename", "after-rename"])
def test_extract_killed_at_the_final_rename_leaves_a_partial_or_a_checked_file(one_patient, tmp_path, when, capsys):
    out = tmp_path / "features"
    killed = extract(one_patient, out, when=when, do="kill", target="mobilenet.h5")
    assert killed.returncode == -9
    final = out / "mobilenet.h5"
    assert final.exists() == (when == "after-rename") and (out / "mobilenet.h5.partial").exists() != final.exists()
    again = extract_again(one_patient, out, capsys)
    assert ("up to date" in again) == (when == "after-rename")
    assert feature_bits(final) == one_patient["clean"]


def test_extract_refuses_to_call_a_damaged_file_up_to_date(one_patient, tmp_path):
    out = tmp_path / "features"
    out.mkdir()
    (out / "mobilenet.h5").write_bytes((one_patient["folder"] / "clean" / "mobilenet.h5").read_bytes())
    with h5py.File(out / "mobilenet.h5", "r+") as handle:
        handle["features"][1, 80, 7] += 0.5  # bit rot, or a bad sector read back
    one_error(extract(one_patient, out), "mobilenet.h5 is damaged: 1 stored item(s) differ from what was computed "
              "(first: copy 1 of row 80", "remake it with python -m lusfeat.extract --backbone mobilenet --frame-step 4 "
              "--augment-copies 1 --engine tensorflow --precision float32")


# --------------------------------------------------------------------------- merge


@pytest.fixture(scope="module")
def two_shards(one_patient) -> dict:
    """Shards 1/2 and 2/2 of patients 1 and 4 (made in-process), and the unsharded file of the same settings."""
    from lusfeat.extract import main

    folder = one_patient["folder"] / "sharding"
    manifest = pd.read_csv(one_patient["options"][1], dtype=str, keep_default_na=False)
    blues = pd.read_csv(Path(__file__).resolve().parents[1] / "data_manifest.csv", dtype=str, keep_default_na=False)
    two = write_manifest(pd.concat([manifest, blues[blues["patient_id"] == "4"]]), folder.parent / "two.csv")
    options = [*one_patient["options"]]
    options[1] = two
    options[options.index("--frame-step") + 1] = "20"
    for extra in (["--shard", "1/2"], ["--shard", "2/2"], []):
        assert main([*map(str, options), *extra, "--out", str(folder / ("shards" if extra else "whole"))]) == 0
    return {"shards": folder / "shards", "whole": feature_bits(folder / "whole" / "mobilenet.h5")}


def copy_shards(two_shards: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in two_shards["shards"].glob("*.shard-*.h5"):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_merge_on_a_full_disk_or_over_the_file_size_limit_leaves_nothing(two_shards, tmp_path, small_disk, capsys):
    folder = copy_shards(two_shards, tmp_path / "shards")
    one_error(run("extract", ["merge", folder], fsize=60_000), f"could not write {folder / 'mobilenet.h5'}: File too "
              "large (EFBIG)")
    assert complete_looking(tmp_path) == sorted(folder.glob("*.shard-*.h5")) and len(list(folder.iterdir())) == 2
    # On a full disk: the shards are there, no room for the merge.
    sizes = sum(path.stat().st_size for path in two_shards["shards"].glob("*.shard-*.h5"))
    subprocess.run(["mount", "-o", f"remount,size={sizes + 40_000}", str(small_disk)], check=True)
    disk_shards = copy_shards(two_shards, small_disk / "s")
    one_error(run("extract", ["merge", disk_shards]), "mobilenet.h5: No space left on device (ENOSPC)")
    assert not (disk_shards / "mobilenet.h5").exists() and len(list(disk_shards.iterdir())) == 2
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)  # space freed
    rerun("extract", ["merge", disk_shards], capsys)
    assert feature_bits(disk_shards / "mobilenet.h5") == two_shards["whole"]


def test_merge_killed_at_its_rename_then_rerun_is_the_unsharded_file(two_shards, tmp_path, capsys):
    folder = copy_shards(two_shards, tmp_path / "shards")
    assert run("extract", ["merge", folder], when="before-rename", do="kill", target="mobilenet.h5").returncode == -9
    assert not (folder / "mobilenet.h5").exists()  # a temporary .partial-mobilenet.h5 at most, never the final name
    assert "merged: written" in rerun("extract", ["merge", folder], capsys)
    assert feature_bits(folder / "mobilenet.h5") == two_shards["whole"]


def test_merge_refuses_a_damaged_shard(two_shards, tmp_path):
    folder = copy_shards(two_shards, tmp_path / "shards")
    with h5py.File(folder / "mobilenet.shard-2-of-2.h5", "r+") as handle:
        handle["features"][0, 3, 0] = -1.0
    one_error(run("extract", ["merge", folder]), "mobilenet.shard-2-of-2.h5 is damaged", "copy 0 of row 3")
    assert not (folder / "mobilenet.h5").exists()


# --------------------------------------------------------------------------- fit and predict


@pytest.fixture(scope="module")
def fit_input(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic features (no data needed) and a clean ``fit --fold all`` of them, made as the faulted ones are."""
    folder = tmp_path_factory.mktemp("fit_faults")
    features = write_synthetic_features(folder / "features" / "mobilenet.h5")
    rerun("fit", ["--fold", "all", "--features", features, "--out", folder / "clean"])
    return {"features": features, "clean": run_bits(folder / "clean")}


def run_bits(run_dir: Path) -> dict[str, bytes]:
    """The files of a run folder that hold results (metrics.json also holds fit times), checked as loadable."""
    from lusfeat.runfolder import load_saved_model

    for model in run_dir.rglob("model.json"):
        load_saved_model(model.parent)  # checks every model file against the sha256 model.json records
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*"))
            if path.is_file() and path.suffix in (".csv", ".npz") and path.name != "summary.csv"}


def no_partials(folder: Path) -> None:
    assert [path for path in folder.rglob("*") if path.name.startswith(".partial-")] == []


def fit(fit_input: dict, out: Path, **fault) -> subprocess.CompletedProcess:
    return run("fit", ["--fold", "all", "--features", fit_input["features"], "--out", out], **fault)


def fit_again(fit_input: dict, out: Path, capsys) -> str:
    return rerun("fit", ["--fold", "all", "--features", fit_input["features"], "--out", out], capsys)


def test_fit_over_the_file_size_limit_names_the_file_and_reruns_to_the_clean_run(fit_input, tmp_path, capsys):
    out = tmp_path / "run"
    one_error(fit(fit_input, out, fsize=20_000), "could not write", "File too large (EFBIG)")
    no_partials(out)
    run_bits(out)  # whatever was written is whole and loads
    fit_again(fit_input, out, capsys)
    assert run_bits(out) == fit_input["clean"]


def test_fit_into_a_run_folder_made_read_only_mid_run(fit_input, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    chattr_or_skip(out)
    try:
        one_error(fit(fit_input, out, when="after-rename", do="immutable", target="folds.csv", folder=str(out)),
                  f"could not write {out / 'mobilenet' / 'fold1'}: Operation not permitted (EPERM)")
    finally:
        unfreeze(out)
    fit_again(fit_input, out, capsys)
    assert run_bits(out) == fit_input["clean"]


def test_fit_refuses_a_damaged_feature_file_naming_it(fit_input, tmp_path):
    damaged = tmp_path / "mobilenet.h5"
    damaged.write_bytes(fit_input["features"].read_bytes())
    with h5py.File(damaged, "r+") as handle:
        handle["features"][2, 17, 5] += 1.0
    one_error(fit(fit_input | {"features": damaged}, tmp_path / "run"), f"{damaged} is damaged: 1 stored item(s) "
              "differ from what was computed (first: copy 2 of row 17")
    assert not (tmp_path / "run" / "mobilenet").exists()


def test_fit_killed_at_a_model_rename_then_rerun_is_the_clean_run(fit_input, tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(fit_input, out, when="before-rename", do="kill", target="model.json").returncode == -9
    assert not list(out.rglob("model.json"))  # the fold's record was never renamed into place
    fit_again(fit_input, out, capsys)
    assert run_bits(out) == fit_input["clean"]


def test_predict_over_the_file_size_limit_and_killed_at_its_rename(tiny_fit_run, blues_manifest, data_root,
                                                                  weights_dir, tmp_path, capsys):
    manifest = write_manifest(blues_manifest[blues_manifest["patient_id"] == "9"].head(2), tmp_path / "nine.csv")
    argv = ["--model", tiny_fit_run / "mobilenet" / "fold1", "--data-root", data_root, "--weights", weights_dir,
            "--frame-step", "30", "--no-progress", manifest]
    rerun("predict", [*argv, "--out", tmp_path / "clean"], capsys)
    out = tmp_path / "out"
    one_error(run("predict", [*argv, "--out", out], fsize=3_000), "could not write", "File too large (EFBIG)")
    no_partials(out)
    assert not (out / "predictions.json").exists()  # written last: never beside a set it does not describe
    assert run("predict", [*argv, "--out", out], when="before-rename", do="kill",
               target="predictions.json").returncode == -9
    assert not (out / "predictions.json").exists()
    rerun("predict", [*argv, "--out", out], capsys)
    for name in ("frames.csv", "videos.csv", "regions.csv", "patients.csv"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    clean = json.loads((tmp_path / "clean" / "predictions.json").read_text())
    again = json.loads((out / "predictions.json").read_text())
    clean.pop("seconds"), again.pop("seconds")
    assert again == clean
    assert np.isfinite(pd.read_csv(out / "frames.csv").filter(like="_p").to_numpy()).all()
