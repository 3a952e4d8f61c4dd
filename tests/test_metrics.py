from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lusfeat.metrics import agreement_kappa, classification_metrics, evaluate, video_probabilities

# Hand-computed case. Confusion (rows true 0..3, columns predicted):
#   [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]]
# QWK: observed sum of O_ij (i-j)^2 = 3; expected sum r_i c_j (i-j)^2 / n with r = [2, 1, 1, 2],
# c = [1, 2, 1, 2], n = 6 is 102 / 6 = 17; QWK = 1 - 3/17 = 14/17. MAE = 3/6.
Y_TRUE = np.array([0, 0, 1, 2, 3, 3])
Y_PRED = np.array([0, 1, 1, 3, 3, 2])


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(4)[labels]


def test_hand_computed_case():
    metrics = classification_metrics(Y_TRUE, one_hot(Y_PRED))
    assert metrics["qwk"] == pytest.approx(14 / 17)
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]]
    assert metrics["confusion_matrix_normalized"] == [[0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0.5, 0.5]]
    # recalls 1/2, 1, 0, 1/2; precisions 1, 1/2, 0, 1/2; F1 2/3, 2/3, 0, 1/2
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert metrics["macro_recall"] == pytest.approx(0.5)
    assert metrics["macro_precision"] == pytest.approx(0.5)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 1 / 2) / 4)
    # Score 0, one-vs-rest: positives score 1 and 0, four negatives score 0 -> (4 wins + 4 ties / 2) / 8.
    assert metrics["roc_auc"][0] == pytest.approx(0.75)
    assert metrics["support"] == [2, 1, 1, 2]
    assert metrics["notes"] == []


def test_macro_roc_auc_matches_scikit_learn_one_vs_rest():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probabilities = rng.dirichlet(np.ones(4), 200) + one_hot(y) * 0.3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    metrics = classification_metrics(y, probabilities)
    assert metrics["roc_auc_macro"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr", average="macro"))
    assert metrics["roc_auc_macro"] > 0.6


def test_absent_score_gives_null_auc_and_a_note():
    y_true = np.array([0, 1, 2, 0, 1, 2])
    probabilities = one_hot(np.array([0, 1, 2, 3, 1, 2]))
    metrics = classification_metrics(y_true, probabilities)
    assert metrics["roc_auc"][3] is None
    assert all(value is not None for value in metrics["roc_auc"][:3])
    assert metrics["roc_auc_macro"] == pytest.approx(np.mean(metrics["roc_auc"][:3]))
    assert metrics["confusion_matrix"][3] == [0, 0, 0, 0]
    assert len(metrics["notes"]) == 1 and "3 absent" in metrics["notes"][0]


def test_single_score_everywhere_gives_null_kappa_not_nan():
    metrics = classification_metrics(np.array([2, 2, 2]), one_hot(np.array([2, 2, 2])))
    assert metrics["qwk"] is None
    assert metrics["accuracy"] == 1.0


def test_video_level_averages_frame_probabilities():
    frames = pd.DataFrame({
        "patient_id": ["1", "1", "1", "2", "2"],
        "video_id": ["v", "v", "v", "v", "v"],  # same name, two patients: two videos
        "score": [2, 2, 2, 0, 0],
    })
    probabilities = np.array([
        [0.0, 0.0, 0.4, 0.6],  # frame-level argmax 3 ...
        [0.0, 0.0, 0.4, 0.6],
        [0.0, 0.0, 1.0, 0.0],  # ... but the mean over the video is 2 (0.6 vs 0.4)
        [0.9, 0.1, 0.0, 0.0],
        [0.1, 0.9, 0.0, 0.0],
    ])
    videos, video_proba = video_probabilities(frames, probabilities)
    assert list(videos["score"]) == [2, 0]
    assert list(videos["n_frames"]) == [3, 2]
    np.testing.assert_allclose(video_proba[0], [0, 0, 0.6, 0.4])
    metrics = evaluate(frames, probabilities)
    assert metrics["accuracy"] == pytest.approx(2 / 5)
    assert metrics["video"]["n"] == 2
    # video 2 is a tie 0.5 / 0.5 between 0 and 1: the tie goes to the higher score, 1 (truth 0)
    assert metrics["video"]["accuracy"] == 0.5
    assert metrics["video"]["confusion_matrix"][0] == [0, 1, 0, 0]


def test_agreement_kappa():
    assert agreement_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    assert agreement_kappa([0, 1, 2, 3], [1, 0, 3, 2]) < 0


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError):
        classification_metrics(Y_TRUE, np.ones((6, 3)))


