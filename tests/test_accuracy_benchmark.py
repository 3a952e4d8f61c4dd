"""benchmarks/accuracy.py end to end on small synthetic feature files (no data, no network)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import accuracy

REPO = Path(__file__).resolve().parents[1]


def write_feature_file(folder: Path, name: str, frames: pd.DataFrame, features: np.ndarray,
                       frame_step: int = 10) -> None:
    from lusfeat.store import ExtractionConfig, FeatureWriter

    config = ExtractionConfig(backbone=name, weights="none", input_size=64, feature_dim=features.shape[2],
                              dtype="float32", copies=features.shape[0], aug_rotation=10.0, aug_shift=0.1,
                              aug_zoom=0.1, aug_flip=True, seed=0, frame_step=frame_step, manifest_sha256="0" * 64)
    with FeatureWriter(folder / f"{name}.h5", config, frames) as writer:
        writer.write(0, features.astype(np.float32))
        writer.finish()


def write_synthetic_features(folder: Path, video_id: Callable[[int, str], str]) -> Path:
    """18 patients x 6 regions x 4 frames; the score shows (noisily) in both feature files."""
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(1, 19):
        for region in ("L1", "L2", "L3", "R1", "R2", "R3"):
            score = int(rng.integers(4))
            for frame in range(4):
                rows.append({"path": f"v/patient_{patient}_{region}.mp4", "frame_index": frame * 10,
                             "patient_id": str(patient), "region": region, "score": score,
                             "video_id": video_id(patient, region),
                             "group": "covid" if patient % 2 else "negative"})
    frames = pd.DataFrame(rows)
    scores = frames["score"].to_numpy()
    backbone = np.abs(scores[None, :, None] * 2.0 + rng.normal(size=(2, len(frames), 16)))
    signal = scores[None, :, None] * 0.5 + rng.normal(size=(2, len(frames), 24))
    folder.mkdir(parents=True, exist_ok=True)
    write_feature_file(folder, "xception", frames, backbone)
    write_feature_file(folder, "lus_signal", frames, signal)
    return folder


@pytest.fixture
def synthetic_features(tmp_path: Path) -> Path:
    return write_synthetic_features(tmp_path, lambda patient, region: f"patient_{patient}_{region}")


def test_accuracy_benchmark_writes_the_table_and_json(synthetic_features: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "accuracy.json"
    methods = "xception/paper,xception/logreg-leaky,xception/ordinal,xception/video-ordinal,lus_signal/ordinal"
    code = accuracy.main(["--features", str(synthetic_features), "--seeds", "0,1", "--folds", "2", "--nested-c", "0.01,1", "--methods", methods,
                          "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    names = [result["name"] for result in record["results"]]
    assert names == ["xception/paper", "xception/logreg-leaky", "xception/ordinal", "xception/video-ordinal",
                     "lus_signal/ordinal"]
    assert record["data"] == {"frames": 432, "patients": 18, "videos": 108, "score_counts": record["data"]["score_counts"]}
    by_name = {result["name"]: result for result in record["results"]}
    assert "LEAKY" in by_name["xception/logreg-leaky"]["split"] and by_name["xception/paper"]["split"] == "patient-level"
    for result in record["results"]:
        assert [row["seed"] for row in result["per_seed"]] == [0, 1]
        for metric in accuracy.METRICS:
            assert math.isfinite(result["summary"][metric]["mean"])
        # The score shows in the features: every method must find it (the paper's head, with its
        # few steps on so few frames, less well).
        assert result["summary"]["qwk"]["mean"] > (0.1 if "paper" in result["name"] else 0.5), result["name"]
    nested = by_name["xception/video-ordinal"]["chosen_c"]
    assert len(nested) == 2 * 2 and all(row["C"] in (0.01, 1.0) for row in nested)
    assert by_name["xception/ordinal"]["versus_paper"]["baseline"] == "xception/paper"
    assert "versus_paper" not in by_name["xception/paper"]
    table = capsys.readouterr().out
    assert "| xception/logreg-leaky | frame | LEAKY frame split |" in table

    # A later run adds methods beside the earlier ones (and replaces a method it runs again).
    appended = tmp_path / "appended.json"
    code = accuracy.main(["--features", str(synthetic_features), "--seeds", "0,1", "--folds", "2", "--methods",
                          "xception/logreg,lus_signal/ordinal", "--append", str(out), "--out", str(appended)])
    assert code == 0
    merged = json.loads(appended.read_text())
    assert [result["name"] for result in merged["results"]] == [*names[:-1], "xception/logreg", "lus_signal/ordinal"]
    assert len(merged["commands"]) == 2
    assert merged["results"][-1]["versus_paper"]["baseline"] == "xception/paper"
    assert accuracy.main(["--features", str(synthetic_features), "--seeds", "0", "--folds", "2", "--methods",
                          "xception/logreg", "--append", str(out), "--out", str(appended)]) == 1


def test_frame_step_scores_what_a_coarser_extraction_scores(synthetic_features: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Every frame stored (step 1); --frame-step 2 must score exactly what a file of only the even
    # frames (an extraction at step 2) scores, on the same folds and seeds.
    from lusfeat.store import load_features

    stored = load_features(synthetic_features / "xception.h5")
    every = stored.frames.assign(frame_index=np.tile(np.arange(4), len(stored.frames) // 4))
    write_feature_file(tmp_path / "every", "xception", every, stored.features, frame_step=1)
    even = np.flatnonzero(every["frame_index"].to_numpy() % 2 == 0)
    write_feature_file(tmp_path / "even", "xception", every.iloc[even], stored.features[:, even], frame_step=2)
    methods = ["--seeds", "0,1", "--folds", "2", "--methods", "xception/ordinal,xception/fit-default"]
    runs = {}
    for name, folder, step in (("every", "every", 1), ("subsampled", "every", 2), ("even", "even", 1)):
        out = tmp_path / f"{name}.json"
        assert accuracy.main(["--features", str(tmp_path / folder), "--frame-step", str(step), *methods,
                              "--out", str(out)]) == 0
        runs[name] = json.loads(out.read_text())
    assert runs["every"]["data"]["frames"] == 432 and runs["subsampled"]["data"]["frames"] == 216
    assert runs["subsampled"]["feature_files"]["xception"]["frames_kept_every"] == 2
    for mine, theirs in zip(runs["subsampled"]["results"], runs["even"]["results"], strict=True):
        for seed_mine, seed_theirs in zip(mine["per_seed"], theirs["per_seed"], strict=True):
            for metric in accuracy.METRICS:
                assert seed_mine[metric] == pytest.approx(seed_theirs[metric], abs=1e-12), (mine["name"], metric)
    assert runs["every"]["results"][0]["per_seed"] != runs["subsampled"]["results"][0]["per_seed"]
    # A step that is not a multiple of the stored one cannot be taken from the file.
    assert accuracy.main(["--features", str(tmp_path / "even"), "--frame-step", "3", *methods]) == 1
    assert "every 2 frame(s); give a multiple of 2" in capsys.readouterr().err
    # A file whose only stored frame is odd would vanish: refused, naming it.
    odd = every.assign(frame_index=np.where(every["path"] == every["path"].iloc[0], 1, every["frame_index"]))
    write_feature_file(tmp_path / "odd", "xception", odd, stored.features, frame_step=1)
    assert accuracy.main(["--features", str(tmp_path / "odd"), "--frame-step", "2", *methods]) == 1
    assert f"leaves no frame of 1 file(s), e.g. {every['path'].iloc[0]}" in capsys.readouterr().err


def test_unknown_method_and_missing_file_are_clear_errors(synthetic_features: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert accuracy.main(["--features", str(synthetic_features), "--methods", "nothing"]) == 1
    assert "no method matches" in capsys.readouterr().err
    assert accuracy.main(["--features", str(tmp_path / "empty"), "--methods", "xception/paper"]) == 1
    assert "not found" in capsys.readouterr().err


def test_fit_default_is_the_benchmarked_video_ordinal_model(synthetic_features: Path, tmp_path: Path) -> None:
    # lusfeat.fit's default model, run by its own code, scores what the benchmark's row of it scored.
    out = tmp_path / "default.json"
    assert accuracy.main(["--features", str(synthetic_features), "--seeds", "0,1", "--methods",
                          "xception/video-ordinal+balanced,xception/fit-default", "--out", str(out)]) == 0
    results = {result["name"]: result for result in json.loads(out.read_text())["results"]}
    benchmarked, product = results["xception/video-ordinal+balanced"], results["xception/fit-default"]
    assert product["name"] == "xception/fit-default" and product["level"] == "fit"
    for mine, theirs in zip(product["per_seed"], benchmarked["per_seed"], strict=True):
        for metric in (*accuracy.METRICS, "region_qwk"):
            assert mine[metric] == pytest.approx(theirs[metric], abs=1e-9), metric


def test_a_video_is_a_patient_and_video_pair(tmp_path: Path) -> None:
    # Every patient has a video named "L1": keyed on the video id alone, 18 patients' L1 videos
    # would be pooled, scored and counted as one. Keyed on (patient, video), the names do not matter.
    named = {"unique": lambda patient, region: f"patient_{patient}_{region}", "shared": lambda patient, region: region}
    records = {}
    for name, video_id in named.items():
        out = tmp_path / f"{name}.json"
        assert accuracy.main(["--features", str(write_synthetic_features(tmp_path / name, video_id)), "--seeds", "0",
                              "--folds", "2", "--nested-c", "0.01,1", "--methods", "xception/ordinal,xception/video-ordinal",
                              "--out", str(out)]) == 0
        records[name] = json.loads(out.read_text())
    assert records["shared"]["data"]["videos"] == records["unique"]["data"]["videos"] == 108
    for shared, unique in zip(records["shared"]["results"], records["unique"]["results"], strict=True):
        assert shared["per_seed"] == unique["per_seed"], shared["name"]
        assert shared["chosen_c"] == unique["chosen_c"], shared["name"]


def test_paper_30_epochs_differs_from_the_paper_head_in_epochs_only() -> None:
    # Every frame gives the 3-epoch paper head ten times the gradient steps; this row, run at frame
    # step 10, gives it those steps without the frames.
    methods = {method.name: method for method in accuracy.build_methods(["xception"], signal=False)}
    paper, longer = methods["xception/paper"].make(0), methods["xception/paper-30ep"].make(0)
    assert (paper.epochs, longer.epochs) == (3, 30)
    assert {**paper.get_params(), "epochs": 30} == longer.get_params()
