"""The benchmark scripts run end to end on a tiny subset (real frames, real MobileNet weights).

No timing is asserted: only that each script finishes, writes JSON of the documented shape, and
that its numbers are finite and positive.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import extract_throughput, training_time
from lusfeat.errors import LusfeatError

REPO = Path(__file__).resolve().parents[1]


def positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_training_time_writes_a_complete_record(data_root: Path, weights_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "training_time.json"
    cache_dir = tmp_path / "cache"
    code = training_time.main([
        "--data-root", str(data_root), "--weights", str(weights_dir), "--backbone", "mobilenet",
        "--patients", "1,9", "--frame-step", "90", "--folds", "2", "--epochs", "1", "--augment-copies", "1",
        "--head-seeds", "1", "--synthetic-train-frames", "200", "--work-dir", str(tmp_path),
        "--keep-features", str(cache_dir), "--out", str(out),
    ])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "training_time"
    assert record["machine"]["nproc"] >= 1 and record["machine"]["versions"]["keras"]
    entry = record["backbones"]["mobilenet"]
    for method in ("paper", "lusfeat"):
        assert len(entry[method]["per_fold"]) == 2
        assert positive(entry[method]["fold_seconds_mean"]) and positive(entry[method]["end_to_end_seconds"])
        assert 0 <= entry[method]["accuracy"] <= 1 and 0 <= entry[method]["macro_f1"] <= 1
    assert positive(entry["lusfeat"]["extract_seconds"]) and positive(entry["lusfeat"]["warmup_seconds"])
    assert positive(entry["ratio_fold_mean"]) and all(positive(r) for r in entry["ratio_per_fold"])
    assert math.isfinite(entry["accuracy_difference_a_minus_b"])
    assert positive(entry["extrapolation_full_covid_blues"]["paper_fold_seconds"])
    assert [item["dim"] for item in record["stage_two_full_size"]] == [2048, 256]
    assert all(positive(item["fit_seconds"]) for item in record["stage_two_full_size"])
    assert "| mobilenet |" in capsys.readouterr().out
    # Stage one ran on the engine lusfeat.extract would choose (the suite sets $LUSFEAT_ENGINE) and says so.
    assert record["stage_one_engine"] == {"engine": "tensorflow", "precision": "float32",
                                          "why": "LUSFEAT_ENGINE=tensorflow:float32"}
    from lusfeat.store import load_features
    config = load_features(cache_dir / "mobilenet.h5").config
    assert (config.engine, config.precision) == ("tensorflow", "float32")

    # Stage one reused from the file the run above kept, the paper's method on fold 1 only.
    out_reused = tmp_path / "reused.json"
    common = ["--data-root", str(data_root), "--weights", str(weights_dir), "--backbone", "mobilenet", "--patients",
              "1,9", "--folds", "2", "--epochs", "1", "--augment-copies", "1", "--head-seeds", "0",
              "--features", str(cache_dir / "mobilenet.h5")]
    assert training_time.main([*common, "--frame-step", "90", "--paper-folds", "1", "--out", str(out_reused)]) == 0
    reused = json.loads(out_reused.read_text())["backbones"]["mobilenet"]
    assert reused["compared_folds"] == [1] and len(reused["paper"]["per_fold"]) == 1
    assert len(reused["lusfeat"]["per_fold"]) == 2 and reused["lusfeat"]["extract_seconds"] is None
    assert reused["compared_frames"] < entry["frames"] and positive(reused["ratio_fold_mean"])
    assert reused["ratio_end_to_end"] is None and "reused" in reused["stage_one"]
    reused_engine = json.loads(out_reused.read_text())["stage_one_engine"]  # the file's, not a fresh choice
    assert reused_engine["why"].startswith(f"as {cache_dir / 'mobilenet.h5'} was made")
    assert (reused_engine["engine"], reused_engine["precision"]) == ("tensorflow", "float32")
    # An engine other than the file's is refused, before anything runs.
    assert training_time.main([*common, "--frame-step", "90", "--engine", "openvino", "--out", str(out_reused)]) == 1
    assert "was made with tensorflow float32, not openvino float32" in capsys.readouterr().err
    # The same file for other frames is refused, naming what differs.
    assert training_time.main([*common, "--frame-step", "60", "--out", str(out_reused)]) == 1
    assert "frame_step: 90 in the file, 60 here" in capsys.readouterr().err

    # The real-cache timing, on the feature file the run above kept.
    out_cache = tmp_path / "cache.json"
    code = training_time.main([
        "--data-root", str(data_root), "--backbone", "", "--patients", "1,9", "--folds", "2", "--epochs", "1",
        "--real-cache", str(cache_dir / "mobilenet.h5"), "--real-cache-full-frames", "100", "--out", str(out_cache),
    ])
    assert code == 0
    cache = json.loads(out_cache.read_text())["stage_two_real_cache"][0]
    assert len(cache["per_fold"]) == 2 and positive(cache["tiled_to_full_size"]["fit_seconds"])
    assert all(positive(item["video_seconds"]) for item in cache["per_fold"])


def test_extract_throughput_writes_a_complete_record(data_root: Path, weights_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.util import find_spec

    monkeypatch.setenv("LUSFEAT_CACHE_DIR", str(tmp_path / "cache"))  # the subprocess reads the int8 model made here
    engines = "tensorflow:float32" + (",openvino:int8" if find_spec("openvino") and find_spec("nncf") else "")
    out = tmp_path / "extract_throughput.json"
    code = extract_throughput.main([
        "--data-root", str(data_root), "--weights", str(weights_dir), "--backbone", "mobilenet",
        "--videos", "1", "--frame-step", "40", "--augment-copies", "1", "--memory-factor", "2",
        "--engines", engines, "--work-dir", str(tmp_path / "not" / "yet"), "--out", str(out),
    ])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "extract_throughput" and record["machine"]["cpu_model"]
    entry = record["backbones"]["mobilenet"]
    assert list(entry["engines"]) == engines.split(",")
    assert positive(entry["peak_rss_ratio_4n_over_n"]) and positive(entry["decoding_alone"]["images_per_second"])
    reference = entry["engines"]["tensorflow:float32"]
    assert positive(reference["bare_predict_images_per_second"])
    assert reference["fidelity"]["cosine_min"] == pytest.approx(1.0)
    for engine in entry["engines"].values():
        assert positive(engine["bare_images_per_second"]) and positive(engine["extract_over_bare"])
        assert engine["extraction_n"]["code"] == 0 and positive(engine["extraction_n"]["peak_rss_mb"])
        stamps = engine["extraction_n"]["blocks"]  # the file opening, then one per block of 64 frames
        assert stamps[0][1] == 0 and stamps[-1][1] == engine["extraction_n"]["frames"] and len(stamps) == 2
        assert engine["extraction_n"]["steady_images_per_second"] is None  # one block: no steady state
        assert engine["extraction_n"]["steady_images"] == 0
        assert positive(engine["extraction_n"]["decode_thread_cpu_seconds"])  # the decoding thread's own CPU time
        assert 0 < engine["fidelity"]["cosine_mean"] <= 1 + 1e-6
    assert entry["extraction_4n"]["code"] == 0
    assert entry["extraction_4n"]["frames"] > reference["extraction_n"]["frames"]


def test_engine_list_measures_tensorflow_float32_first_and_only_when_asked() -> None:
    # TensorFlow float32 is the fidelity reference, measured first; a list without it measures
    # throughput only (no reference run of the slowest engine).
    pairs, skipped = extract_throughput.engine_list("openvino:int8,tensorflow:float32", no_bfloat16=False)
    assert pairs == [("tensorflow", "float32"), ("openvino", "int8")] and skipped == {}
    assert extract_throughput.engine_list("openvino:int8", no_bfloat16=False)[0] == [("openvino", "int8")]
    pairs, skipped = extract_throughput.engine_list("tensorflow:bfloat16,openvino", no_bfloat16=True)
    assert pairs == [("openvino", "float32")] and skipped == {"tensorflow:bfloat16": "--no-bfloat16"}
    with pytest.raises(LusfeatError, match="nothing left to measure"):
        extract_throughput.engine_list("tensorflow:bfloat16", no_bfloat16=True)


def test_steady_rate_leaves_out_the_first_block_and_a_short_last_one() -> None:
    # Opened at 0 s, a slow first block (64 frames by 10 s: decoding and the first inference), then two whole
    # blocks in 4 s, then a last block of 1 frame that pays a whole padded batch (0.5 s): the steady rate counts
    # the two whole blocks only, 3 images per frame. Counting the short one made every row of a 65-frame run
    # read 10-12% of the bare rate.
    blocks = [[0.0, 0], [10.0, 64], [12.0, 128], [14.0, 192], [14.5, 193]]
    assert extract_throughput.steady_span(blocks, 3) == pytest.approx((128 * 3 / 4, 384))
    assert extract_throughput.steady_span(blocks[:4], 3) == pytest.approx((128 * 3 / 4, 384))
    assert extract_throughput.steady_span([[0.0, 0], [10.0, 64], [10.5, 65]], 3) is None  # no whole block after the first
    assert extract_throughput.steady_span(blocks[:2], 3) is None


def test_calibration_benchmark_tabulates_a_fit_run(synthetic_fit_run: Path, tmp_path: Path, capsys) -> None:
    from benchmarks import calibration

    out = tmp_path / "calibration.json"
    assert calibration.main(["--runs", str(synthetic_fit_run), "--backbone", "mobilenet", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "calibration" and len(record["per_seed"]) == 1
    video = record["per_seed"][0]["models"]["video"]
    assert video["target_coverage"] == 0.9 and 0 <= video["video_coverage"] <= 1
    assert 1 <= video["video_mean_set_size"] <= 4 and record["ece_bins"]["videos"] >= 1
    assert "video coverage" in capsys.readouterr().out
    assert calibration.main(["--runs", str(tmp_path / "nothing"), "--out", str(out)]) == 1


@pytest.mark.slow
def test_in_distribution_writes_a_complete_record(synthetic_features: Path, tmp_path: Path) -> None:
    from benchmarks import in_distribution

    out = tmp_path / "in_distribution.json"
    # the synthetic file records random MobileNet weights ("none"): the made-up videos are embedded by one
    code = in_distribution.main(["--features", str(synthetic_features), "--weights", "none",
                                 "--seeds", "0", "--folds", "2", "--videos-per-kind", "1", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "in_distribution" and record["patients"] == 6
    assert record["non_lung"]["videos"] == len(in_distribution.NON_LUNG_KINDS)
    default = record["variants"]["default"]["seeds"]["0"]
    assert len(default["per_fold"]) == 2 and default["test_videos"] == record["videos"]
    assert 0 <= default["flag_rate"] <= 1 and default["non_lung_checks"] == 2 * len(in_distribution.NON_LUNG_KINDS)
    assert set(record["variants"]) == set(in_distribution.VARIANTS)


@pytest.mark.slow
def test_shards_benchmark_writes_a_complete_record(data_root: Path, weights_dir: Path, tmp_path: Path) -> None:
    """Without Dask and on 2 patients' every 90th frame: the configurations run, the files agree bitwise."""
    from benchmarks import shards

    out = tmp_path / "shards.json"
    code = shards.main([
        "--data-root", str(data_root), "--weights", str(weights_dir), "--backbone", "mobilenet", "--patients", "1,9",
        "--frame-step", "90", "--no-dask", "--merge-frames", "300", "--merge-dims", "256", "--machines", "1,4",
        "--work-dir", str(tmp_path), "--out", str(out),
    ])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "shards" and record["machine"]["nproc"] >= 1
    entry = record["backbones"]["mobilenet"]
    assert set(entry["summary"]) == {"1 x 2", "2 x 1", "2 in sequence"}
    assert all(positive(row["wall_seconds"]) and positive(row["wall_ratio_to_1x2"]) for row in entry["summary"].values())
    assert entry["bitwise"]["2 in sequence == 1 x 2 (2 threads)"] is True
    assert positive(record["merge"][0]["seconds_per_10k_frames"])
    assert [row["machines"] for row in entry["estimate"]["machines"]] == [1, 4]
    assert entry["estimate"]["machines"][1]["speed_up"] > 1