def test_evaluate_with_a_models_own_scores() -> None:
    # A video-level ordinal model reads its score by the median rule, not the argmax: metrics follow its scores,
    # the video's score is its frames' one, and ROC-AUC still comes from the probabilities.
    frames = pd.DataFrame({"patient_id": ["1"] * 4, "video_id": ["a", "a", "b", "b"], "score": [0, 0, 2, 2]})
    probabilities = np.array([[0.4, 0.3, 0.2, 0.1]] * 2 + [[0.1, 0.3, 0.35, 0.25]] * 2)
    by_argmax = evaluate(frames, probabilities)
    own = evaluate(frames, probabilities, predicted=[1, 1, 2, 2])
    assert by_argmax["accuracy"] == 1.0 and own["accuracy"] == 0.5
    assert own["video"]["accuracy"] == 0.5 and own["video"]["confusion_matrix"][0][1] == 1
    assert own["roc_auc_macro"] == by_argmax["roc_auc_macro"]
    with pytest.raises(ValueError, match="one score 0..3 per frame"):
        evaluate(frames, probabilities, predicted=[1, 1, 2])


def test_brier_is_scikit_learns_multiclass_score_and_ece_uses_equal_mass_bins():
    from sklearn.metrics import brier_score_loss

    from lusfeat.metrics import calibration_metrics, expected_calibration_error

    y = np.array([0, 1, 2, 3, 1, 1])
    uniform = np.full((6, 4), 0.25)
    metrics = calibration_metrics(y, uniform)
    assert metrics["brier"] == pytest.approx(0.75)  # 3 x 1/16 + (3/4)^2 per row
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, uniform, labels=[0, 1, 2, 3]))
    # Uniform rows predict score 3 (ties to the higher) with confidence 0.25; right on 1 row of 6.
    assert metrics["ece_bins"] == 6  # no more bins than rows: one row each, |1 - 0.25| once, |0 - 0.25| five times
    assert metrics["ece"] == pytest.approx((0.75 + 5 * 0.25) / 6)
    assert expected_calibration_error(y, uniform, n_bins=1) == pytest.approx(abs(1 / 6 - 0.25))
    # Two equal-mass bins by hand: confidences 0.4, 0.5 (right, wrong) and 0.9, 1.0 (right, right).
    probabilities = np.array([[0.4, 0.3, 0.3, 0.0], [0.5, 0.5, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    truth = np.array([0, 0, 0, 0])  # row 2's tie 0.5/0.5 goes to score 1: wrong
    assert expected_calibration_error(truth, probabilities, n_bins=2) == pytest.approx(
        0.5 * abs(0.5 - 0.45) + 0.5 * abs(1.0 - 0.95))
    perfect = calibration_metrics(np.array([0, 1]), one_hot(np.array([0, 1])))
    assert perfect["brier"] == 0 and perfect["ece"] == 0
    assert "brier" in classification_metrics(Y_TRUE, one_hot(Y_PRED)) and "ece" in evaluate(
        pd.DataFrame({"patient_id": ["1"] * 6, "video_id": list("abcdef"), "score": Y_TRUE}), one_hot(Y_PRED))["video"]


def test_set_metrics_count_coverage_and_size():
    from lusfeat.metrics import set_metrics

    sets = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=bool)
    metrics = set_metrics([0, 3, 3, 2], sets)
    assert metrics["coverage"] == 0.75 and metrics["mean_set_size"] == 2.25
    assert metrics["coverage_per_score"] == [1.0, None, 1.0, 0.5]
    assert metrics["size_counts"] == [0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="sets must be"):
        set_metrics([0, 1], sets)
