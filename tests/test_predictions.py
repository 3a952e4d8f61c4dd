"""The one predictions table: arrays in, the same arrays out of its one file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.predictions import FRAME_COLUMNS, ModelPredictions, Predictions, format_set, parse_set


def made_up(n: int = 12, seed: int = 0, fold: int | None = 1) -> Predictions:
    rng = np.random.default_rng(seed)
    frames = pd.DataFrame({"path": [f"v{i // 4}.mp4" for i in range(n)], "frame_index": np.arange(n) % 4 * 10,
                           "patient_id": [str(i // 8) for i in range(n)], "region": ["L1"] * n,
                           "video_id": [f"v{i // 4}" for i in range(n)], "group": ["covid"] * n,
                           "score": rng.integers(-1, 4, n)})
    if fold is not None:
        frames["fold"] = fold
    probabilities = rng.dirichlet(np.ones(4), n)
    sets = rng.random((n, 4)) < 0.5
    sets[:, 1] = True
    return Predictions(frames, {"head": ModelPredictions(probabilities, probabilities.argmax(axis=1)),
                                "video": ModelPredictions(probabilities[::-1], rng.integers(0, 4, n),
                                                          rng.dirichlet(np.ones(4), n), sets)})


def test_written_and_read_back_to_the_same_arrays(tmp_path: Path):
    predictions = made_up()
    predictions.write(tmp_path / "predictions.csv")
    again = Predictions.read(tmp_path / "predictions.csv")
    columns = list(pd.read_csv(tmp_path / "predictions.csv").columns)
    assert columns == [*FRAME_COLUMNS, *(f"head_p{k}" for k in range(4)), "head_pred", *(f"video_p{k}" for k in range(4)),
                       "video_pred", *(f"video_cal_p{k}" for k in range(4)), "video_set", "fold"]
    assert again.names == ["head", "video"] and again["head"].calibrated is None and again["head"].sets is None
    for name in again.names:
        for attribute in ("probabilities", "scores", "calibrated", "sets"):
            expected, found = getattr(predictions[name], attribute), getattr(again[name], attribute)
            assert (expected is None and found is None) or np.array_equal(expected, found), (name, attribute)
    pd.testing.assert_frame_equal(again.frames, predictions.frames, check_dtype=False)
    assert again.fold.tolist() == [1] * 12


def test_pooled_labelled_and_videos():
    pooled = Predictions.concat([made_up(fold=1), made_up(seed=1, fold=2)])
    assert len(pooled) == 24 and pooled.fold.tolist() == [1] * 12 + [2] * 12
    np.testing.assert_array_equal(pooled["video"].sets[12:], made_up(seed=1)["video"].sets)
    labelled = pooled.labelled()
    assert (labelled.truth != -1).all() and len(labelled) == (pooled.truth != -1).sum()
    assert list(dict.fromkeys(made_up().videos)) == ["0/v0", "0/v1", "1/v2"]  # a video is (patient, video id)
    assert np.array_equal(pooled.probabilities("video", calibrated=True), pooled["video"].calibrated)
    assert np.array_equal(pooled.probabilities("head", calibrated=True), pooled["head"].probabilities)
    with pytest.raises(ValueError, match="different models"):
        Predictions.concat([made_up(), Predictions(made_up().frames, {})])


def test_a_file_that_is_not_one_is_a_named_error(tmp_path: Path):
    (tmp_path / "a.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LusfeatError, match="a.csv: lacks column"):
        Predictions.read(tmp_path / "a.csv")
    made_up().table().drop(columns=["head_pred", "video_pred"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(LusfeatError, match="no <model>_pred"):
        Predictions.read(tmp_path / "b.csv")
    made_up().table().assign(video_set="{1,7}").to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(LusfeatError, match="column video_set: not a set of 0-3 scores"):
        Predictions.read(tmp_path / "c.csv")


def test_format_and_parse_sets():
    row = np.array([False, True, True, False])
    assert format_set(row) == "{1,2}"
    np.testing.assert_array_equal(parse_set("{1,2}"), row)
    with pytest.raises(ValueError, match="not a set"):
        parse_set("{1,7}")
