"""The report of a ``lusfeat.fit`` run: one self-contained HTML file and a Markdown summary.

    python -m lusfeat.report RUN_DIR [--rule mode|mean_proba] [--out RUN_DIR/report.html]

Reads ``RUN_DIR/folds.csv`` and, for every backbone, ``<backbone>/fold<k>/{predictions.csv,
metrics.json, model.json}`` and ``<backbone>/pooled/`` (made from the folds when absent), and
writes ``RUN_DIR/report.html`` (figures embedded as base64 PNG: it opens offline, and can be
mailed as one file) and ``RUN_DIR/summary.md``. Per backbone and per fold (and pooled): the
frame metric table, ROC curves, confusion matrices, accuracy per region, region and global
score agreement, and the per-patient tables of the paper's Fig. 4 with agreement coloured;
calibration (Brier score, ECE before and after, reliability diagrams) and the conformal score
sets (coverage and size per video and region; each region's set in the patient tables), and
whether a final model (``fit --final``) exists. Per fold, heat maps of held-out videos per true
score, scored right and wrong (``--heatmaps``; they need ``--data-root``: ``lusfeat.page``).
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd

from lusfeat.aggregate import RULES, natural_sorted
from lusfeat.cli import add_verbose_argument, start
from lusfeat.errors import LusfeatError
from lusfeat.files import write_text
from lusfeat.index import video_keys
from lusfeat.page.build import HEATMAPS_PER_SCORE, report_heatmaps
from lusfeat.page.render import HELD_OUT_CSS
from lusfeat.records import evaluate_model
from lusfeat.runfolder import Run, Section, load_run, read_json
from lusfeat.scores import CLASSES, UNLABELLED

# --------------------------------------------------------------------------- numbers


def frame_metrics(section: Section, prefix: str) -> dict:
    """Frame- and video-level numbers of one model as fit wrote them in metrics.json; computed from the predictions
    only where there is none (a pooled section the report made from the folds, a run of an older lusfeat)."""
    block = (section.metrics or {}).get(prefix)
    if not isinstance(block, dict) or "accuracy" not in block:
        block = evaluate_model(section.predictions.labelled(), prefix)
    video = block.get("video") or {}
    return {"frames": block.get("n"), "accuracy": block.get("accuracy"), "macro_f1": block.get("macro_f1"),
            "qwk": block.get("qwk"), "roc_auc_macro": block.get("roc_auc_macro"),
            "video_accuracy": video.get("accuracy"), "fit_seconds": block.get("fit_seconds")}


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "p<0.001" if value < 0.001 else f"p={value:.3f}"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


METRIC_COLUMNS = [  # (header, source, key, digits)
    ("frames", "frame", "frames", 0),
    ("frame acc", "frame", "accuracy", 3),
    ("macro F1", "frame", "macro_f1", 3),
    ("frame QWK", "frame", "qwk", 3),
    ("AUC (macro OvR)", "frame", "roc_auc_macro", 3),
    ("video acc", "frame", "video_accuracy", 3),
    ("regions", "agree", "regions", 0),
    ("region acc", "agree", "region_accuracy", 3),
    ("region QWK", "agree", "region_qwk", 3),
    ("patients", "agree", "patients", 0),
    ("global MAE", "agree", "global_mae", 2),
    ("Pearson r", "agree", "global_pearson", 3),
    ("Spearman rho", "agree", "global_spearman", 3),
]


def metric_rows(section: Section) -> list[tuple[str, list[str]]]:
    rows = []
    for agg in section.aggregates:
        frame = frame_metrics(section, agg.model)
        values = [_fmt(frame[key] if source == "frame" else agg.agreement[key], digits)
                  for _, source, key, digits in METRIC_COLUMNS]
        rows.append((agg.model, values))
    return rows


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;
     color:#222;line-height:1.4;padding:0 16px}
h1{font-size:26px;margin-bottom:4px} h2{font-size:21px;border-bottom:2px solid #345;padding-bottom:4px;margin-top:36px}
h3{font-size:17px;margin-top:28px;color:#234} h4{font-size:14px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px}
th,td{border:1px solid #c8ccd0;padding:3px 7px;text-align:right}
th{background:#eef1f4} td.l,th.l{text-align:left}
.note{color:#555;font-size:13px} .box{background:#f6f8fa;border:1px solid #dde;padding:8px 14px;border-radius:4px}
.ok{background:#cdebd3} .near{background:#fbe7b5} .bad{background:#f4c4c6} .na{background:#eee}
img{max-width:100%;height:auto;border:1px solid #e3e3e3;margin:4px 0}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;flex:0 1 calc(50% - 6px);max-width:calc(50% - 6px)} figure img{width:100%} figcaption{font-weight:bold;font-size:14px;margin:10px 0 2px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccd;border-radius:4px;padding:6px 8px;flex:0 0 auto}
.card table{margin:2px 0;font-size:12px} .card td,.card th{padding:2px 5px} .card h4{margin:2px 0 4px}
nav ul{columns:3;font-size:13px}
table{display:block;max-width:100%;overflow-x:auto} .card{max-width:100%;overflow-x:auto;box-sizing:border-box}
@media (max-width:700px){body{margin:10px auto;padding:0 10px} figure{flex:1 1 100%;max-width:100%} nav ul{columns:1}}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _img(figure, alt: str) -> str:
    from lusfeat.figures import png_bytes

    data = base64.b64encode(png_bytes(figure)).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    head = "".join(f'<th class="l">{_esc(h)}</th>' if i < left else f"<th>{_esc(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else (f'<td class="l">{cell}</td>' if i < left else f"<td>{cell}</td>")
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _score_cell(pred, truth, near: int = 1) -> str:
    if truth is None or (isinstance(truth, float) and math.isnan(truth)) or truth == UNLABELLED:
        return f'<td class="na">{_esc(pred)}</td>'
    diff = abs(float(pred) - float(truth))
    kind = "ok" if diff == 0 else ("near" if diff <= near else "bad")
    return f'<td class="{kind}">{_esc(int(pred))}</td>'


def distribution_text(section: Section) -> str:
    """The held-out videos the fold's distribution check flags as unlike the training videos; "" where not recorded."""
    check = (section.metrics or {}).get("in_distribution")
    if not check:
        return ""
    if check.get("flag_rate") is None:  # the final model: no held-out video
        return f"threshold {check['threshold']:.2f}, no held-out videos (trained on every patient)"
    text = (f"{check['flagged']} of {check['test_videos']} held-out videos ({100 * check['flag_rate']:.1f}%) flagged "
            "as unlike the training videos")
    if "threshold" in check:
        text += f" (distance above {check['threshold']:.2f})"
    if check.get("per_fold"):
        text += "; per fold " + ", ".join(f"{100 * rate:.1f}%" for rate in check["per_fold"])
    return text


