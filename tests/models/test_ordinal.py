"""OrdinalLogisticRegression: gradient, recovery of a known ordinal model, decisions, class weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime
from sklearn.base import clone
from sklearn.metrics import cohen_kappa_score

from lusfeat.models.ordinal import OrdinalLogisticRegression, class_probabilities, decide


def ordinal_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    latent = X @ np.array([2.0, -1.0, 0.0, 0.0, 1.0]) + rng.logistic(size=n)
    return X, np.digitize(latent, [-2.0, 0.0, 2.0])


def test_recovers_a_proportional_odds_model() -> None:
    X, y = ordinal_data()
    model = OrdinalLogisticRegression(C=10.0).fit(X, y)
    assert model.converged_
    assert np.all(np.diff(model.thresholds_) > 0)
    # Standardised features have unit scale, so the fitted direction is close to the true one.
    direction = model.coef_ / np.linalg.norm(model.coef_)
    truth = np.array([2.0, -1.0, 0.0, 0.0, 1.0]) / np.sqrt(6.0)
    assert direction @ truth > 0.97
    X_test, y_test = ordinal_data(seed=1)
    assert cohen_kappa_score(y_test, model.predict(X_test), weights="quadratic") > 0.6


def test_probabilities_sum_to_one_and_decisions_agree_with_their_definition() -> None:
    probabilities = class_probabilities(np.array([-3.0, 0.0, 3.0]), np.array([-1.0, 0.0, 1.0]))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert list(decide(probabilities, "median")) == [0, 1, 3]
    table = np.array([[0.4, 0.0, 0.0, 0.6], [0.1, 0.2, 0.3, 0.4]])
    assert list(decide(table, "argmax")) == [3, 3]
    assert list(decide(table, "expected")) == [2, 2]  # 1.8 and 2.0
    assert list(decide(table, "median")) == [3, 2]
    with pytest.raises(ValueError, match="decision"):
        decide(table, "mode")


def test_gradient_matches_finite_differences() -> None:
    # The fit's objective is internal; check it through a tiny model: at the optimum the
    # numerical gradient of the penalised likelihood must vanish.
    X, y = ordinal_data(n=120)
    model = OrdinalLogisticRegression(C=1.0, max_iter=2000).fit(X, y)
    Z = (X - model.mean_) / model.scale_

    def objective(params: np.ndarray) -> float:
        w, thresholds = params[:5], params[5:]
        probabilities = class_probabilities(Z @ w, thresholds)
        return float(-np.log(probabilities[np.arange(len(y)), y]).sum() + 0.5 * w @ w)

    optimum = np.concatenate([model.coef_, model.thresholds_])
    assert np.abs(approx_fprime(optimum, objective, 1e-6)).max() < 1e-2


def test_balanced_weights_predict_the_rare_class_more_often() -> None:
    X, y = ordinal_data(n=600)
    keep = (y != 3) | (np.arange(len(y)) % 6 == 0)  # score 3 becomes rare
    X, y = X[keep], y[keep]
    plain = OrdinalLogisticRegression(C=1.0).fit(X, y)
    balanced = OrdinalLogisticRegression(C=1.0, class_weight="balanced").fit(X, y)
    assert (balanced.predict(X) == 3).sum() > (plain.predict(X) == 3).sum()


def test_copies_are_stacked_and_copy_zero_is_scored() -> None:
    X, y = ordinal_data(n=100)
    copies = np.stack([X, X + 0.01, X - 0.01]).astype(np.float32)
    model = OrdinalLogisticRegression().fit(copies, y)
    assert np.allclose(model.predict_proba(copies), model.predict_proba(X))
    assert model.predict_proba(X).shape == (100, 4)
    assert clone(model).get_params()["C"] == model.C


def test_bad_parameters_and_inputs_are_refused() -> None:
    X, y = ordinal_data(n=50)
    with pytest.raises(ValueError, match="C must be"):
        OrdinalLogisticRegression(C=0).fit(X, y)
    with pytest.raises(ValueError, match="class_weight"):
        OrdinalLogisticRegression(class_weight="auto").fit(X, y)
    with pytest.raises(ValueError, match="scores must be"):
        OrdinalLogisticRegression().fit(X, y + 1)
    with pytest.raises(ValueError, match="features"):
        OrdinalLogisticRegression().fit(X, y).predict(X[:, :3])


def wide_data(n: int = 60, dim: int = 300, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """More features than rows, as the video model's pooled rows (720 x 6,144): the fit runs in the row space."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    latent = X[:, :3] @ np.array([1.5, -1.0, 0.5]) + rng.logistic(size=n)
    return X, np.digitize(latent, [-1.5, 0.0, 1.5])


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_a_wide_fit_in_the_row_space_is_the_fit_in_all_the_features(C: float) -> None:
    X, y = wide_data()
    model = OrdinalLogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    fitted = clone(model).fit(X, y)
    prepared = model._prepare(X, y)
    assert prepared["back"] is not None and prepared["solved"].shape[1] < X.shape[1]
    full = dict(prepared, solved=prepared["rows"], back=None,
                start=np.concatenate([np.zeros(X.shape[1]), prepared["start"][-3:]]))
    reference = clone(model)._solve(full, C)  # the same objective, L-BFGS over all 300 coefficients
    assert fitted.converged_ and reference.converged_
    np.testing.assert_allclose(fitted.predict_proba(X), reference.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(fitted.thresholds_, reference.thresholds_, atol=1e-4)
    np.testing.assert_allclose(fitted.coef_, reference.coef_, atol=1e-4 * np.abs(reference.coef_).max())


def test_fit_path_is_one_fit_per_C_to_the_bit() -> None:
    X, y = wide_data()
    model = OrdinalLogisticRegression(class_weight="balanced")
    Cs = (0.001, 0.1, 1.0)
    for C, fitted in zip(Cs, model.fit_path(X, y, Cs), strict=True):
        alone = clone(model).set_params(C=C).fit(X, y)
        assert fitted.C == C
        assert np.array_equal(fitted.coef_, alone.coef_) and np.array_equal(fitted.thresholds_, alone.thresholds_)
