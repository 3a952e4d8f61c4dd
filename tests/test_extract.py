from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from lusfeat.extract import main
from lusfeat.store import FeatureWriter, load_features


def _run(manifest: Path, out: Path, data_root: Path, weights: str, *extra: str) -> int:
    return main(["--manifest", str(manifest), "--data-root", str(data_root), "--backbone", "mobilenet",
                 "--weights", weights, "--frame-step", "20", "--out", str(out), "--no-progress", *extra])


@pytest.mark.slow
def test_two_patients_end_to_end(two_patient_manifest, data_root, weights_dir, tmp_path, capsys):
    assert _run(two_patient_manifest, tmp_path / "real", data_root, str(weights_dir)) == 0
    assert "mobilenet: written" in capsys.readouterr().out
    real = load_features(tmp_path / "real" / "mobilenet.h5")
    # 13 videos; frames 0, 20, 40, ... of each.
    assert real.features.shape == (3, len(real.frames), 256)
    assert set(real.frames["patient_id"]) == {"1", "9"} and real.frames["video_id"].nunique() == 13  # patient 9 has a second R3 recording
    assert (real.frames["frame_index"] % 20 == 0).all()
    first = real.frames[real.frames["video_id"] == "patient_9_L1"]
    assert (first["score"] == 3).all() and (first["group"] == "negative").all()
    assert real.config.weights == "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"
    assert real.config.copies == 3 and real.config.frame_step == 20
    # Augmented copies are close to, but not the same as, the original frame's features.
    assert not np.allclose(real.features[0], real.features[1])
    assert _run(two_patient_manifest, tmp_path / "random", data_root, "none", "--augment-copies", "0",
                "--precision", "bfloat16", "--dtype", "float16") == 0
    random = load_features(tmp_path / "random" / "mobilenet.h5")
    assert random.config.weights == "none" and random.features.shape[0] == 1
    assert random.config.precision == "bfloat16" and random.config.dtype == "float16"
    assert not np.allclose(real.features[0], random.features[0], atol=1e-3)
    # A second identical run recomputes nothing.
    assert _run(two_patient_manifest, tmp_path / "real", data_root, str(weights_dir)) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_features(two_patient_manifest, data_root, weights_dir, tmp_path,
                                                       monkeypatch, capsys):
    step = ("--frame-step", "10", "--augment-copies", "1")  # two 64-frame blocks at least
    assert _run(two_patient_manifest, tmp_path / "whole", data_root, str(weights_dir), *step) == 0
    original_write = FeatureWriter.write
    calls = []

    def killed_after_one_block(self, start, features):
        if calls:  # as a batch scheduler stops a job: SIGTERM, to be handled like Ctrl-C
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler's KeyboardInterrupt ends the sleep at once
            raise AssertionError("SIGTERM did not interrupt the extraction")
        calls.append(start)
        original_write(self, start, features)

    monkeypatch.setattr(FeatureWriter, "write", killed_after_one_block)
    assert _run(two_patient_manifest, tmp_path / "cut", data_root, str(weights_dir), *step) == 130
    assert "interrupted (signal SIGTERM): rerun the same command to resume mobilenet" in capsys.readouterr().err
    assert (tmp_path / "cut" / "mobilenet.h5.partial").exists() and not (tmp_path / "cut" / "mobilenet.h5").exists()
    monkeypatch.setattr(FeatureWriter, "write", original_write)
    assert _run(two_patient_manifest, tmp_path / "cut", data_root, str(weights_dir), *step) == 0
    whole = load_features(tmp_path / "whole" / "mobilenet.h5")
    resumed = load_features(tmp_path / "cut" / "mobilenet.h5")
    assert len(whole.frames) > 64 and calls == [0]
    assert resumed.frames.equals(whole.frames)
    np.testing.assert_allclose(resumed.features, whole.features, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_other_settings_are_refused_without_touching_the_file(two_patient_manifest, data_root, weights_dir,
                                                              tmp_path, capsys):
    assert _run(two_patient_manifest, tmp_path, data_root, str(weights_dir)) == 0
    file = tmp_path / "mobilenet.h5"
    stamp = os.stat(file).st_mtime_ns
    assert _run(two_patient_manifest, tmp_path, data_root, str(weights_dir), "--seed", "3") == 1
    assert "seed: 0 vs 3" in capsys.readouterr().err
    assert os.stat(file).st_mtime_ns == stamp
    assert _run(two_patient_manifest, tmp_path, data_root, str(weights_dir), "--seed", "3", "--overwrite") == 0
    assert load_features(file).config.seed == 3


@pytest.mark.slow
def test_one_backbone_without_weights_does_not_stop_the_others(two_patient_manifest, data_root, weights_dir,
                                                               tmp_path, capsys):
    only_mobilenet = tmp_path / "weights"
    only_mobilenet.mkdir()
    (only_mobilenet / "mobilenet_0.25_224_imagenet_notop.h5").symlink_to(weights_dir / "mobilenet_0.25_224_imagenet_notop.h5")
    code = main(["--manifest", str(two_patient_manifest), "--data-root", str(data_root), "--backbone", "vgg16,mobilenet",
                 "--weights", str(only_mobilenet), "--frame-step", "50", "--augment-copies", "0", "--out",
                 str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "vgg16: weights folder" in captured.err and "1 backbone(s) failed" in captured.err
    assert "mobilenet: written" in captured.out and (tmp_path / "out" / "mobilenet.h5").exists()


def test_bad_manifest_stops_before_any_work(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,region,score\na.mp4,1,L1,7\n")
    assert main(["--manifest", str(manifest), "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "line 2: score '7' is not an integer 0-3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argument", [["--backbone", "alexnet"], ["--augment-copies", "-1"]])
def test_bad_options(tmp_path, capsys, argument):
    assert main(["--manifest", str(tmp_path / "none.csv"), *argument]) == 1
    assert "error:" in capsys.readouterr().err


def test_extract_has_no_experiment_options(tmp_path, capsys):
    """Stage one does one thing: the fine-tuning maps are made by lusfeat.experiments.finetune, not by --tap."""
    with pytest.raises(SystemExit):
        main(["--manifest", str(tmp_path / "none.csv"), "--tap", "middle"])
    assert "unrecognized arguments: --tap middle" in capsys.readouterr().err


def test_a_stream_that_ends_early_is_extracted_as_it_decodes_and_resumes(tmp_path, weights_dir, monkeypatch, caplog):
    """Videos the test makes: one whole, one cut after its header announced 60 frames, an MPEG-1 one."""
    from conftest import cut_file, moving_frames, write_video

    whole = write_video(tmp_path / "L1.mp4", moving_frames(60, 96, 96), "libx264", options={"g": "12"},
                        container_options={"movflags": "faststart"})
    cut = cut_file(whole, tmp_path / "L2.mp4", 0.8)
    write_video(tmp_path / "R1.mpeg", moving_frames(50, 96, 96, seed=1), "mpeg1video")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,region,score\nL1.mp4,1,L1,0\nL2.mp4,1,L2,1\nR1.mpeg,2,R1,2\n")
    args = ["--manifest", str(manifest), "--data-root", str(tmp_path), "--backbone", "mobilenet",
            "--weights", str(weights_dir), "--frame-step", "1", "--augment-copies", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    from lusfeat.frames import media_info

    decoded = media_info(cut).frames
    assert 0 < decoded < 60
    assert f"warning: L2.mp4: its container announces 60 frames but {decoded} decode" in caplog.text
    features = load_features(tmp_path / "whole" / "mobilenet.h5")
    assert features.frames.groupby("path")["frame_index"].max().to_dict() == {"L1.mp4": 59, "L2.mp4": decoded - 1,
                                                                              "R1.mpeg": 49}
    original_write = FeatureWriter.write

    def dies_after_one_block(self, start, block):
        if start > 0:
            raise KeyboardInterrupt
        original_write(self, start, block)

    monkeypatch.setattr(FeatureWriter, "write", dies_after_one_block)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(FeatureWriter, "write", original_write)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 0
    resumed = load_features(tmp_path / "cut" / "mobilenet.h5")
    assert resumed.frames.equals(features.frames)
    np.testing.assert_allclose(resumed.features, features.features, rtol=1e-6, atol=1e-6)


def test_images_come_out_in_the_frame_table_order_when_a_file_appears_twice(monkeypatch):
    # A file listed again further down (e.g. single-frame manifest rows) must not pull its later
    # rows forward: each image has to line up with its row of the frame table.
    import pandas as pd

    from lusfeat import embed
    from lusfeat.augment import AugmentParams

    def fake_frames(file, wanted, size):
        for index in wanted:
            yield index, np.full((4, 4, 3), 10 * ord(file[-1]) % 256 + index, np.uint8)

    monkeypatch.setattr(embed, "iter_frames", fake_frames)
    monkeypatch.setattr(embed, "augmented_copies", lambda rgb, key, copies, seed, params: rgb[np.newaxis])
    table = pd.DataFrame({"file": ["/a", "/b", "/a"], "path": ["a", "b", "a"], "frame_index": [0, 1, 2]})
    images = list(embed.iter_images(table, 4, 1, 0, AugmentParams()))
    expected = [10 * ord(f[-1]) % 256 + i for f, i in zip(table["file"], table["frame_index"], strict=True)]
    assert [int(image[0, 0, 0, 0]) for image in images] == expected