def _metrics_html(section: Section) -> str:
    header = ["model"] + [h for h, *_ in METRIC_COLUMNS]
    return _table(header, [[_esc(p)] + v for p, v in metric_rows(section)])


def _uncertainty_html(section: Section) -> str:
    """Per model: Brier score and ECE before and after calibration, its temperature, and the score sets' coverage."""
    rows = []
    for prefix in section.prefixes:
        block = (section.metrics or {}).get(prefix) or {}
        after, sets = block.get("calibrated"), block.get("sets")
        if not after or not sets:
            continue
        calibration = block.get("calibration") or {}
        temperature = calibration.get("temperature", calibration.get("temperature_per_fold"))
        if isinstance(temperature, list):
            temperature = " / ".join(_fmt(t, 2) for t in temperature)
        video, region = sets["video"], sets["region"]
        rows.append([_esc(prefix), _fmt(block["video"].get("brier")), _fmt(after["video"].get("brier")),
                     _fmt(block["video"].get("ece")), _fmt(after["video"].get("ece")), _fmt(block.get("ece")),
                     _fmt(after.get("ece")), _esc(_fmt(temperature, 2) if not isinstance(temperature, str) else temperature),
                     _fmt(after["video"].get("qwk")), _fmt(sets["target_coverage"], 2), _fmt(video["coverage"]),
                     _fmt(video["mean_set_size"], 2), _fmt(region["coverage"]), _fmt(region["mean_set_size"], 2)])
    if not rows:
        return '<p class="note">No calibration or score sets in metrics.json (fitted before lusfeat had them).</p>'
    bins = ((section.metrics or {}).get(section.prefixes[0]) or {}).get("video", {}).get("ece_bins", "?")
    header = ["model", "Brier videos", "after", "ECE videos", "after", "ECE frames", "after", "temperature",
              "QWK videos after", "target", "coverage videos", "mean set videos", "coverage regions", "mean set regions"]
    return (_table(header, rows) + '<p class="note">Brier: multiclass (0 best, 2 worst). ECE: top-label expected '
            f"calibration error over equal-mass bins (videos: {bins} bins; frames: 10). After = one temperature "
            "learned on inner folds of the training patients only; it never changes a score (QWK unchanged for the "
            "frame scores and the video model). Coverage: share of test videos (regions) whose score set holds the "
            "true score; the sets were calibrated on training patients only. A region's set spans its videos' sets.</p>")


