"""SeverityHead(class_weight="balanced"): the rare score gets more weight; the default is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from lusfeat.models.head import SeverityHead
from lusfeat.scores import balanced_class_weights


def test_class_weights_are_balanced_and_zero_for_an_absent_score() -> None:
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 3, 3]))
    assert np.allclose(weights, [6 / 9, 6 / 3, 0.0, 6 / 6])
    y = np.array([0] * 6 + [1] * 3 + [3] * 1)
    assert np.isclose((balanced_class_weights(y)[y]).sum(), len(y))  # weights keep the loss on its usual scale


def rare_class_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0] * 300 + [1] * 300 + [2] * 300 + [3] * 30)
    X = rng.normal(size=(len(y), 8)).astype(np.float32) + y[:, None] * 0.6
    return X, y


def test_balanced_weights_predict_the_rare_score_more_often() -> None:
    X, y = rare_class_data()
    plain = SeverityHead(epochs=5, random_state=0).fit(X, y)
    balanced = SeverityHead(epochs=5, class_weight="balanced", random_state=0).fit(X, y)
    assert (balanced.predict(X) == 3).sum() > (plain.predict(X) == 3).sum() + 10
    assert len(balanced.history_["loss"]) == 5 and all(np.isfinite(balanced.history_["loss"]))
    assert 0 <= balanced.history_["accuracy"][-1] <= 1


def test_default_is_the_unweighted_paper_head_and_bad_values_are_refused() -> None:
    X, y = rare_class_data()
    assert SeverityHead().get_params()["class_weight"] is None
    a = SeverityHead(random_state=1).fit(X, y).predict_proba(X)
    b = SeverityHead(class_weight=None, random_state=1).fit(X, y).predict_proba(X)
    assert np.allclose(a, b)
    with pytest.raises(ValueError, match="class_weight"):
        SeverityHead(class_weight="auto").fit(X, y)
