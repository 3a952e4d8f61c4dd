"""Heat maps: the explained target is the model's own score, and the maps pass Adebayo et al.'s sanity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lusfeat.heatmaps import grad_cam, spearman_similarity, target_function
from lusfeat.index import FrameIndex
from lusfeat.models.ordinal import OrdinalLogisticRegression
from lusfeat.models.video import VideoPoolingClassifier, pool_videos

# Adebayo et al. 2018, model parameter randomisation: maps of a randomly initialised backbone must not
# look like the trained one's. Measure: Spearman rank correlation of the two Grad-CAM maps of a frame
# (signed, at the backbone's map resolution), median over frames and over three random initialisations.
RANDOMISED_SPEARMAN_MAX = 0.5


def test_the_video_target_is_the_ordinal_models_latent_and_its_gradient_flows_through_pooling():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 40, 6)).astype(np.float32)
    videos = np.repeat([f"v{i}" for i in range(8)], 5)
    y = np.repeat([0, 1, 2, 3, 0, 1, 2, 3], 5)
    model = VideoPoolingClassifier(estimator=OrdinalLogisticRegression(C=1.0), random_state=0).fit(
        X, y, index=FrameIndex.of_videos(videos))
    target, what = target_function(model)
    assert "latent" in what
    frames = X[0, :5]
    expected = model.estimator_.latent(pool_videos(frames, np.zeros(5, int), 1, ("mean", "std", "max"))[0])[0]
    assert float(target(tf.constant(frames))) == pytest.approx(expected, rel=1e-4)
    # As Grad-CAM sees it: maps (n, h, w, c) whose spatial mean is each frame's feature.
    maps = np.repeat(np.repeat(frames[:, None, None, :], 3, axis=1), 3, axis=2)
    maps = maps + rng.normal(scale=0.1, size=maps.shape).astype(np.float32) * [[[[1]]]]
    maps -= maps.mean(axis=(1, 2), keepdims=True) - frames[:, None, None, :]
    cams, value = grad_cam(maps.astype(np.float32), target)
    assert value == pytest.approx(expected, rel=1e-4) and cams.shape == (5, 3, 3)
    # Finite differences: nudging a map cell moves the latent by the gradient Grad-CAM averaged.
    with tf.GradientTape() as tape:
        A = tf.constant(maps.astype(np.float32))
        tape.watch(A)
        latent = target(tf.reduce_mean(A, axis=[1, 2]))
    gradient = tape.gradient(latent, A).numpy()
    nudged = maps.copy()
    nudged[2, 1, 1, 3] += 1e-2
    moved = float(target(tf.constant(nudged.mean(axis=(1, 2)).astype(np.float32)))) - float(latent)
    assert moved == pytest.approx(gradient[2, 1, 1, 3] * 1e-2, rel=0.05, abs=1e-6)


@pytest.fixture(scope="module")
def fold_model(tiny_fit_run: Path) -> Path:
    return tiny_fit_run / "mobilenet" / "fold1"


def test_maps_of_a_randomised_backbone_differ_from_the_trained_ones(fold_model, data_root, weights_dir,
                                                                    blues_manifest, tmp_path, monkeypatch):
    from lusfeat import backbones
    from lusfeat.backbones import build_map_extractor, get_spec, resolve_weights
    from lusfeat.embed import plan_frames
    from lusfeat.heatmaps import explain_video
    from lusfeat.manifest import read_manifest
    from lusfeat.runfolder import load_saved_model

    manifest = tmp_path / "one.csv"
    blues_manifest[blues_manifest["video_id"] == "patient_9_L1"].to_csv(manifest, index=False)
    frames = plan_frames(read_manifest(manifest, data_root, require_scores=False), 30)
    model = load_saved_model(fold_model)
    spec = get_spec("mobilenet")
    trained = build_map_extractor(spec, resolve_weights(spec, str(weights_dir)))
    maps, _, _ = explain_video(trained, model.models["video"], frames, 224)
    again, _, _ = explain_video(trained, model.models["video"], frames, 224)
    assert all(spearman_similarity(a.cam, b.cam) == pytest.approx(1.0) for a, b in zip(maps, again, strict=True))
    similarities = []
    for seed in (0, 1, 2):  # three random initialisations (--weights none is seeded by RANDOM_INIT_SEED)
        monkeypatch.setattr(backbones, "RANDOM_INIT_SEED", seed)
        randomised = build_map_extractor(spec, resolve_weights(spec, "none"))
        random_maps, _, _ = explain_video(randomised, model.models["video"], frames, 224)
        similarities += [spearman_similarity(a.cam, b.cam) for a, b in zip(maps, random_maps, strict=True)]
    print(f"Spearman trained vs randomised backbone, per frame: {np.round(similarities, 3).tolist()}")
    assert np.median(np.abs(similarities)) < RANDOMISED_SPEARMAN_MAX


def test_explain_writes_a_png_per_chosen_frame(tiny_study_run, tiny_study, tmp_path, capsys):
    from lusfeat.explain import main

    model = tiny_study_run / "mobilenet" / "fold1"
    common = ["--model", str(model), str(tiny_study["held_out"]), "--data-root", str(tiny_study["root"]),
              "--weights", str(tiny_study["weights"])]
    assert main([*common, "--per-video", "2", "--out", str(tmp_path / "maps")]) == 0
    table = pd.read_csv(tmp_path / "maps" / "heatmaps.csv", dtype={"patient_id": str})
    assert len(table) == 4 and set(table["video_id"]) == {"patient_7_L1", "patient_7_R2"}
    assert (table["model"] == "video").all() and table["score_set"].str.startswith("{").all()
    assert sorted(table["frame_index"].unique()) == [0, 6]  # the first and last of the pooled frames 0, 2, 4, 6
    for png in table["png"]:
        assert (tmp_path / "maps" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one target per video: the video's latent, whichever frame is drawn
    assert (table.groupby("video_id")["target"].nunique() == 1).all()
    assert main([*common, "--frames", "0,2", "--scorer", "head", "--out", str(tmp_path / "head")]) == 0
    assert sorted(pd.read_csv(tmp_path / "head" / "heatmaps.csv")["frame_index"].unique()) == [0, 2]
    assert main([*common, "--frames", "3", "--out", str(tmp_path / "bad")]) == 1
    error = capsys.readouterr().err
    assert "patient_7_L1" in error and "every 2th frame" in error
    assert json.loads((model / "model.json").read_text())["extraction"]["frame_step"] == 2
