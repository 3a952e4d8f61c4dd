"""Aggregation rules on hand-made frame tables: ties, missing regions, 6 and 12 regions, mean probabilities."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lusfeat.aggregate import (
    aggregate,
    global_scores,
    most_frequent,
    natural_sorted,
    patient_table,
    region_scores,
    video_scores,
)
from lusfeat.errors import LusfeatError
from lusfeat.predictions import Predictions


def frames_table(rows: list[tuple], prefix: str = "head") -> pd.DataFrame:
    """rows: (patient, region, video, true score, predicted score[, probabilities])."""
    records = []
    for i, row in enumerate(rows):
        patient, region, video, truth, pred = row[:5]
        proba = row[5] if len(row) > 5 else np.eye(4)[pred] * 0.7 + 0.075
        records.append({"path": f"{video}.mp4", "frame_index": i, "patient_id": patient, "region": region,
                        "video_id": video, "group": "covid", "score": truth,
                        **{f"{prefix}_p{k}": float(proba[k]) for k in range(4)}, f"{prefix}_pred": pred, "fold": 1})
    return Predictions.from_table(pd.DataFrame(records))


def test_most_frequent_tie_goes_to_higher_score():
    assert most_frequent([0, 0, 2, 2, 1]) == 2
    assert most_frequent([1, 3]) == 3
    assert most_frequent([0, 0, 0, 3, 3]) == 0
    assert most_frequent([-1, -1, 1]) == 1
    assert most_frequent([-1]) == -1


def test_region_score_is_most_frequent_frame_score_ties_higher():
    rows = [("p1", "L1", "v1", 1, 0), ("p1", "L1", "v1", 1, 0), ("p1", "L1", "v1", 1, 2), ("p1", "L1", "v1", 1, 2),
            ("p1", "L1", "v1", 1, 1),  # 0 and 2 tie twice each -> 2
            ("p1", "R1", "v2", 3, 3), ("p1", "R1", "v2", 3, 3), ("p1", "R1", "v2", 3, 1)]
    regions = region_scores(frames_table(rows))
    l1 = regions.set_index("region").loc["L1"]
    assert l1["pred"] == 2 and l1["truth"] == 1 and not l1["agree"]
    assert [l1[f"n_pred{k}"] for k in range(4)] == [2, 1, 2, 0]
    r1 = regions.set_index("region").loc["R1"]
    assert r1["pred"] == 3 and r1["truth"] == 3 and r1["agree"]
    assert r1["frame_accuracy"] == pytest.approx(2 / 3)


def test_truth_of_a_region_with_two_videos_of_different_scores():
    # COVID-BLUES: one score per video, but a region may hold two videos; the frame majority wins, tie -> higher.
    rows = [("p1", "L1", "a", 1, 1)] * 3 + [("p1", "L1", "b", 2, 2)] * 2 + [("p1", "L2", "c", 0, 0)] * 2 + [
        ("p1", "L2", "d", 3, 0)] * 2
    regions = region_scores(frames_table(rows)).set_index("region")
    assert regions.loc["L1", "truth"] == 1
    assert regions.loc["L2", "truth"] == 3  # 2 frames of 0, 2 of 3: tie -> higher
    videos = video_scores(frames_table(rows))
    assert list(videos["video_id"]) == ["a", "b", "c", "d"]
    assert list(videos["truth"]) == [1, 2, 0, 3]


def test_mean_probability_rule_differs_from_mode():
    confident_3 = np.array([0.0, 0.0, 0.05, 0.95])
    unsure_1 = np.array([0.3, 0.4, 0.0, 0.3])
    rows = [("p1", "L1", "v", 3, 1, unsure_1), ("p1", "L1", "v", 3, 1, unsure_1), ("p1", "L1", "v", 3, 3, confident_3)]
    assert region_scores(frames_table(rows), rule="mode")["pred"].item() == 1
    # mean = [0.2, 0.267, 0.017, 0.517] -> 3
    assert region_scores(frames_table(rows), rule="mean_proba")["pred"].item() == 3
    tie = np.array([0.5, 0.0, 0.5, 0.0])
    assert region_scores(frames_table([("p1", "L1", "v", 0, 0, tie)]), rule="mean_proba")["pred"].item() == 2
    with pytest.raises(LusfeatError, match="unknown aggregation rule"):
        region_scores(frames_table(rows), rule="median")


@pytest.mark.parametrize("names", [
    ["L1", "L2", "L3", "R1", "R2", "R3"],  # COVID-BLUES BLUE points, 0-18
    [f"{side}{k}" for side in "LR" for k in range(1, 7)],  # the paper's 12 regions, 0-36
])
def test_global_score_sums_regions_and_counts_them(names):
    rng = np.random.default_rng(0)
    rows, true_sum, pred_sum = [], 0, 0
    for region in names:
        truth, pred = int(rng.integers(4)), int(rng.integers(4))
        true_sum, pred_sum = true_sum + truth, pred_sum + pred
        rows += [("7", region, f"v{region}", truth, pred)] * 3
    agg = aggregate(frames_table(rows))
    patient = agg.patients.iloc[0]
    assert patient["regions"] == len(names) and patient["max_score"] == 3 * len(names)
    assert patient["pred"] == pred_sum and patient["truth"] == true_sum
    assert patient["abs_error"] == abs(pred_sum - true_sum)
    assert list(agg.regions["region"]) == natural_sorted(names)
    table = patient_table(agg.regions, "7")
    assert table.iloc[-1]["region"].startswith(f"global ({len(names)} regions, 0-{3 * len(names)})")
    assert table.iloc[-1]["pred"] == pred_sum and table.iloc[-1]["frames"] == 3 * len(names)


def test_missing_regions_are_not_invented():
    rows = [("1", r, r, 2, 2) for r in ("L1", "L2", "L3", "R1", "R2", "R3")] + [("2", r, r, 1, 2) for r in ("L1", "R3")]
    patients = aggregate(frames_table(rows)).patients.set_index("patient_id")
    assert patients.loc["1", "regions"] == 6 and patients.loc["1", "pred"] == 12
    assert patients.loc["2", "regions"] == 2 and patients.loc["2", "pred"] == 4 and patients.loc["2", "truth"] == 2
    assert patients.loc["2", "region_names"] == "L1 R3"


def test_agreement_numbers():
    # Three patients, two regions each; predicted region scores chosen by hand.
    plan = {"1": [(0, 0), (1, 1)], "2": [(2, 3), (3, 3)], "3": [(1, 0), (0, 0)]}  # (truth, pred)
    rows = [(p, f"R{i}", f"{p}{i}", t, q) for p, pairs in plan.items() for i, (t, q) in enumerate(pairs, 1)]
    result = aggregate(frames_table(rows)).agreement
    assert result["regions"] == 6 and result["region_accuracy"] == pytest.approx(4 / 6)
    from sklearn.metrics import cohen_kappa_score

    truth, pred = [0, 1, 2, 3, 1, 0], [0, 1, 3, 3, 0, 0]
    assert result["region_qwk"] == pytest.approx(cohen_kappa_score(truth, pred, weights="quadratic"))
    # global truth 1, 5, 1; predicted 1, 6, 0
    assert result["global_mae"] == pytest.approx(2 / 3)
    assert result["global_pearson"] == pytest.approx(np.corrcoef([1, 5, 1], [1, 6, 0])[0, 1])
    assert result["global_spearman"] == pytest.approx(0.866, abs=1e-3)
    assert result["patients"] == 3 and result["regions_per_patient"] == [2]


def test_unlabelled_frames_get_predictions_but_no_agreement():
    rows = [("9", "L1", "a", -1, 2), ("9", "L1", "a", -1, 2), ("9", "R1", "b", -1, 0)]
    agg = aggregate(frames_table(rows))
    assert list(agg.regions["truth"]) == [-1, -1] and list(agg.regions["pred"]) == [2, 0]
    assert agg.regions["agree"].isna().all()
    assert agg.patients["pred"].item() == 2 and math.isnan(agg.patients["truth"].item())
    assert agg.agreement["regions"] == 0 and math.isnan(agg.agreement["global_mae"])
    assert math.isnan(agg.agreement["global_pearson"])


def test_patients_and_regions_sort_naturally_and_logreg_prefix_works():
    rows = [("10", "L10", "a", 0, 0), ("2", "L2", "b", 0, 0), ("2", "L10", "c", 0, 0)]
    agg = aggregate(frames_table(rows, prefix="logreg"), model="logreg")
    assert list(agg.patients["patient_id"]) == ["2", "10"]
    assert list(agg.regions["region"]) == ["L2", "L10", "L10"]
    with pytest.raises(LusfeatError, match="no predictions of model 'head'"):
        aggregate(frames_table(rows, prefix="logreg"), model="head")
    assert global_scores(agg.regions)["regions"].tolist() == [2, 1]


def test_aggregate_of_a_fit_run_on_a_synthetic_feature_file(synthetic_fit_run):
    # fit's pooled predictions (6 patients x 6 regions; patients 3 and 6 have two R3 videos of their own scores)
    from conftest import synthetic_frames

    from lusfeat.scores import most_frequent

    predictions = Predictions.read(synthetic_fit_run / "mobilenet" / "pooled" / "predictions.csv")
    frames = synthetic_frames()
    agg = aggregate(predictions, model="video")
    assert list(agg.patients["patient_id"]) == [str(p) for p in range(1, 7)] and (agg.patients["regions"] == 6).all()
    two_videos = agg.regions["region"].eq("R3") & agg.regions["patient_id"].isin(["3", "6"])
    assert len(agg.regions) == 36 and (agg.regions["frames"] == np.where(two_videos, 10, 5)).all()
    # the truth of a region is its frames' most frequent score, the global truth their sum
    truth = frames.groupby(["patient_id", "region"])["score"].agg(most_frequent)
    assert agg.regions.set_index(["patient_id", "region"])["truth"].to_dict() == truth.to_dict()
    assert agg.patients.set_index("patient_id")["truth"].to_dict() == truth.groupby(level=0).sum().to_dict()
    # the video model gives each video one score: a one-video region's score is its video's
    one_video = agg.regions[agg.regions["frames"] == 5]
    per_video = predictions.table().groupby(["patient_id", "region"])["video_pred"].first()
    assert all(per_video[(row.patient_id, row.region)] == row.pred for row in one_video.itertuples())
    assert agg.agreement["regions"] == 36 and agg.agreement["patients"] == 6
    assert agg.agreement["region_accuracy"] == pytest.approx((agg.regions["pred"] == agg.regions["truth"]).mean())
