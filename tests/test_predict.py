"""Scoring new data with a saved model: region names, real COVID-BLUES videos, refused mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.manifest import folder_manifest, region_from_name
from lusfeat.predict import main

TEST_VIDEOS = ["patient_9_L1", "patient_9_R2"]  # true scores 3 and 2; patient 9 is not in training


@pytest.mark.parametrize(("name", "region"), [
    ("L1.mp4", "L1"), ("R2_2.mp4", "R2"), ("patient_9_L1.mp4", "L1"), ("patient_12_R3_2.mp4", "R3"),
    ("rpl3-0007.png", "RPL3"), ("scan L2.avi", "L2"), ("Frame.L3.jpeg", "L3"),
    ("patient_9.mp4", None), ("video.mp4", None), ("12.mp4", None), ("left_anterior.mp4", None),
])
def test_region_from_name(name, region):
    assert region_from_name(name) == region


def test_folder_manifest_names_patient_by_folder_and_refuses_unnamed_files(tmp_path: Path):
    patient = tmp_path / "patient_42"
    patient.mkdir()
    for name in ("L1.mp4", "R2_2.mp4", "notes.txt"):
        (patient / name).write_bytes(b"")
    table = folder_manifest(patient)
    assert table[["path", "patient_id", "region"]].values.tolist() == [
        ["L1.mp4", "patient_42", "L1"], ["R2_2.mp4", "patient_42", "R2"]]
    assert folder_manifest(tmp_path)["path"].tolist() == ["patient_42/L1.mp4", "patient_42/R2_2.mp4"]
    (patient / "whatever.mp4").write_bytes(b"")
    with pytest.raises(LusfeatError, match="no region in the name of whatever.mp4"):
        folder_manifest(patient)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LusfeatError, match="no image or video"):
        folder_manifest(tmp_path / "empty")


@pytest.fixture(scope="module")
def tiny_model(tiny_fit_run: Path) -> Path:
    """lusfeat.fit's fold-1 model folder of the tiny real run (trained on two of patients 3, 4, 6)."""
    folder = tiny_fit_run / "mobilenet" / "fold1"
    assert set(json.loads((folder / "model.json").read_text())["train_patients"]).isdisjoint({"9"})
    return folder


