"""The report builds from a small run folder and holds every section, figure and per-patient table."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_synthetic_run

from lusfeat import report
from lusfeat.manifest import file_sha256
from lusfeat.report import main, split_check
from lusfeat.runfolder import load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


@pytest.mark.slow
def test_report_has_every_section_figure_and_patient_table(synthetic_run: Path, capsys):
    assert main([str(synthetic_run)]) == 0
    html = (synthetic_run / "report.html").read_text()
    summary = (synthetic_run / "summary.md").read_text()
    for heading in ("Data and split", "Overview: every backbone, fold and model", "mobilenet: fold 1", "mobilenet: fold 2",
                    "mobilenet: fold 3", "mobilenet: pooled", "ROC curves", "Confusion matrices", "Accuracy per region",
                    "Region scores: truth vs predicted", "Global score per patient", "Region and global agreement",
                    "Per-patient tables, fold 1", "Per-patient global scores"):
        assert heading in html, heading
    assert "patient-level cross-validation, 3 folds" in html
    assert "no test patient is among its fold&#x27;s training patients" in html
    # 6 figures for each of 3 folds + pooled, all real PNGs, nothing fetched from the network
    images = embedded_pngs(html)
    assert len(images) == 24 and all(image.startswith(PNG_SIGNATURE) for image in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    # one Fig. 4 card per test patient, each with its 6 regions and a global row
    cards = re.findall(r'<div class="card"><h4>Patient (\d+) .*?</table></div>', html)
    assert sorted(cards, key=int) == [str(i) for i in range(1, 7)]
    assert html.count("<b>global</b>") == 6
    assert 'class="ok"' in html and ('class="bad"' in html or 'class="near"' in html)
    # the numbers in the summary are the aggregate's
    run = load_run(synthetic_run)
    pooled = run.sections["mobilenet"][-1]
    head = pooled.aggregates[0].agreement
    line = next(line for line in summary.splitlines() if line.startswith("| mobilenet | pooled | head |"))
    assert f"| {head['region_accuracy']:.3f} | {head['region_qwk']:.3f} |" in line
    assert f"| {head['global_mae']:.2f} | {head['global_pearson']:.3f} | {head['global_spearman']:.3f} |" in line
    assert "wrote" in capsys.readouterr().out


def test_pooled_is_made_from_folds_when_absent(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_synthetic_run(run_dir, folds=2, pooled=False)
    run = load_run(run_dir)
    sections = run.sections["mobilenet"]
    assert [s.name for s in sections] == ["fold 1", "fold 2", "pooled"]
    assert "made by the report" in sections[-1].note
    assert len(sections[-1].predictions) == sum(len(s.predictions) for s in sections[:-1])


@pytest.mark.slow
def test_mean_probability_rule_and_twelve_regions(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    regions = tuple(f"{side}{k}" for side in "LR" for k in range(1, 7))
    write_synthetic_run(run_dir, folds=1, patients_per_fold=3, regions=regions, frames_per_video=2)
    assert main([str(run_dir), "--rule", "mean_proba", "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "argmax of the mean frame probabilities" in html
    assert "12 regions, global 0-36" in html and "L1 L2 L3 L4 L5 L6 R1" in html
    assert (tmp_path / "summary.md").is_file()


def test_leakage_is_reported(synthetic_run: Path):
    model_json = synthetic_run / "mobilenet" / "fold1" / "model.json"
    model = json.loads(model_json.read_text())
    test_patient = pd.read_csv(synthetic_run / "mobilenet" / "fold1" / "predictions.csv", dtype=str)["patient_id"].iloc[0]
    model["train_patients"].append(test_patient)
    model_json.write_text(json.dumps(model))
    assert split_check(load_run(synthetic_run)).startswith("WARNING: test patients also in training")


@pytest.mark.parametrize("make", ["missing", "empty", "bad_csv"])
def test_bad_run_folder_is_a_clear_error(tmp_path: Path, make: str, capsys):
    run_dir = tmp_path / "run"
    if make != "missing":
        (run_dir / "xception" / "fold1").mkdir(parents=True)
    if make == "bad_csv":
        (run_dir / "xception" / "fold1" / "predictions.csv").write_text("a,b\n1,2\n")
    assert main([str(run_dir)]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def check_report_of_a_fit_run(run: Path, patients: list[str], weights: str, out: Path, figures: int = 24) -> None:
    """``lusfeat.report`` of a run folder ``lusfeat.fit --fold all`` wrote (3 folds, one mobilenet backbone)."""
    assert main([str(run), "--out", str(out)]) == 0
    html = out.read_text()
    for heading in ("mobilenet: fold 1", "mobilenet: fold 3", "mobilenet: pooled", "Per-patient tables, fold 2",
                    "Per-patient global scores"):
        assert heading in html, heading
    assert len(embedded_pngs(html)) == figures
    assert sorted(re.findall(r'<div class="card"><h4>Patient (\d+)', html), key=int) == patients
    assert "no test patient is among its fold&#x27;s training patients" in html
    assert f"frozen mobilenet (weights {weights[:16]}" in html
    # frame numbers are fit's own, from metrics.json
    pooled = json.loads((run / "mobilenet" / "pooled" / "metrics.json").read_text())
    lines = (out.parent / "summary.md").read_text().splitlines()
    for model in ("video", "head", "logreg"):
        line = next(line for line in lines if line.startswith(f"| mobilenet | pooled | {model} |"))
        assert line.split(" | ")[4] == f"{pooled[model]['accuracy']:.3f}", model


def test_report_of_a_fit_run(tiny_study_run: Path, tiny_study: dict[str, Path], tmp_path: Path):
    # extract (made-up videos, random MobileNet weights file) then fit, then the report: no data needed
    check_report_of_a_fit_run(tiny_study_run, [str(p) for p in range(1, 7)], file_sha256(tiny_study["weights"]),
                              tmp_path / "report.html")


def test_report_of_a_real_fit_run(tiny_fit_run: Path, tmp_path: Path, monkeypatch):
    # The figures of a fit run are drawn by test_report_of_a_fit_run; not again here (half this test's time).
    monkeypatch.setattr(report, "_figures_html", lambda section: "")
    check_report_of_a_fit_run(tiny_fit_run, ["3", "4", "6"], "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf",
                              tmp_path / "report.html", figures=0)


def test_report_shows_calibration_score_sets_and_the_final_model(tiny_study_run: Path, tmp_path: Path):
    import shutil

    from lusfeat.fit import main as fit

    run = tmp_path / "run"
    shutil.copytree(tiny_study_run, run)
    html = main([str(run)]) == 0 and (run / "report.html").read_text()
    assert "Calibration and score sets" in html and "Reliability per video, before and after calibration" in html
    assert "equal-mass bins" in html and "coverage videos" in html
    assert "video set" in html and re.search(r'<td class="(ok|bad)">\{[0-3](,[0-3])*\}</td>', html)
    assert "No final model" in html
    assert fit(["--final", "--features", str(tiny_study_run.parent / "features" / "mobilenet.h5"), "--out", str(run)]) == 0
    assert main([str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "<b>Final model</b>" in html
    assert "no patient is held out" in html


def test_report_shows_the_distribution_checks_flag_rate(synthetic_run: Path):
    for fold, flagged in ((1, 1), (2, 0), (3, 2)):
        path = synthetic_run / "mobilenet" / f"fold{fold}" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["in_distribution"] = {"threshold": 2.5, "test_videos": 12, "flagged": flagged, "flag_rate": flagged / 12}
        path.write_text(json.dumps(metrics))
    assert main([str(synthetic_run)]) == 0
    html = (synthetic_run / "report.html").read_text()
    assert "Distribution check" in html
    assert "2 of 12 held-out videos (16.7%) flagged as unlike the training videos (distance above 2.50)" in html
    summary = (synthetic_run / "summary.md").read_text()
    assert "- mobilenet fold 1: 1 of 12 held-out videos (8.3%) flagged" in summary
