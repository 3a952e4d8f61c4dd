"""lusfeat.fit --class-weight: recorded in metrics.json, changes the head, default is the paper's loss."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lusfeat.fit import main
from lusfeat.runs import FitParams


def test_default_is_the_papers_unweighted_head() -> None:
    assert FitParams().class_weight is None and FitParams().head().class_weight is None


@pytest.mark.slow
def test_balanced_class_weight_is_used_and_recorded(synthetic_features: Path, tmp_path: Path) -> None:
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    features = str(synthetic_features)
    assert main(["--fold", "1", "--features", features, "--out", str(plain)]) == 0
    assert main(["--fold", "1", "--features", features, "--out", str(weighted), "--class-weight", "balanced"]) == 0
    metrics = json.loads((weighted / "mobilenet" / "fold1" / "metrics.json").read_text())
    assert metrics["params"]["class_weight"] == "balanced"
    assert json.loads((plain / "mobilenet" / "fold1" / "metrics.json").read_text())["params"]["class_weight"] is None
    a = pd.read_csv(plain / "mobilenet" / "fold1" / "predictions.csv")
    b = pd.read_csv(weighted / "mobilenet" / "fold1" / "predictions.csv")
    assert not a["head_p3"].equals(b["head_p3"])  # the weighted loss trains another head
    pd.testing.assert_series_equal(a["logreg_p3"], b["logreg_p3"])  # the cross-check is untouched


def test_unknown_class_weight_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--fold", "1", "--class-weight", "auto"])
    assert "invalid choice" in capsys.readouterr().err
