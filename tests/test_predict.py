"""Scoring new data with a saved model: region names, made-up and real COVID-BLUES videos, refused mismatches.

Most tests score the made-up videos of ``tiny_study`` with the model ``lusfeat.fit`` trained on their
features (``tiny_study_run``, a random MobileNet weights file: no data, no download); the ``realdata``
ones do the same with real COVID-BLUES videos and the real ImageNet weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_video

from lusfeat.errors import LusfeatError
from lusfeat.manifest import file_sha256, folder_manifest, region_from_name
from lusfeat.predict import main


@pytest.mark.parametrize(("name", "region"), [
    ("L1.mp4", "L1"), ("R2_2.mp4", "R2"), ("patient_9_L1.mp4", "L1"), ("patient_12_R3_2.mp4", "R3"),
    ("rpl3-0007.png", "RPL3"), ("scan L2.avi", "L2"), ("Frame.L3.jpeg", "L3"), ("L1.mp4", "L1"), ("R3.m4v", "R3"),
    ("L2.mkv", "L2"), ("R1.dcm", "R1"), ("study.L3", "L3"), ("L1_mpeg.mpeg", "L1"),
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
    with pytest.raises(LusfeatError, match="no image, video or DICOM"):
        folder_manifest(tmp_path / "empty")


def test_folder_manifest_reads_files_by_content(tmp_path: Path):
    from conftest import moving_frames, write_video

    write_video(tmp_path / "x.mp4", moving_frames(5), "libx264").rename(tmp_path / "R1")  # a video without suffix
    write_video(tmp_path / "L2.mkv", moving_frames(5), "libx264")
    (tmp_path / "notes.txt").write_text("region L3 looked fine\n" * 10)  # text: not media, skipped
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 64)
    assert folder_manifest(tmp_path)[["path", "region"]].values.tolist() == [["L2.mkv", "L2"], ["R1", "R1"]]


def test_folder_manifest_takes_dicom_files_with_and_without_suffix(tmp_path: Path):
    pytest.importorskip("pydicom", reason="DICOM support is an optional extra: pip install 'lusfeat[dicom]'")
    from conftest import dicom_dataset, moving_frames

    dicom_dataset(moving_frames(3)).save_as(tmp_path / "L1.dcm", enforce_file_format=True)
    dicom_dataset(moving_frames(3)).save_as(tmp_path / "R2", enforce_file_format=True)  # as archives name them
    assert folder_manifest(tmp_path)[["path", "region"]].values.tolist() == [["L1.dcm", "L1"], ["R2", "R2"]]


@pytest.fixture(scope="module")
def tiny_model(tiny_study_run: Path) -> Path:
    """lusfeat.fit's fold-1 model folder of the made-up study (trained on four of patients 1-6; 7 held out)."""
    folder = tiny_study_run / "mobilenet" / "fold1"
    assert set(json.loads((folder / "model.json").read_text())["train_patients"]).isdisjoint({"7"})
    return folder


@pytest.fixture
def held_out(tiny_study) -> list[str]:
    """``--data-root`` and ``--weights`` of the made-up study, and its held-out patient 7's manifest."""
    return [str(tiny_study["held_out"]), "--data-root", str(tiny_study["root"]), "--weights", str(tiny_study["weights"])]