def test_predict_reproduces_fit_on_its_own_test_patient(tiny_model, data_root, weights_dir, blues_manifest, tmp_path):
    # Same frames, same backbone and weights, same head: predict must give fit's test probabilities.
    fitted = pd.read_csv(tiny_model / "predictions.csv", dtype={"patient_id": str})
    patient = fitted["patient_id"].iloc[0]
    manifest = tmp_path / "again.csv"
    blues_manifest[blues_manifest["patient_id"] == patient].assign(score="").to_csv(manifest, index=False)
    assert main(["--model", str(tiny_model), str(manifest), "--data-root", str(data_root), "--weights", str(weights_dir),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    again = pd.read_csv(tmp_path / "out" / "frames.csv", dtype={"patient_id": str})
    assert (again["score"] == -1).all()
    merged = fitted.merge(again, on=["path", "frame_index"], suffixes=("_fit", "_predict"))
    assert len(merged) == len(fitted) == len(again)
    for model in ("head", "logreg", "video"):  # every model of the folder, scored from recomputed features
        for k in range(4):
            assert np.allclose(merged[f"{model}_p{k}_fit"], merged[f"{model}_p{k}_predict"], atol=1e-4), model
        # One tie rule in fit and predict: the scores agree wherever recomputation noise (1e-4)
        # cannot change the decision (argmax margin, or the ordinal median's distance from 0.5).
        proba = merged[[f"{model}_p{k}_fit" for k in range(4)]].to_numpy()
        if model == "video":
            clear = (np.abs(np.cumsum(proba, axis=1)[:, :3] - 0.5) > 2e-4).all(axis=1)
        else:
            top = np.sort(proba, axis=1)
            clear = top[:, -1] - top[:, -2] > 2e-4
        assert clear.mean() > 0.9
        assert (merged.loc[clear, f"{model}_pred_fit"] == merged.loc[clear, f"{model}_pred_predict"]).all(), model


def test_predict_two_held_out_videos_from_a_manifest(tiny_model, data_root, weights_dir, blues_manifest, tmp_path, capsys):
    manifest = tmp_path / "new.csv"
    rows = blues_manifest[blues_manifest["video_id"].isin(TEST_VIDEOS)]
    rows.to_csv(manifest, index=False)
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model), str(manifest), "--data-root", str(data_root), "--weights", str(weights_dir),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "patient 9: global score" in printed and "(true 5)" in printed and "over 2 regions (0-6)" in printed
    frames = pd.read_csv(out / "frames.csv", dtype={"patient_id": str})
    probabilities = frames[[f"head_p{k}" for k in range(4)]].to_numpy()
    assert len(frames) > 4 and (frames["frame_index"] % 30 == 0).all()  # the model's frame step by default
    assert np.allclose(probabilities.sum(axis=1), 1) and (probabilities >= 0).all()
    assert (frames["head_pred"] == probabilities.argmax(axis=1)).all()
    assert set(frames["video_id"]) == set(TEST_VIDEOS) and set(frames["score"]) == {2, 3}
    regions = pd.read_csv(out / "regions.csv", dtype={"patient_id": str})
    assert regions["region"].tolist() == ["L1", "R2"] and regions["truth"].tolist() == [3, 2]
    assert regions["pred"].between(0, 3).all()
    patients = pd.read_csv(out / "patients.csv", dtype={"patient_id": str})
    assert patients["pred"].item() == regions["pred"].sum() and patients["regions"].item() == 2
    assert len(pd.read_csv(out / "videos.csv")) == 2
    result = json.loads((out / "predictions.json").read_text())
    assert result["model"]["backbone"] == "mobilenet" and result["frame_step"] == 30
    patient = result["patients"][0]
    assert patient["patient_id"] == "9" and patient["global_score"] == patients["pred"].item()
    assert patient["true_global_score"] == 5 and set(patient["regions"]) == {"L1", "R2"}
    l1 = patient["regions"]["L1"]
    assert l1["score"] == regions["pred"].iloc[0] and sum(l1["frames_per_score"]) == l1["frames"]
    assert list(l1["videos"]) == ["patient_9_L1"] and abs(sum(l1["probabilities"]) - 1) < 1e-4
    assert result["agreement"]["regions"] == 2
    # the default scorer is the folder's primary model: the video-level one, one score per video
    assert result["model"]["scorer"] == "video" and result["model"]["models"] == ["video", "head", "logreg"]
    videos = pd.read_csv(out / "videos.csv", dtype={"patient_id": str})
    per_video = frames.groupby("video_id")["video_pred"].agg(["min", "max"])
    assert (per_video["min"] == per_video["max"]).all()
    assert dict(zip(videos["video_id"], videos["pred"], strict=True)) == per_video["min"].to_dict()


def test_scorer_head_aggregates_the_paper_heads_frame_scores(tiny_model, data_root, weights_dir, blues_manifest,
                                                             tmp_path, capsys):
    manifest = tmp_path / "new.csv"
    blues_manifest[blues_manifest["video_id"].isin(TEST_VIDEOS)].to_csv(manifest, index=False)
    common = [str(manifest), "--model", str(tiny_model), "--data-root", str(data_root), "--weights", str(weights_dir),
              "--no-progress"]
    assert main([*common, "--scorer", "head", "--out", str(tmp_path / "head")]) == 0
    frames = pd.read_csv(tmp_path / "head" / "frames.csv", dtype={"patient_id": str})
    videos = pd.read_csv(tmp_path / "head" / "videos.csv", dtype={"patient_id": str})
    for video in videos.itertuples():
        predicted = frames.loc[frames["video_id"] == video.video_id, "head_pred"]
        counts = np.bincount(predicted, minlength=4)
        assert video.pred == 3 - int(np.argmax(counts[::-1]))  # most frequent frame score, ties to the higher
    # a paper-preset folder has no video model to score with
    paper = tmp_path / "paper_model"
    paper.mkdir()
    for name in ("head.keras", "logreg.joblib"):
        (paper / name).write_bytes((tiny_model / name).read_bytes())
    info = json.loads((tiny_model / "model.json").read_text())
    (paper / "model.json").write_text(json.dumps({**info, "models": ["head", "logreg"], "primary": "head"}))
    assert main([*common[:1], "--model", str(paper), *common[3:], "--scorer", "video", "--out", str(tmp_path / "v")]) == 1
    assert "holds the model(s) head, logreg" in capsys.readouterr().err
    assert main([*common[:1], "--model", str(paper), *common[3:], "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["model"]["scorer"] == "head"


def test_predict_a_patient_folder_unlabelled(tiny_model, data_root, weights_dir, tmp_path):
    # Links, not copies: the data stay where they are.
    folder = tmp_path / "patient_x"
    folder.mkdir()
    videos = data_root / "COVID-BLUES" / "lus_videos"
    (folder / "L1.mp4").symlink_to(videos / "patient_9_L1.mp4")
    (folder / "R2_2.mp4").symlink_to(videos / "patient_9_R2.mp4")
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model), str(folder), "--weights", str(weights_dir), "--frame-step", "45",
                 "--rule", "mean_proba", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "predictions.json").read_text())
    patient = result["patients"][0]
    assert patient["patient_id"] == "patient_x" and patient["true_global_score"] is None
    assert set(patient["regions"]) == {"L1", "R2"} and result["agreement"] is None and result["rule"] == "mean_proba"
    for region in patient["regions"].values():
        assert region["score"] == int(np.argmax(region["probabilities"])) and region["true_score"] is None
    assert (pd.read_csv(out / "frames.csv")["frame_index"] % 45 == 0).all()
    assert (out / "input_manifest.csv").is_file()


