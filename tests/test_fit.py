"""lusfeat.fit on a synthetic feature file (tests/conftest.py: written by the product's FeatureWriter, no data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lusfeat.fit import main
from lusfeat.index import FrameIndex
from lusfeat.predictions import FRAME_COLUMNS, ModelPredictions, Predictions
from lusfeat.records import compare_models
from lusfeat.runfolder import load_saved_model
from lusfeat.store import load_features

PAPER_COLUMNS = [
    "path", "frame_index", "patient_id", "region", "video_id", "group", "score",
    "head_p0", "head_p1", "head_p2", "head_p3", "head_pred",
    "logreg_p0", "logreg_p1", "logreg_p2", "logreg_p3", "logreg_pred",
]
POSTHOC_COLUMNS = {model: [*(f"{model}_cal_p{k}" for k in range(4)), f"{model}_set"] for model in ("head", "logreg", "video")}
PREDICTION_COLUMNS = [*PAPER_COLUMNS, "video_p0", "video_p1", "video_p2", "video_p3", "video_pred",
                      *POSTHOC_COLUMNS["head"], *POSTHOC_COLUMNS["logreg"], *POSTHOC_COLUMNS["video"], "fold"]
MODEL_KEYS = {"backbone", "fold", "extraction", "weights_source", "feature_dim", "classes", "train_patients",
              "lusfeat_version", "models", "primary", "files", "model_format"}
MODEL_FILES = {f"{name}.{suffix}" for name in ("head", "logreg", "video", "distribution") for suffix in ("json", "npz")}


@pytest.fixture(scope="module")
def full_run(synthetic_fit_run: Path) -> Path:
    """``lusfeat.fit --fold all`` with its defaults on the synthetic file (6 patients, 3 copies)."""
    return synthetic_fit_run


def test_run_folder_layout(full_run: Path, synthetic_features: Path, capsys):
    folds = pd.read_csv(full_run / "folds.csv", dtype={"patient_id": str})
    assert list(folds.columns) == ["patient_id", "fold"]
    assert sorted(folds["patient_id"], key=int) == ["1", "2", "3", "4", "5", "6"]
    features = load_features(synthetic_features)
    groups = features.frames.groupby("patient_id")["group"].first()
    for fold in (1, 2, 3):  # two patients per fold, one covid and one negative
        members = folds.loc[folds["fold"] == fold, "patient_id"]
        assert sorted(groups[members]) == ["covid", "negative"]

    tested = []
    for fold in (1, 2, 3):
        folder = full_run / "mobilenet" / f"fold{fold}"
        assert {p.name for p in folder.iterdir()} == {"predictions.csv", "metrics.json", "model.json", *MODEL_FILES}
        predictions = pd.read_csv(folder / "predictions.csv", dtype={"patient_id": str})
        assert list(predictions.columns) == PREDICTION_COLUMNS
        assert (predictions["fold"] == fold).all()
        assert set(predictions["patient_id"]) == set(folds.loc[folds["fold"] == fold, "patient_id"])
        probabilities = predictions[[f"head_p{k}" for k in range(4)]].to_numpy()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(predictions["head_pred"], probabilities.argmax(axis=1))

        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["backbone"] == "mobilenet" and metrics["fold"] == fold
        assert metrics["n_test_frames"] == len(predictions)
        assert metrics["n_train_frames"] + len(predictions) == len(features.frames)
        assert set(metrics["train_patients"]).isdisjoint(metrics["test_patients"])
        assert metrics["models"] == ["video", "head", "logreg"] and metrics["primary"] == "video"
        for model in ("head", "logreg", "video"):
            block = metrics[model]
            assert 0 <= block["accuracy"] <= 1 and block["fit_seconds"] > 0
            assert block["video"]["n"] == predictions.groupby("video_id").ngroups
            assert np.sum(block["confusion_matrix"]) == len(predictions)
            assert block["accuracy"] == pytest.approx((predictions[f"{model}_pred"] == predictions["score"]).mean())
        assert metrics["features"]["backbone"] == "mobilenet" and metrics["features"]["copies"] == 3
        assert metrics["params"]["epochs"] == 3 and isinstance(metrics["warnings"], list)

        model = json.loads((folder / "model.json").read_text())
        assert MODEL_KEYS <= set(model)
        assert model["extraction"]["frame_step"] == 10 and model["feature_dim"] == 256
        assert model["weights_source"] == "synthetic (tests/conftest.py)"
        assert model["classes"] == [0, 1, 2, 3] and model["train_patients"] == metrics["train_patients"]
        # the distribution check: fitted on the training videos, its held-out flag rate recorded
        check = metrics["in_distribution"]
        assert check["test_videos"] == predictions.groupby("video_id").ngroups
        assert check["flag_rate"] == pytest.approx(check["flagged"] / check["test_videos"])
        assert model["distribution"]["threshold"] == check["threshold"] > 0
        assert any("calibrated on only 4 training patients" in text for text in metrics["warnings"])
        tested.append(predictions)

    pooled = pd.read_csv(full_run / "mobilenet" / "pooled" / "predictions.csv", dtype={"patient_id": str})
    pd.testing.assert_frame_equal(pooled, pd.concat(tested, ignore_index=True))
    assert len(pooled) == len(features.frames)
    pooled_metrics = json.loads((full_run / "mobilenet" / "pooled" / "metrics.json").read_text())
    assert pooled_metrics["fold"] == "pooled" and pooled_metrics["folds"] == [1, 2, 3]
    assert pooled_metrics["head"]["accuracy"] == pytest.approx((pooled["head_pred"] == pooled["score"]).mean())
    assert pooled_metrics["in_distribution"]["test_videos"] == pooled.groupby(["patient_id", "video_id"]).ngroups

    summary = pd.read_csv(full_run / "summary.csv", dtype={"fold": str})
    assert list(summary.columns) == ["backbone", "fold", "model", "accuracy", "macro_f1", "qwk", "roc_auc", "seconds"]
    assert list(summary["fold"]) == ["1"] * 3 + ["2"] * 3 + ["3"] * 3 + ["pooled"] * 3
    assert list(summary["model"][:3]) == ["head", "logreg", "video"]


def test_models_learn_the_score_the_features_carry(full_run: Path):
    # The synthetic scores show in the features (tests/conftest.py): on patients they never saw, the regression
    # and the video model find them in every fold; frames and labels shuffled on the way would give QWK near 0.
    pooled = json.loads((full_run / "mobilenet" / "pooled" / "metrics.json").read_text())
    for model in ("video", "logreg"):
        assert min(pooled[model]["per_fold"]["qwk"]) > 0.5, model
        assert pooled[model]["accuracy"] > 0.4 and pooled[model]["roc_auc_macro"] > 0.7, model


def test_saved_models_reproduce_the_predictions(full_run: Path, synthetic_features: Path):
    features = load_features(synthetic_features)
    folder = full_run / "mobilenet" / "fold2"
    predictions = pd.read_csv(folder / "predictions.csv", dtype={"patient_id": str}, float_precision="round_trip")
    is_test = features.frames["patient_id"].isin(set(predictions["patient_id"])).to_numpy()
    # predictions.csv keeps the feature file's frame order
    assert list(features.frames.loc[is_test, "path"]) == list(predictions["path"])
    saved = load_saved_model(folder)
    again = saved.predictions(features.features[0, is_test], features.frames[is_test])
    for name in ("head", "logreg", "video"):  # the loaded estimator is the fitted one: the same numbers, to the bit
        np.testing.assert_array_equal(again[name].probabilities, predictions[[f"{name}_p{k}" for k in range(4)]])
        np.testing.assert_array_equal(again[name].calibrated, predictions[[f"{name}_cal_p{k}" for k in range(4)]])


def test_same_seed_same_metrics(full_run: Path, synthetic_features: Path, tmp_path: Path):
    again = tmp_path / "again"
    assert main(["--fold", "2", "--features", str(synthetic_features), "--out", str(again)]) == 0
    first = json.loads((full_run / "mobilenet" / "fold2" / "metrics.json").read_text())
    second = json.loads((again / "mobilenet" / "fold2" / "metrics.json").read_text())
    for record in (first, second):
        for model in record["models"]:
            record[model].pop("fit_seconds")
        record["features"].pop("path")
    assert first == second
    pd.testing.assert_frame_equal(pd.read_csv(full_run / "mobilenet" / "fold2" / "predictions.csv"),
                                  pd.read_csv(again / "mobilenet" / "fold2" / "predictions.csv"))


def test_user_mistakes_are_errors_not_tracebacks(synthetic_features: Path, tmp_path: Path, capsys):
    features = str(synthetic_features)
    assert main(["--fold", "4", "--features", features, "--out", str(tmp_path / "a")]) == 1
    assert "--fold 4" in capsys.readouterr().err
    assert main(["--fold", "1", "--features", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "b")]) == 1
    assert "not found" in capsys.readouterr().err
    # a folds.csv made for other patients
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "folds.csv").write_text("patient_id,fold\n1,1\n2,2\n3,3\n")
    assert main(["--fold", "1", "--features", features, "--out", str(tmp_path / "c")]) == 1
    assert "does not cover 3 patient" in capsys.readouterr().err
    # two files of one backbone would share RUN/mobilenet
    shutil.copy(synthetic_features, tmp_path / "copy.h5")
    assert main(["--fold", "1", "--features", features, str(tmp_path / "copy.h5"), "--out", str(tmp_path / "d")]) == 1
    assert "several feature files of backbone mobilenet" in capsys.readouterr().err


def test_warning_when_head_trails_the_regression():
    frames = pd.DataFrame({column: ["x"] * 4 for column in FRAME_COLUMNS})
    predictions = Predictions(frames, {"head": ModelPredictions(np.eye(4), np.array([0, 1, 2, 3])),
                                       "logreg": ModelPredictions(np.eye(4), np.array([0, 1, 2, 2]))})
    kappa, warnings = compare_models({"head": {"accuracy": 0.30}, "logreg": {"accuracy": 0.36}}, predictions)
    assert len(warnings) == 1 and "below its cross-check logreg's" in warnings[0]
    assert 0 < kappa < 1
    assert compare_models({"head": {"accuracy": 0.32}, "logreg": {"accuracy": 0.36}}, predictions)[1] == []


def test_video_model_scores_whole_videos_with_its_C_chosen_inside_the_training_patients(full_run: Path,
                                                                                       synthetic_features: Path):
    features = load_features(synthetic_features)
    for fold in (1, 2, 3):
        folder = full_run / "mobilenet" / f"fold{fold}"
        predictions = pd.read_csv(folder / "predictions.csv", dtype={"patient_id": str, "video_id": str})
        # every frame of a video carries the video's one score and probabilities
        per_video = predictions.groupby(["patient_id", "video_id"])
        assert (per_video["video_pred"].nunique() == 1).all() and (per_video["video_p0"].nunique() == 1).all()
        metrics = json.loads((folder / "metrics.json").read_text())
        video = metrics["video"]
        assert video["C"] in (0.001, 0.01, 0.1) and set(video["inner_video_qwk"]) == {"0.001", "0.01", "0.1"}
        assert video["C"] == max((0.001, 0.01, 0.1), key=lambda c: (video["inner_video_qwk"][str(c)], -c))
        assert video["video"]["n"] == per_video.ngroups
        # the saved model answers the same for the same test frames
        model = load_saved_model(folder).models["video"]
        is_test = features.frames["patient_id"].isin(set(predictions["patient_id"])).to_numpy()
        frames = features.frames[is_test]
        index = FrameIndex.of(frames)
        np.testing.assert_array_equal(model.predict(features.features[0, is_test], index=index), predictions["video_pred"])
        assert model.estimator_.C_ == video["C"]


def test_preset_paper_is_the_paper_stage_two_alone_and_unchanged(full_run: Path, synthetic_features: Path,
                                                                 tmp_path: Path):
    paper = tmp_path / "paper"
    assert main(["--fold", "all", "--preset", "paper", "--features", str(synthetic_features), "--out", str(paper)]) == 0
    folder = paper / "mobilenet" / "fold1"
    assert not (folder / "video.npz").exists() and not (folder / "video.json").exists()
    predictions = pd.read_csv(folder / "predictions.csv")
    paper_columns = [*PAPER_COLUMNS, *POSTHOC_COLUMNS["head"], *POSTHOC_COLUMNS["logreg"], "fold"]
    assert list(predictions.columns) == paper_columns
    # adding the video model changes nothing of the head's or the regression's numbers
    default = pd.read_csv(full_run / "mobilenet" / "fold1" / "predictions.csv")
    pd.testing.assert_frame_equal(predictions, default[paper_columns])
    metrics = json.loads((paper / "mobilenet" / "pooled" / "metrics.json").read_text())
    assert metrics["models"] == ["head", "logreg"] and metrics["primary"] == "head" and "video" not in metrics
    assert json.loads((folder / "model.json").read_text())["primary"] == "head"


@pytest.mark.slow
def test_map_files_are_left_out_by_default_and_refused_when_named(synthetic_features: Path, tmp_path: Path,
                                                                      monkeypatch, capsys):
    import dataclasses

    from lusfeat.store import FeatureWriter

    folder = tmp_path / "features"
    folder.mkdir()
    shutil.copy(synthetic_features, folder / "mobilenet.h5")
    pooled = load_features(synthetic_features)
    config = dataclasses.replace(pooled.config, backbone="xception", source="middle", pooling="none", feature_dim=3,
                                 dtype="float16")
    with FeatureWriter(folder / "xception-middle.h5", config, pooled.frames, item_shape=(2, 2, 3)) as writer:
        writer.write(0, np.zeros((config.copies, len(pooled.frames), 2, 2, 3), np.float16))
        writer.finish()
    monkeypatch.chdir(tmp_path)
    assert main(["--fold", "1", "--preset", "paper", "--out", "run"]) == 0  # default features/*.h5
    assert {p.name for p in (tmp_path / "run").iterdir() if p.is_dir()} == {"mobilenet"}
    assert main(["--fold", "1", "--features", "features/xception-middle.h5", "--out", "run2"]) == 1
    assert "'middle' maps (an experiment's), not pooled features" in capsys.readouterr().err


def test_calibration_and_sets_are_learned_on_training_patients_only(full_run: Path):
    from lusfeat.predictions import parse_set

    for fold in (1, 2, 3):
        folder = full_run / "mobilenet" / f"fold{fold}"
        metrics = json.loads((folder / "metrics.json").read_text())
        model = json.loads((folder / "model.json").read_text())
        predictions = pd.read_csv(folder / "predictions.csv", dtype={"patient_id": str, "video_id": str})
        for name in ("video", "head", "logreg"):
            calibration = metrics[name]["calibration"]
            assert calibration["temperature"] > 0 and calibration["link"] == ("cumulative" if name == "video" else "softmax")
            # the inner split that made the calibration rows holds training patients only
            assert calibration["inner_patients"] == metrics["train_patients"]
            assert set(calibration["inner_patients"]).isdisjoint(metrics["test_patients"])
            assert model["calibration"][name]["temperature"] == calibration["temperature"]
            assert model["conformal"][name]["threshold"] == metrics[name]["sets"]["threshold"]
            # a temperature never changes a score: same QWK before and after
            assert metrics[name]["calibrated"]["qwk"] == metrics[name]["qwk"]
            for key in ("brier", "ece", "ece_bins"):
                assert key in metrics[name] and key in metrics[name]["calibrated"]
            calibrated = predictions[[f"{name}_cal_p{k}" for k in range(4)]].to_numpy()
            np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-9)
            sets = np.array([parse_set(text) for text in predictions[f"{name}_set"]])
            assert sets.any(axis=1).all()
            assert (predictions.groupby(["patient_id", "video_id"])[f"{name}_set"].nunique() == 1).all()
            video_sets = metrics[name]["sets"]["video"]
            assert video_sets["n"] == metrics[name]["video"]["n"] and 1 <= video_sets["mean_set_size"] <= 4
        assert metrics["coverage"] == metrics["video"]["sets"]["video"]["coverage"]
        assert metrics["target_coverage"] == 0.9
    pooled = json.loads((full_run / "mobilenet" / "pooled" / "metrics.json").read_text())
    assert {"coverage", "mean_set_size", "target_coverage"} <= set(pooled)
    assert pooled["video"]["sets"]["video"]["n"] == pooled["video"]["video"]["n"]
    assert len(pooled["video"]["calibration"]["temperature_per_fold"]) == 3


def test_final_model_is_trained_on_every_patient_and_says_it_has_no_test(full_run: Path, synthetic_features: Path,
                                                                         tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    assert main(["--final", "--features", str(synthetic_features), "--out", str(run)]) == 0
    assert "no held-out test" in capsys.readouterr().out
    folder = run / "mobilenet" / "final"
    assert {p.name for p in folder.iterdir()} == {"metrics.json", "model.json", *MODEL_FILES}
    model = json.loads((folder / "model.json").read_text())
    assert model["fold"] == "final" and sorted(model["train_patients"], key=int) == ["1", "2", "3", "4", "5", "6"]
    assert MODEL_KEYS <= set(model) and set(model["calibration"]) == set(model["conformal"]) == {"video", "head", "logreg"}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["held_out_test"] is False and "no test score" in metrics["note"]
    assert metrics["expected_performance_from"].endswith("pooled/metrics.json")
    assert metrics["pooled_held_out"]["params_match"] is True
    assert metrics["video"]["C"] in (0.001, 0.01, 0.1)
    # without --fold, no folds.csv is needed and the summary is left alone
    fresh = tmp_path / "fresh"
    assert main(["--final", "--features", str(synthetic_features), "--out", str(fresh)]) == 0
    assert not (fresh / "folds.csv").exists() and (fresh / "mobilenet" / "final" / "model.json").is_file()
    assert any("not found" in text for text in json.loads((fresh / "mobilenet" / "final" / "metrics.json").read_text())["warnings"])
    assert main(["--features", str(synthetic_features), "--out", str(fresh)]) == 1
    assert "--final" in capsys.readouterr().err
    assert main(["--final", "--coverage", "1.5", "--features", str(synthetic_features), "--out", str(fresh)]) == 1
    assert "--coverage 1.5" in capsys.readouterr().err