def assert_predict_reproduces_fit(model: Path, manifest: pd.DataFrame, data_root: Path, weights: Path,
                                  tmp_path: Path) -> None:
    """Same frames, same backbone and weights, same models: predict must give fit's test probabilities."""
    fitted = pd.read_csv(model / "predictions.csv", dtype={"patient_id": str})
    patient = fitted["patient_id"].iloc[0]
    path = tmp_path / "again.csv"
    manifest[manifest["patient_id"].astype(str) == patient].assign(score="").to_csv(path, index=False)
    assert main(["--model", str(model), str(path), "--data-root", str(data_root), "--weights", str(weights),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    again = pd.read_csv(tmp_path / "out" / "frames.csv", dtype={"patient_id": str})
    assert (again["score"] == -1).all()
    fitted = fitted[fitted["patient_id"] == patient]
    merged = fitted.merge(again, on=["path", "frame_index"], suffixes=("_fit", "_predict"))
    assert len(merged) == len(fitted) == len(again) > 0
    for name in ("head", "logreg", "video"):  # every model of the folder, scored from recomputed features
        for k in range(4):
            assert np.allclose(merged[f"{name}_p{k}_fit"], merged[f"{name}_p{k}_predict"], atol=1e-4), name
        # One tie rule in fit and predict: the scores agree wherever recomputation noise (1e-4)
        # cannot change the decision (argmax margin, or the ordinal median's distance from 0.5).
        proba = merged[[f"{name}_p{k}_fit" for k in range(4)]].to_numpy()
        if name == "video":
            clear = (np.abs(np.cumsum(proba, axis=1)[:, :3] - 0.5) > 2e-4).all(axis=1)
        else:
            top = np.sort(proba, axis=1)
            clear = top[:, -1] - top[:, -2] > 2e-4
        assert clear.mean() > 0.9
        assert (merged.loc[clear, f"{name}_pred_fit"] == merged.loc[clear, f"{name}_pred_predict"]).all(), name


def test_predict_reproduces_fit_on_its_own_test_patient(tiny_model, tiny_study, tmp_path):
    manifest = pd.read_csv(tiny_study["manifest"], dtype=str, keep_default_na=False)
    assert_predict_reproduces_fit(tiny_model, manifest, tiny_study["root"], tiny_study["weights"], tmp_path)


def test_predict_reproduces_fit_on_real_covid_blues(tiny_fit_run, data_root, weights_dir, blues_manifest, tmp_path):
    assert_predict_reproduces_fit(tiny_fit_run / "mobilenet" / "fold1", blues_manifest, data_root, weights_dir, tmp_path)


def test_predict_two_held_out_videos_from_a_manifest(tiny_model, held_out, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model), *held_out, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "patient 7: global score" in printed and "(true 4)" in printed and "over 2 regions (0-6)" in printed
    frames = pd.read_csv(out / "frames.csv", dtype={"patient_id": str})
    probabilities = frames[[f"head_p{k}" for k in range(4)]].to_numpy()
    # the model's frame step by default: frames 0, 2, 4, 6 of each 8-frame video
    assert frames["frame_index"].tolist() == [0, 2, 4, 6] * 2
    assert np.allclose(probabilities.sum(axis=1), 1) and (probabilities >= 0).all()
    assert (frames["head_pred"] == probabilities.argmax(axis=1)).all()
    assert set(frames["video_id"]) == {"patient_7_L1", "patient_7_R2"} and set(frames["score"]) == {1, 3}
    regions = pd.read_csv(out / "regions.csv", dtype={"patient_id": str})
    assert regions["region"].tolist() == ["L1", "R2"] and regions["truth"].tolist() == [3, 1]
    assert regions["pred"].between(0, 3).all()
    # the made-up B-lines show in the random network's features: the video model is near the truth
    assert (regions["pred"] - regions["truth"]).abs().max() <= 1
    patients = pd.read_csv(out / "patients.csv", dtype={"patient_id": str})
    assert patients["pred"].item() == regions["pred"].sum() and patients["regions"].item() == 2
    assert len(pd.read_csv(out / "videos.csv")) == 2
    videos = pd.read_csv(out / "videos.csv")
    assert videos["in_distribution"].dtype == bool and (videos["distance"] > 0).all()
    assert pd.read_csv(out / "not_scored.csv").empty
    result = json.loads((out / "predictions.json").read_text())
    assert result["model"]["backbone"] == "mobilenet" and result["frame_step"] == 2 and result["frames"] == 8
    patient = result["patients"][0]
    assert patient["patient_id"] == "7" and patient["global_score"] == patients["pred"].item()
    assert patient["true_global_score"] == 4 and set(patient["regions"]) == {"L1", "R2"}
    l1 = patient["regions"]["L1"]
    assert l1["score"] == regions["pred"].iloc[0] and sum(l1["frames_per_score"]) == l1["frames"] == 4
    assert list(l1["videos"]) == ["patient_7_L1"] and abs(sum(l1["probabilities"]) - 1) < 1e-4
    assert l1["true_score"] == 3
    agreement = result["agreement"]
    assert agreement["regions"] == 2
    assert agreement["region_accuracy"] == pytest.approx((regions["pred"] == regions["truth"]).mean())
    assert agreement["global_mae"] == pytest.approx(abs(patients["pred"].item() - 4))
    # the default scorer is the folder's primary model: the video-level one, one score per video
    assert result["model"]["scorer"] == "video" and result["model"]["models"] == ["video", "head", "logreg"]
    videos = pd.read_csv(out / "videos.csv", dtype={"patient_id": str})
    per_video = frames.groupby("video_id")["video_pred"].agg(["min", "max"])
    assert (per_video["min"] == per_video["max"]).all()
    assert dict(zip(videos["video_id"], videos["pred"], strict=True)) == per_video["min"].to_dict()


def test_scorer_head_aggregates_the_paper_heads_frame_scores(tiny_model, held_out, tmp_path, capsys):
    common = [held_out[0], "--model", str(tiny_model), *held_out[1:], "--no-progress"]
    assert main([*common, "--scorer", "head", "--out", str(tmp_path / "head")]) == 0
    frames = pd.read_csv(tmp_path / "head" / "frames.csv", dtype={"patient_id": str})
    videos = pd.read_csv(tmp_path / "head" / "videos.csv", dtype={"patient_id": str})
    assert len(videos) == 2
    for video in videos.itertuples():
        predicted = frames.loc[frames["video_id"] == video.video_id, "head_pred"]
        counts = np.bincount(predicted, minlength=4)
        assert video.pred == 3 - int(np.argmax(counts[::-1]))  # most frequent frame score, ties to the higher
    # a paper-preset folder has no video model to score with
    paper = tmp_path / "paper_model"
    paper.mkdir()
    for name in ("head", "logreg", "distribution"):
        for suffix in (".json", ".npz"):
            (paper / f"{name}{suffix}").write_bytes((tiny_model / f"{name}{suffix}").read_bytes())
    info = json.loads((tiny_model / "model.json").read_text())
    (paper / "model.json").write_text(json.dumps({**info, "models": ["head", "logreg"], "primary": "head"}))
    assert main([*common[:1], "--model", str(paper), *common[3:], "--scorer", "video", "--out", str(tmp_path / "v")]) == 1
    assert "holds the model(s) head, logreg" in capsys.readouterr().err
    assert main([*common[:1], "--model", str(paper), *common[3:], "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["model"]["scorer"] == "head"
    # the same head scored the same frames with and without its video model beside it
    again = pd.read_csv(tmp_path / "p" / "frames.csv")
    assert "video_pred" not in again and np.allclose(again["head_p3"], frames["head_p3"], atol=1e-6)


def test_predict_a_patient_folder_unlabelled(tiny_model, tiny_study, tmp_path):
    # A video linked, not copied (the data stay where they are), and a still image: one frame.
    folder = tmp_path / "patient_x"
    folder.mkdir()
    (folder / "L1.mp4").symlink_to(tiny_study["root"] / "videos" / "patient_7_L1.mp4")
    write_tiny_video(folder / "R2_2.png", score=1)
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model), str(folder), "--weights", str(tiny_study["weights"]), "--frame-step", "3",
                 "--rule", "mean_proba", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "predictions.json").read_text())
    patient = result["patients"][0]
    assert patient["patient_id"] == "patient_x" and patient["true_global_score"] is None
    assert set(patient["regions"]) == {"L1", "R2"} and result["agreement"] is None and result["rule"] == "mean_proba"
    for region in patient["regions"].values():
        assert region["score"] == int(np.argmax(region["probabilities"])) and region["true_score"] is None
    frames = pd.read_csv(out / "frames.csv")
    assert frames[["path", "frame_index"]].values.tolist() == [["L1.mp4", 0], ["L1.mp4", 3], ["L1.mp4", 6],
                                                               ["R2_2.png", 0]]
    assert (frames["score"] == -1).all()
    assert pd.read_csv(out / "input_manifest.csv")["path"].tolist() == ["L1.mp4", "R2_2.png"]


def test_mismatched_weights_or_input_size_are_refused(tiny_model, tiny_study, tmp_path, capsys):
    recorded = json.loads((tiny_model / "model.json").read_text())["extraction"]["weights"]
    assert recorded == file_sha256(tiny_study["weights"])
    common = ["--model", str(tiny_model), str(tiny_study["held_out"]), "--data-root", str(tiny_study["root"]),
              "--out", str(tmp_path / "o")]
    assert main([*common, "--weights", "none"]) == 1
    error = capsys.readouterr().err
    assert "backbone weights" in error and recorded in error and "'none'" in error
    assert main([*common, "--weights", str(tiny_study["weights"]), "--input-size", "192"]) == 1
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
    assert "video.json not found: the model folder is incomplete" in capsys.readouterr().err
    for path in tiny_model.glob("*.*"):
        if path.suffix in (".json", ".npz") and path.name not in ("model.json", "metrics.json"):
            (broken / path.name).write_bytes(path.read_bytes())
    (broken / "video.npz").write_bytes(b"not an array file")
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    assert "video.npz: its sha256 is not the one model.json records" in capsys.readouterr().err
    (broken / "video.npz").write_bytes((tiny_model / "video.npz").read_bytes())
    record["extraction"]["feature_dim"] = 1024
    (broken / "model.json").write_text(json.dumps(record))
    assert main(["--model", str(broken), str(tmp_path), "--weights", "none"]) == 1
    assert "fitted on 256 features, but model.json records 1024" in capsys.readouterr().err
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


def test_a_folder_that_fails_leaves_out_untouched(tiny_model, tiny_study, tmp_path, capsys):
    folder = tmp_path / "patient_y"
    folder.mkdir()
    (folder / "L1.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    assert main(["--model", str(tiny_model), str(folder), "--weights", str(tiny_study["weights"]), "--out", str(out),
                 "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "L1.mp4" in error and "tmp" not in error.replace(str(tmp_path), "")
    assert not out.exists()


def test_the_final_model_scores_with_calibrated_probabilities_and_score_sets(tiny_study_run, held_out, tmp_path,
                                                                             capsys):
    from lusfeat.fit import main as fit

    run = tmp_path / "run"
    features = tiny_study_run.parent / "features" / "mobilenet.h5"
    assert fit(["--final", "--features", str(features), "--out", str(run)]) == 0
    final = run / "mobilenet" / "final"
    assert set(json.loads((final / "model.json").read_text())["train_patients"]) == {"1", "2", "3", "4", "5", "6"}
    common = ["--model", str(final), *held_out, "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "out")]) == 0
    assert "score sets at 90% coverage" in capsys.readouterr().out
    out = tmp_path / "out"
    videos = pd.read_csv(out / "videos.csv", dtype={"patient_id": str})
    regions = pd.read_csv(out / "regions.csv", dtype={"patient_id": str})
    frames = pd.read_csv(out / "frames.csv", dtype={"patient_id": str})
    for table in (videos, regions):
        assert {"score_set", "set_size"} <= set(table.columns)
        assert table["score_set"].str.match(r"^\{[0-3](,[0-3])*\}$").all()
    # videos.csv carries the video model's calibrated probabilities and its set
    for video in videos.itertuples():
        mine = frames[frames["video_id"] == video.video_id]
        assert video.p0 == pytest.approx(mine["video_cal_p0"].mean())
        assert video.score_set == mine["video_set"].iloc[0]
    result = json.loads((out / "predictions.json").read_text())
    assert result["model"]["fold"] == "final" and result["uncertainty"]["coverage"] == 0.9
    assert result["uncertainty"]["calibrated"] and "on average over videos" in result["uncertainty"]["note"]
    l1 = result["patients"][0]["regions"]["L1"]
    assert l1["score_set"] == l1["videos"]["patient_7_L1"]["score_set"]
    # a lower coverage never widens a set
    assert main([*common, "--coverage", "0.5", "--out", str(tmp_path / "half")]) == 0
    half = pd.read_csv(tmp_path / "half" / "videos.csv", dtype={"patient_id": str})
    assert (half["set_size"].to_numpy() <= videos["set_size"].to_numpy()).all()
    assert main([*common, "--coverage", "90", "--out", str(tmp_path / "bad")]) == 1
    assert "--coverage 90" in capsys.readouterr().err


def test_a_folder_of_mixed_files_scores_what_it_can(tiny_model, tiny_study, tmp_path, capsys):
    """A video of the made-up study, a noise video, a cut video, a DICOM loop and an unreadable file, in one folder."""
    pytest.importorskip("pydicom", reason="DICOM support is an optional extra: pip install 'lusfeat[dicom]'")
    from conftest import cut_file, dicom_dataset, leaked_identifiers, moving_frames, write_video

    folder = tmp_path / "patient_z"
    folder.mkdir()
    (folder / "L1.mp4").symlink_to(tiny_study["root"] / "videos" / "patient_7_L1.mp4")
    noise = [np.random.default_rng(i).integers(0, 256, (120, 160, 3), dtype=np.uint8) for i in range(40)]
    write_video(folder / "L2.mkv", noise, "libx264")
    whole = write_video(tmp_path / "whole.mp4", moving_frames(60, 96, 96), "libx264",
                        options={"g": "12"}, container_options={"movflags": "faststart"})
    cut_file(whole, folder / "L3.mp4", 0.8)
    dicom_dataset(moving_frames(20, 96, 96)).save_as(folder / "R1.dcm", enforce_file_format=True)
    (folder / "R2.mp4").write_bytes(b"this is not a video" * 40)
    out = tmp_path / "out"
    common = ["--model", str(tiny_model), str(folder), "--weights", str(tiny_study["weights"]), "--frame-step", "2",
              "--no-progress"]
    assert main([*common, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not scored: R2.mp4 (patient patient_z, region R2): cannot open as image or video" in printed
    assert "L3.mp4: its container announces 60 frames but" in printed and "the stream ends early" in printed
    not_scored = pd.read_csv(out / "not_scored.csv")
    assert not_scored["path"].tolist() == ["R2.mp4"] and not_scored["reason"].str.contains("cannot open").all()
    videos = pd.read_csv(out / "videos.csv").set_index("region")
    assert sorted(videos.index) == ["L1", "L2", "L3", "R1"]
    # Noise is farther from the training videos than a video like them (whether it passes the threshold of a
    # model fitted on four made-up patients is not tested here: benchmarks/in_distribution.py measures it on real folds).
    assert videos.loc["L2", "distance"] > videos.loc["L1", "distance"]
    threshold = json.loads((tiny_model / "model.json").read_text())["distribution"]["threshold"]
    assert (videos["in_distribution"] == (videos["distance"] <= threshold)).all()
    result = json.loads((out / "predictions.json").read_text())
    assert [row["path"] for row in result["not_scored"]] == ["R2.mp4"] and len(result["warnings"]) == 1
    assert result["in_distribution"]["checked"] and result["in_distribution"]["threshold"] == pytest.approx(threshold)
    frames = pd.read_csv(out / "frames.csv")
    assert frames.groupby("path")["frame_index"].max().to_dict()["R1.dcm"] == 18
    # Nothing of the DICOM file's patient reaches any output.
    assert leaked_identifiers(out) == {}
    # --strict refuses the input before any work, naming the file; a folder of unreadable files scores nothing.
    assert main([*common, "--out", str(tmp_path / "strict"), "--strict"]) == 1
    error = capsys.readouterr().err
    assert "R2.mp4' is not a readable image or video" in error and not (tmp_path / "strict").exists()


def test_summary_warns_of_videos_unlike_the_training_data_and_of_folders_without_the_check():
    from lusfeat.predict import summary_lines

    flagged = {"checked": True, "videos": 3, "threshold": 2.5,
               "flagged": [{"patient_id": "p1", "video_id": "L2", "distance": 9.87}]}
    lines = summary_lines({"patients": [], "agreement": None, "in_distribution": flagged, "warnings": [],
                           "not_scored": [{"path": "x.mp4", "patient_id": "p1", "region": "R1", "reason": "zero frames"}]})
    assert lines[0].startswith("warning: 1 of 3 videos look unlike the videos the model was trained on (distance "
                               "above 2.50): p1/L2 (9.87)")
    assert lines[1] == "not scored: x.mp4 (patient p1, region R1): zero frames"
    old = summary_lines({"patients": [], "agreement": None, "in_distribution": {"checked": False}})
    assert old and "has no distribution check" in old[0]