def test_mismatched_weights_or_input_size_are_refused(tiny_model, data_root, weights_dir, blues_manifest, tmp_path, capsys):
    manifest = tmp_path / "new.csv"
    blues_manifest[blues_manifest["video_id"] == TEST_VIDEOS[0]].to_csv(manifest, index=False)
    recorded = json.loads((tiny_model / "model.json").read_text())["extraction"]["weights"]
    common = ["--model", str(tiny_model), str(manifest), "--data-root", str(data_root), "--out", str(tmp_path / "o")]
    assert main([*common, "--weights", "none"]) == 1
    error = capsys.readouterr().err
    assert "backbone weights" in error and recorded in error and "'none'" in error
    assert main([*common, "--weights", str(weights_dir), "--input-size", "192"]) == 1
    assert "input size: model trained at 224 px, you asked 192 px" in capsys.readouterr().err
    assert not (tmp_path / "o" / "predictions.json").exists()


def test_model_folder_problems_are_clear_errors(tiny_model, tmp_path, capsys):
    assert main(["--model", str(tmp_path), str(tmp_path), "--weights", "none"]) == 1
    assert "model.json not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    record = json.loads((tiny_model / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps(record))
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    assert "video.joblib not found: model.json lists the video model" in capsys.readouterr().err
    for name in ("head.keras", "logreg.joblib", "video.joblib"):
        (broken / name).write_bytes((tiny_model / name).read_bytes())
    (broken / "video.joblib").write_bytes(b"not a pickle")
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    assert "video.joblib: not a loadable model file" in capsys.readouterr().err
    (broken / "video.joblib").write_bytes((tiny_model / "video.joblib").read_bytes())
    record["extraction"]["feature_dim"] = 1024
    (broken / "model.json").write_text(json.dumps(record))
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    assert "fitted on 256 features, but model.json records 1024" in capsys.readouterr().err
    record["models"], record["primary"] = ["head"], "head"  # as a folder from before presets: the head alone
    (broken / "model.json").write_text(json.dumps(record))
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    assert "maps 256 features to 4 classes, but model.json records 1024 features" in capsys.readouterr().err
    record["extraction"]["feature_dim"] = 256
    record["extraction"]["pooling"] = "avg:lung-crop-v1"  # features of cropped frames: predict cannot make them
    (broken / "model.json").write_text(json.dumps(record))
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    error = capsys.readouterr().err
    assert "pooling: model trained on 'avg:lung-crop-v1' features" in error and "backbone weights" in error
    record["extraction"]["pooling"], record["extraction"]["backbone"] = "avg", "lus_signal"
    (broken / "model.json").write_text(json.dumps(record))
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    assert "trained on 'lus_signal' features, which lusfeat.predict cannot compute" in capsys.readouterr().err


def test_a_folder_that_fails_leaves_out_untouched(tiny_model, weights_dir, tmp_path, capsys):
    folder = tmp_path / "patient_y"
    folder.mkdir()
    (folder / "L1.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model), str(folder), "--weights", str(weights_dir), "--out", str(out),
                 "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "L1.mp4" in error and "tmp" not in error.replace(str(tmp_path), "")
    assert not out.exists()