def _final_html(run: Run, backbone: str) -> str:
    final = read_json(run.path / backbone / "final" / "metrics.json")
    if not final:
        return ('<p class="note">No final model: <code>python -m lusfeat.fit --final</code> trains every model on '
                "all patients, the model to score new patients with.</p>")
    return (f'<div class="box"><b>Final model</b>: {_esc(run.path / backbone / "final")}, trained on all '
            f"{len(final.get('train_patients', []))} patients. {_esc(final.get('note', ''))}</div>")


def _figures_html(section: Section) -> str:
    from lusfeat.figures import (
        confusion_figure,
        global_scatter_figure,
        region_accuracy_figure,
        region_confusion_figure,
        reliability_figure,
        roc_figure,
    )

    p, aggs = section.prefixes, section.aggregates
    title = f"{section.backbone} {section.name}"
    figures = [
        ("ROC curves (frames, one vs rest)", roc_figure(section.predictions, p)),
        ("Confusion matrices (frames, normalised by true score)", confusion_figure(section.predictions, p)),
        ("Accuracy per region (frames)", region_accuracy_figure(section.predictions, p)),
        ("Region scores: truth vs predicted", region_confusion_figure(aggs)),
        ("Global score per patient: predicted vs truth", global_scatter_figure(aggs)),
        ("Reliability per video, before and after calibration", reliability_figure(section.predictions, p)),
    ]
    cells = "".join(f"<figure><figcaption>{_esc(caption)}</figcaption>{_img(figure, f'{caption}, {title}')}</figure>"
                    for caption, figure in figures)
    return f'<div class="figs">{cells}</div>'



def _patient_summary_html(section: Section) -> str:
    """One row per patient: regions, true global score and each model's, coloured by agreement."""
    by_prefix = {agg.model: agg.patients.set_index("patient_id") for agg in section.aggregates}
    first = section.aggregates[0].patients
    groups = section.predictions.frames.groupby("patient_id")["group"].first()
    header = ["patient", "group", "fold", "regions", "frames", "true global"]
    for agg in section.aggregates:
        header += [f"{agg.model} global", f"{agg.model} regions agreeing"]
    rows = []
    for patient in first["patient_id"]:
        base = by_prefix[section.aggregates[0].model].loc[patient]
        truth = base["truth"]
        row = [_esc(patient), _esc(groups.get(patient, "") if len(groups) else ""), _esc(base.get("fold", "")),
               f"{base['regions']} (0-{base['max_score']})", str(base["frames"]), _fmt(truth, 0) if not math.isnan(truth) else "-"]
        for agg in section.aggregates:
            mine = by_prefix[agg.model].loc[patient]
            row += [_score_cell(mine["pred"], truth, near=2), f"{mine['regions_agree']}/{mine['regions_labelled']}"]
        rows.append(row)
    return _table(header, rows, left=2)