def test_integrity_benchmark_writes_a_complete_record(synthetic_features: Path, tmp_path: Path) -> None:
    """The checksummed copy holds the given file's features bitwise; every time is measured."""
    from benchmarks import integrity

    out = tmp_path / "integrity.json"
    assert integrity.main([str(synthetic_features), "--rounds", "2", "--work-dir", str(tmp_path / "work"),
                           "--extraction-seconds", "100", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "integrity" and record["copy_bitwise_equal"] and record["shape"] == [3, 190, 256]
    assert all(len(values) == 2 and all(positive(value) for value in values) for values in record["seconds"].values())
    assert math.isfinite(record["write_cost_percent_of_extraction"]) and positive(record["crc_percent_of_load"])
    assert integrity.main([str(tmp_path / "missing.h5"), "--out", str(out)]) == 1


def test_page_heatmaps_benchmark_times_predict_with_and_without_maps(tiny_study_run: Path, tiny_study: dict,
                                                                    tmp_path: Path, capsys) -> None:
    from benchmarks import page_heatmaps

    out = tmp_path / "page.json"
    assert page_heatmaps.main([str(tiny_study["held_out"]), "--model", str(tiny_study_run / "mobilenet" / "fold1"),
                               "--data-root", str(tiny_study["root"]), "--weights", str(tiny_study["weights"]),
                               "--counts", "1,2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [run["heatmaps"] for run in record["runs"]] == [0, 1, 2]
    assert all(positive(run["wall_s"]) and run["videos"] == 2 for run in record["runs"])
    assert record["runs"][0]["page_bytes"] < record["runs"][1]["page_bytes"] < record["runs"][2]["page_bytes"]
    assert "wall s per video" in capsys.readouterr().out
