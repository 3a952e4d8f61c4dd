"""The model folder is data, not code: what lusfeat.runfolder refuses to load, and says to do instead."""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import shutil
from pathlib import Path

import pytest

from lusfeat.errors import LusfeatError
from lusfeat.runfolder import load_saved_model


class WritesAFile:
    """A crafted pickle: unpickling it writes ``target`` (as any code could run instead)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return pathlib.Path.write_text, (pathlib.Path(self.target), "this ran on load")


def crafted_pickle(target: Path) -> bytes:
    payload = pickle.dumps(WritesAFile(target))
    control = target.with_name("control")  # the payload is live: unpickled, it writes its file
    pickle.loads(pickle.dumps(WritesAFile(control)))
    assert control.read_text() == "this ran on load"
    return payload


@pytest.fixture
def model_folder(synthetic_fit_run: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "mobilenet" / "fold1"
    shutil.copytree(synthetic_fit_run / "mobilenet" / "fold1", folder)
    assert load_saved_model(folder).primary == "video"
    return folder


def test_a_pickle_in_the_folder_is_refused_unloaded(model_folder: Path, tmp_path: Path):
    marker = tmp_path / "marker"
    (model_folder / "video.joblib").write_bytes(crafted_pickle(marker))
    with pytest.raises(LusfeatError) as refused:
        load_saved_model(model_folder)
    message = str(refused.value)
    assert "video.joblib: a pickled model" in message and "never loads one" in message
    assert "--fold 1 --out" in message and str(model_folder.parent.parent) in message
    assert not marker.exists()


def test_a_pickle_under_an_array_name_with_its_sha256_recorded_is_refused_unloaded(model_folder: Path, tmp_path: Path):
    marker = tmp_path / "marker"
    payload = crafted_pickle(marker)
    (model_folder / "video.npz").write_bytes(payload)
    record = json.loads((model_folder / "model.json").read_text())
    record["files"]["video.npz"] = hashlib.sha256(payload).hexdigest()  # as a careful attacker would
    (model_folder / "model.json").write_text(json.dumps(record))
    with pytest.raises(LusfeatError, match="video.npz: a pickled model"):
        load_saved_model(model_folder)
    assert not marker.exists()


def test_a_folder_of_model_format_1_is_refused_with_the_command_that_refits_it(model_folder: Path):
    record = json.loads((model_folder / "model.json").read_text())
    for name in ("model_format", "files"):
        record.pop(name)
    (model_folder / "model.json").write_text(json.dumps(record))
    features = json.loads((model_folder / "metrics.json").read_text())["features"]["path"]
    with pytest.raises(LusfeatError) as refused:
        load_saved_model(model_folder)
    assert "model format 1, this lusfeat reads 2" in str(refused.value)
    assert f"python -m lusfeat.fit --features {features} --fold 1 --out {model_folder.parent.parent}" in str(refused.value)