def _patient_card(section: Section, patient: str) -> str:
    """The paper's Fig. 4 for one patient: per region, frames per predicted score, truth and scores."""
    tables = {agg.model: agg.regions[agg.regions["patient_id"] == patient].set_index("region") for agg in section.aggregates}
    first = tables[section.aggregates[0].model]
    regions = natural_sorted(first.index)
    header = ["region", "frames", "truth"]
    for prefix, table in tables.items():
        header += [f"{prefix} n 0/1/2/3", prefix] + ([f"{prefix} set"] if _has_sets(table) else [])
    rows = []
    for region in regions:
        truth = int(first.loc[region, "truth"])
        row = [_esc(region), str(first.loc[region, "frames"]), "-" if truth == UNLABELLED else str(truth)]
        for table in tables.values():
            counts = "/".join(str(int(table.loc[region, f"n_pred{k}"])) for k in CLASSES)
            row += [counts, _score_cell(table.loc[region, "pred"], truth)]
            if _has_sets(table):
                held = table.loc[region, "in_set"]
                kind = "na" if held is None or held != held else ("ok" if held else "bad")
                row.append(f'<td class="{kind}">{_esc(table.loc[region, "score_set"])}</td>')
        rows.append(row)
    labelled = (first["truth"] != UNLABELLED).all()
    true_global = int(first["truth"].sum()) if labelled else None
    total = ["<b>global</b>", str(int(first["frames"].sum())), "-" if true_global is None else f"<b>{true_global}</b>"]
    for table in tables.values():
        total += ["", _score_cell(int(table["pred"].sum()), true_global, near=2)] + ([""] if _has_sets(table) else [])
    rows.append(total)
    frames = section.predictions.frames
    group = frames.loc[frames["patient_id"] == patient, "group"].iloc[0]
    title = f"Patient {patient}" + (f" ({group})" if group else "") + f": {len(regions)} regions, global 0-{3 * len(regions)}"
    return f'<div class="card"><h4>{_esc(title)}</h4>{_table(header, rows)}</div>'


def _has_sets(table: pd.DataFrame) -> bool:
    return "score_set" in table.columns and table["score_set"].notna().all()


def _agreement_text(section: Section) -> str:
    parts = []
    for agg in section.aggregates:
        a = agg.agreement
        parts.append(
            f"<li><b>{_esc(agg.model)}</b>: region accuracy {_fmt(a['region_accuracy'])} and quadratic-weighted "
            f"kappa {_fmt(a['region_qwk'])} over {a['regions']} patient regions; global score MAE "
            f"{_fmt(a['global_mae'], 2)}, Pearson r {_fmt(a['global_pearson'])} ({_p(a['global_pearson_p'])}), "
            f"Spearman rho {_fmt(a['global_spearman'])} ({_p(a['global_spearman_p'])}) over {a['patients']} patients.</li>")
    kappa = (section.metrics or {}).get("agreement_kappa")
    if isinstance(kappa, int | float):
        parts.append(f"<li>Head and logistic regression agree on frame scores with Cohen's kappa {kappa:.3f} "
                     "(metrics.json).</li>")
    return f"<ul>{''.join(parts)}</ul>"


