"""lusfeat.fit --class-weight: recorded in metrics.json, changes the head, default is the paper's loss."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lusfeat.fit import main
from lusfeat.models.registry import FitParams


def test_default_is_the_papers_unweighted_head() -> None:
    assert FitParams().class_weight is None and FitParams().head().class_weight is None


@pytest.mark.slow
def test_balanced_class_weight_is_used_and_recorded(synthetic_features: Path, synthetic_fit_run: Path,
                                                    tmp_path: Path) -> None:
    plain, weighted = synthetic_fit_run, tmp_path / "weighted"  # plain: fit's defaults, the same folds
    assert main(["--fold", "1", "--features", str(synthetic_features), "--out", str(weighted),
                 "--class-weight", "balanced"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(plain / "folds.csv"), pd.read_csv(weighted / "folds.csv"))
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
