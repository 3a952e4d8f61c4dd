from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from lusfeat.models.head import SeverityHead, epoch_schedule
from lusfeat.models.linear import StandardisedLogisticRegression

DIM = 256


CENTRES = np.random.default_rng(99).choice([-1.5, 1.5], size=(4, DIM))


def separable(n: int, copies: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-noise features around one of 4 far-apart centres, the class showing in every dimension
    as in CNN features. The paper's 3 epochs at lr 1e-3 are only 75 Adam steps here: with a few
    dimensions the random initial weights would still outweigh what those steps learn."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(4), n // 4 + 1)[:n]
    X = (CENTRES[y] + rng.standard_normal((copies, n, DIM))).astype(np.float32)
    return X, y


def random_features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, n, DIM)).astype(np.float32), np.tile(np.arange(4), n // 4)[:n]


@pytest.mark.parametrize("model", [SeverityHead(random_state=0), StandardisedLogisticRegression()])
def test_separable_features_are_learnt_perfectly(model):
    X, y = separable(800)
    X_test, y_test = separable(400, seed=1)
    model.fit(X, y)
    assert model.score(X_test[0], y_test) == 1.0
    np.testing.assert_array_equal(model.classes_, [0, 1, 2, 3])


@pytest.mark.parametrize("model", [SeverityHead(random_state=0), StandardisedLogisticRegression()])
def test_random_features_stay_near_chance(model):
    X, y = random_features(800, seed=2)
    X_test, y_test = random_features(2000, seed=3)
    model.fit(X, y)
    # chance is 0.25; with 2000 test frames one standard deviation is 0.01
    assert abs(model.score(X_test, y_test) - 0.25) < 0.05


def test_head_draws_augmented_copies():
    # Copy 0 carries no signal, copies 1 and 2 do: only a head that trains on the cached
    # augmented copies can learn anything; on copy 0 alone it stays at chance.
    X, y = separable(800)
    X[0] = np.random.default_rng(5).standard_normal(X[0].shape)
    X_test, y_test = separable(400, seed=1)
    with_copies = SeverityHead(random_state=0).fit(X, y)
    original_only = SeverityHead(random_state=0).fit(X[0], y)
    assert with_copies.score(X_test[0], y_test) > 0.95
    assert original_only.score(X_test[0], y_test) < 0.4


def test_epoch_schedule_is_a_permutation_per_epoch_with_drawn_copies():
    index, weight = epoch_schedule(n=70, copies=3, epochs=2, batch_size=32, rng=np.random.default_rng(0))
    assert index.shape == (6, 32, 2) and weight.shape == (6, 32)  # ceil(70/32) = 3 steps per epoch
    for epoch in range(2):
        rows = index[epoch * 3:(epoch + 1) * 3].reshape(-1, 2)
        mask = weight[epoch * 3:(epoch + 1) * 3].reshape(-1) > 0
        assert sorted(rows[mask, 1]) == list(range(70))
        assert set(rows[mask, 0]) == {0, 1, 2}
        assert mask.sum() == 70 and not mask[70:].any()
    assert not np.array_equal(index[:3], index[3:])


def test_same_seed_same_model_other_seed_other_model():
    X, y = random_features(300, seed=4)
    first = SeverityHead(random_state=7).fit(X, y).predict_proba(X)
    again = SeverityHead(random_state=7).fit(X, y).predict_proba(X)
    other = SeverityHead(random_state=8).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_four_classes_even_when_training_lacks_one():
    X, y = separable(400)
    keep = y != 3
    for model in (SeverityHead(random_state=0), StandardisedLogisticRegression()):
        probabilities = model.fit(X[:, keep], y[keep]).predict_proba(X)
        assert probabilities.shape == (400, 4)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(probabilities[:, 3] == 0)  # the regression never saw score 3


def test_estimator_conventions():
    head = SeverityHead(dropout=0.2, epochs=2, random_state=3)
    assert head.get_params() == {"dropout": 0.2, "learning_rate": 1e-3, "epochs": 2, "batch_size": 32,
                                 "class_weight": None, "random_state": 3}
    assert clone(head).get_params() == head.get_params()
    with pytest.raises(NotFittedError):
        head.predict_proba(np.zeros((2, DIM)))
    with pytest.raises(TypeError):
        SeverityHead(0.5)  # keyword-only
    X, y = separable(64)
    assert head.fit(X, y) is head
    assert len(head.history_["loss"]) == 2 and head.history_["loss"][1] < head.history_["loss"][0]
    assert [layer.__class__.__name__ for layer in head.model_.layers] == ["InputLayer", "Dropout", "Dense"]
    assert head.model_.output_shape == (None, 4)
    # (copies, n, dim) input is evaluated on copy 0
    np.testing.assert_array_equal(head.predict_proba(X), head.predict_proba(X[0]))
    with pytest.raises(ValueError, match="features"):
        head.predict_proba(np.zeros((2, DIM + 1)))


def test_bad_scores_are_rejected():
    X, y = separable(8)
    with pytest.raises(ValueError, match="0, 1, 2 or 3"):
        SeverityHead().fit(X, y + 1)


def test_fast_scaler_matches_scikit_learn():
    from sklearn.preprocessing import StandardScaler

    from lusfeat.models.linear import fitted_standard_scaler

    X = np.random.default_rng(0).gamma(2.0, size=(1000, 8)).astype(np.float32)
    X[:, 3] = 5.0  # a constant feature stays unscaled
    expected, fast = StandardScaler().fit(X), fitted_standard_scaler(X, block_rows=300)
    for name in ("mean_", "var_", "scale_"):
        np.testing.assert_allclose(getattr(fast, name), getattr(expected, name), rtol=1e-10)
    np.testing.assert_allclose(fast.transform(X), expected.transform(X), atol=1e-6)


def test_many_fits_in_one_process_do_not_warn_of_retracing():
    # A fresh process: TensorFlow warns of retracing at most a few times per process, so in the
    # test session's own process earlier fits could have used those warnings up.
    script = """
import numpy as np
from lusfeat.models.head import SeverityHead
X = np.random.default_rng(0).normal(size=(2, 40, 8)).astype("float32")
for seed in range(7):
    SeverityHead(random_state=seed).fit(X, np.arange(40) % 4)
print("fitted")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fitted"
    assert "retracing" not in done.stderr