def split_check(run: Run) -> str:
    """State whether every fold's training patients are disjoint from its test patients (from model.json)."""
    checked, problems = 0, []
    for sections in run.sections.values():
        for section in sections:
            train = set(map(str, (section.model or {}).get("train_patients") or []))
            if section.name == "pooled" or not train:
                continue
            checked += 1
            overlap = train & set(section.predictions.frames["patient_id"])
            if overlap:
                problems.append(f"{section.backbone} {section.name}: {', '.join(natural_sorted(overlap))}")
    if problems:
        return "WARNING: test patients also in training: " + "; ".join(problems)
    if checked:
        return f"Checked from model.json in {checked} fold(s): no test patient is among its fold's training patients."
    return "Training patients not recorded (no model.json): the patient-level split could not be re-checked here."


def _data_html(run: Run, rule: str) -> str:
    frames = pd.concat([s[-1].predictions.frames for s in run.sections.values()], ignore_index=True).drop_duplicates(
        subset=["path", "frame_index"])
    labelled = frames[frames["score"].astype(int) != UNLABELLED]
    per_score = labelled["score"].astype(int).value_counts().reindex(CLASSES, fill_value=0)
    videos = frames[~pd.Series(video_keys(frames)).duplicated().to_numpy()]
    per_video = videos["score"].astype(int).value_counts().reindex(CLASSES, fill_value=0)
    regions = natural_sorted(frames["region"].unique())
    groups = frames.drop_duplicates("patient_id")["group"].value_counts().to_dict()
    group_text = ", ".join(f"{name or 'unknown'} {count}" for name, count in groups.items())
    model = next((s.model for ss in run.sections.values() for s in ss if s.model), None) or {}
    extraction = model.get("extraction") or {}
    items = [
        f"<li><b>Data</b>: {frames['patient_id'].nunique()} patients, {len(videos)} videos, {len(frames)} frames "
        f"scored (frames per true score 0/1/2/3: {'/'.join(map(str, per_score))}; videos per score: "
        f"{'/'.join(map(str, per_video))}); groups: {_esc(group_text)}.</li>",
        f"<li><b>Regions</b> (from the data): {_esc(' '.join(regions))}; a patient's global score is the sum of its "
        f"region scores, 0-{3 * len(regions)} when all {len(regions)} are present.</li>",
        *(["<li><b>Source</b>: COVID-BLUES (Wiedemann et al., IEEE JBHI 29(9):6301-6310, 2025; CC BY-NC-ND 4.0), "
            "six BLUE points per patient, one expert score per video; read at run time, never copied.</li>"]
          if frames["path"].astype(str).str.contains("COVID-BLUES").any() else []),
        "<li><b>Labels</b>: each frame inherits the expert score of its video (COVID-BLUES scores each video once); "
        "frame-level numbers therefore measure agreement with a video label, not a per-frame reading.</li>",
    ]
    if run.folds is not None:
        sizes = run.folds.groupby("fold")["patient_id"].nunique()
        items.append(f"<li><b>Split</b>: patient-level cross-validation, {len(sizes)} folds "
                     f"({', '.join(f'fold {k}: {n} patients' for k, n in sizes.items())}); every patient is tested once, "
                     f"by a model trained without any of its frames. {_esc(split_check(run))}</li>")
    else:
        items.append(f"<li><b>Split</b>: no folds.csv in the run. {_esc(split_check(run))}</li>")
    if extraction:
        items.append(
            f"<li><b>Features</b>: frozen {_esc(extraction.get('backbone'))} (weights {_esc(str(extraction.get('weights'))[:16])}, "
            f"input {extraction.get('input_size')} px, {extraction.get('pooling', 'avg')} pooling, "
            f"{extraction.get('feature_dim')} features), every {extraction.get('frame_step')}th frame, "
            f"{int(extraction.get('copies', 1)) - 1} augmented copies per frame.</li>")
    rule_text = ("the most frequent frame score, a tie going to the higher score (the paper's rule)" if rule == "mode"
                 else "the argmax of the mean frame probabilities (a tie going to the higher score)")
    items.append(f"<li><b>Aggregation</b>: a region's predicted score is {rule_text}; its true score is the most "
                 "frequent true frame score. Colours: green = equal to the truth, amber = off by one (global: by up "
                 "to two), red = further, grey = no truth.</li>")
    counts = frames.groupby("patient_id")["region"].nunique()
    short = counts[counts < len(regions)]
    if len(short):
        items.append(f"<li><b>Incomplete patients</b>: {len(short)} of {len(counts)} patients have fewer than "
                     f"{len(regions)} regions (from {int(counts.min())}); their global scores span a smaller range "
                     "(0-3 per region scored), so global MAE and correlations mix ranges. Each table shows the "
                     "number of regions beside the score.</li>")
    items.append("<li>Small numbers: with a few dozen patients, correlations and kappas carry wide uncertainty; "
                 "the p-values shown are the usual two-sided tests, not corrected for the several models and folds.</li>")
    return f'<div class="box"><ul>{"".join(items)}</ul></div>'


def build_html(run: Run, rule: str, heatmaps: dict[str, str] | None = None) -> str:
    parts = [f"<h1>lusfeat report: {_esc(run.path.resolve().name)}</h1>",
             f'<p class="note">{_esc(run.path.resolve())} | made {time.strftime("%Y-%m-%d %H:%M")} | '
             f"backbones: {_esc(', '.join(run.sections))}</p>",
             "<h2 id=\"data\">Data and split</h2>", _data_html(run, rule)]
    nav = ['<li><a href="#data">Data and split</a></li>', '<li><a href="#overview">Overview</a></li>']
    overview = []
    for backbone, sections in run.sections.items():
        for section in sections:
            nav.append(f'<li><a href="#{section.anchor}">{_esc(backbone)}: {_esc(section.name)}</a></li>')
            for prefix, values in metric_rows(section):
                overview.append([_esc(backbone), _esc(section.name), _esc(prefix)] + values)
    parts.insert(2, f"<nav><b>Contents</b><ul>{''.join(nav)}</ul></nav>")
    parts += ['<h2 id="overview">Overview: every backbone, fold and model</h2>',
              _table(["backbone", "test set", "model"] + [h for h, *_ in METRIC_COLUMNS], overview, left=3),
              '<p class="note">Frame and video numbers (a video\'s score: the argmax of its mean frame '
              "probabilities; for the video ordinal model, its own score of the whole video) as lusfeat.fit wrote them in metrics.json, or by lusfeat.metrics from predictions.csv where absent; "
              "region and global numbers computed here from predictions.csv by the aggregation rule above. "
              "QWK = quadratic-weighted Cohen's kappa; AUC = mean one-vs-rest ROC-AUC over the scores present.</p>"]
    for backbone, sections in run.sections.items():
        parts += [f"<h2>{_esc(backbone)}</h2>", _final_html(run, backbone)]
        for section in sections:
            patients = natural_sorted(section.predictions.frames["patient_id"].unique())
            parts.append(f'<h3 id="{section.anchor}">{_esc(backbone)}: {_esc(section.name)} '
                         f"({len(patients)} test patients)</h3>")
            if section.note:
                parts.append(f'<p class="note">{_esc(section.note)}</p>')
            warnings = (section.metrics or {}).get("warnings") or []
            if warnings:
                parts.append('<p class="note"><b>Warnings from fit</b>: ' + _esc("; ".join(map(str, warnings))) + "</p>")
            check = distribution_text(section)
            if check:
                parts += ["<h4>Distribution check (lusfeat.predict's in_distribution)</h4>",
                          f'<p>{_esc(check)}. <span class="note">The threshold is set on held-out training patients '
                          "to flag about 5% of new videos like the training ones; lusfeat.predict flags new videos "
                          "beyond it as unlike anything the model was trained on.</span></p>"]
            parts += ["<h4>Metrics</h4>", _metrics_html(section), "<h4>Region and global agreement</h4>",
                      _agreement_text(section), "<h4>Calibration and score sets</h4>", _uncertainty_html(section),
                      _figures_html(section)]
            parts += [(heatmaps or {}).get(section.anchor, "")]
            if section.name == "pooled":
                parts += ["<h4>Per-patient global scores (every patient, tested in its own fold)</h4>", _patient_summary_html(section)]
            else:
                parts += [f"<h4>Per-patient tables, {_esc(section.name)} (paper's Fig. 4: predicted frames per score, "
                          "region and global scores)</h4>",
                          '<p class="note">Per region: its frames, its true score, then for each model the number of '
                          "frames it scored 0/1/2/3 and the region score it gives (their most frequent score, or by "
                          "the rule above), and its score set where it has one (green: holds the true score); the "
                          "last row sums the regions into the global score.</p>",
                          '<div class="cards">' + "".join(_patient_card(section, p) for p in patients) + "</div>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>lusfeat report {_esc(run.path.resolve().name)}</title><style>{CSS}{HELD_OUT_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


# --------------------------------------------------------------------------- Markdown


def build_markdown(run: Run, rule: str) -> str:
    header = ["backbone", "test set", "model"] + [h for h, *_ in METRIC_COLUMNS]
    lines = [f"# lusfeat run {run.path.resolve().name}", "",
             f"Patient-level folds; region score = {'most frequent frame score (ties to the higher)' if rule == 'mode' else 'argmax of mean frame probabilities'}; "
             "global score = sum of region scores. Frame labels are the video's expert score.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for backbone, sections in run.sections.items():
        for section in sections:
            for prefix, values in metric_rows(section):
                lines.append("| " + " | ".join([backbone, section.name, prefix] + values) + " |")
    checks = [(backbone, section.name, distribution_text(section)) for backbone, sections in run.sections.items()
              for section in sections if distribution_text(section)]
    if checks:
        lines += ["", "Distribution check (held-out videos flagged as unlike the training videos):", ""]
        lines += [f"- {backbone} {name}: {text}" for backbone, name, text in checks]
    lines += ["", "Full report with figures and per-patient tables: report.html", ""]
    return "\n".join(lines)


def write_report(run_dir: str | os.PathLike, rule: str = "mode", out: str | os.PathLike | None = None, *,
                 heatmaps: int = HEATMAPS_PER_SCORE, data_root: str | None = None, weights: str = "imagenet") -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.md``; return their paths (heat maps: ``lusfeat.page.build``)."""
    import matplotlib

    matplotlib.use("Agg")
    run = load_run(run_dir, rule)
    html_path = Path(out) if out else Path(run_dir) / "report.html"
    md_path = html_path.with_name("summary.md")
    maps = report_heatmaps(run, heatmaps, data_root, weights) if heatmaps > 0 else None
    for path, text in ((html_path, build_html(run, rule, maps)), (md_path, build_markdown(run, rule))):
        write_text(text, path)
    return html_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a lusfeat.fit run folder (holding folds.csv and <backbone>/fold<k>/)")
    parser.add_argument("--rule", choices=RULES, default="mode",
                        help="region score: mode = most frequent frame score, ties to the higher (paper); "
                             "mean_proba = argmax of mean frame probabilities (default: %(default)s)")
    parser.add_argument("--out", default=None, help="HTML file to write (default: RUN_DIR/report.html; summary.md beside it)")
    parser.add_argument("--heatmaps", type=int, default=HEATMAPS_PER_SCORE, help="held-out videos per true score and "
                        "fold shown with the heat map of the frame that weighs most (0: none; default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="folder the run's video paths are relative to, for the heat "
                        "maps (default: $LUSFEAT_DATA_ROOT)")
    parser.add_argument("--weights", default="imagenet", help="backbone weights the run's features were made with, "
                        "for the heat maps (default: %(default)s)")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    start(args.verbose, tensorflow=False)
    try:
        html_path, md_path = write_report(args.run_dir, args.rule, args.out, heatmaps=args.heatmaps,
                                          data_root=args.data_root, weights=args.weights)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(Path(md_path).read_text(encoding="utf-8"))
    print(f"wrote {html_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
