"""Calibration and conformal coverage of ``lusfeat.fit``'s models, pooled over the held-out folds, per seed.

    python -m lusfeat.fit --fold all --features /work/features/xception.h5 --seed S --out /tmp/runs13-S   # S = 0, 1, 2
    python -m benchmarks.calibration --runs /tmp/runs13-0 /tmp/runs13-1 /tmp/runs13-2 [--backbone xception]
        [--out benchmarks/results/calibration.json]

Reads each run's ``RUN/<backbone>/pooled/metrics.json`` (every test patient scored by a fold model
that never saw it; calibration and score sets learned on that fold's training patients only) and
tabulates, per model and seed: Brier score and top-label ECE (equal-mass bins, the count in the
JSON) before and after the temperature, at the frame and the video level; QWK before and after;
and the score sets' coverage and mean size per video and per region, against the target coverage.
Prints markdown tables and writes the JSON (``benchmarks/_common.publish``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, format_table, machine_info, publish

MODELS = ("video", "head", "logreg")


def seed_row(metrics: dict[str, Any], model: str) -> dict[str, Any] | None:
    block = metrics.get(model)
    if not block or "calibrated" not in block:
        return None
    after = block["calibrated"]
    sets = block["sets"]
    return {
        "frame_brier_before": block["brier"], "frame_brier_after": after["brier"],
        "frame_ece_before": block["ece"], "frame_ece_after": after["ece"], "ece_bins_frames": block["ece_bins"],
        "video_brier_before": block["video"]["brier"], "video_brier_after": after["video"]["brier"],
        "video_ece_before": block["video"]["ece"], "video_ece_after": after["video"]["ece"],
        "ece_bins_videos": block["video"]["ece_bins"],
        "frame_qwk_before": block["qwk"], "frame_qwk_after": after["qwk"],
        "video_qwk_before": block["video"]["qwk"], "video_qwk_after": after["video"]["qwk"],
        "target_coverage": sets["target_coverage"],
        "video_coverage": sets["video"]["coverage"], "video_mean_set_size": sets["video"]["mean_set_size"],
        "video_size_counts": sets["video"]["size_counts"], "videos": sets["video"]["n"],
        "video_coverage_per_score": sets["video"]["coverage_per_score"],
        "region_coverage": sets["region"]["coverage"], "region_mean_set_size": sets["region"]["mean_set_size"],
        "regions": sets["region"]["n"],
        "temperature_per_fold": block["calibration"]["temperature_per_fold"],
    }


def collect(runs: list[Path], backbone: str) -> dict[str, Any]:
    from lusfeat.errors import LusfeatError

    per_seed = []
    for run in runs:
        path = run / backbone / "pooled" / "metrics.json"
        if not path.is_file():
            raise LusfeatError(f"{path} not found: run python -m lusfeat.fit --fold all --out {run} first")
        metrics = json.loads(path.read_text())
        rows = {model: seed_row(metrics, model) for model in MODELS}
        if not any(rows.values()):
            raise LusfeatError(f"{path} has no calibrated model: it was fitted by a lusfeat without calibration; refit")
        per_seed.append({"run": str(run), "seed": metrics["params"]["seed"], "models": rows,
                         "coverage": metrics.get("coverage"), "mean_set_size": metrics.get("mean_set_size")})
    summary = {}
    for model in MODELS:
        rows = [entry["models"][model] for entry in per_seed if entry["models"].get(model)]
        if rows:
            summary[model] = {key: {"mean": float(np.mean([row[key] for row in rows])),
                                    "std": float(np.std([row[key] for row in rows]))}
                              for key, value in rows[0].items() if isinstance(value, float)}
    return {"per_seed": per_seed, "summary": summary}


def render(record: dict[str, Any]) -> str:
    lines = [f"## Calibration, pooled held-out folds ({record['backbone']}; ECE top-label, equal-mass bins: "
             f"{record['ece_bins']})", ""]
    headers = ["model", "seed", "Brier frames before", "after", "ECE frames before", "after", "Brier videos before",
               "after", "ECE videos before", "after", "QWK frames before", "after", "QWK videos before", "after"]
    rows = []
    for entry in record["per_seed"]:
        for model in MODELS:
            row = entry["models"].get(model)
            if row:
                rows.append([model, entry["seed"], row["frame_brier_before"], row["frame_brier_after"],
                             row["frame_ece_before"], row["frame_ece_after"], row["video_brier_before"],
                             row["video_brier_after"], row["video_ece_before"], row["video_ece_after"],
                             row["frame_qwk_before"], row["frame_qwk_after"], row["video_qwk_before"],
                             row["video_qwk_after"]])
    lines += [format_table(headers, rows), "", "## Conformal score sets, pooled held-out folds", ""]
    headers = ["model", "seed", "target", "video coverage", "mean set size (videos)", "sets of 1/2/3/4",
               "region coverage", "mean set size (regions)", "videos", "regions"]
    rows = []
    for entry in record["per_seed"]:
        for model in MODELS:
            row = entry["models"].get(model)
            if row:
                rows.append([model, entry["seed"], row["target_coverage"], row["video_coverage"],
                             row["video_mean_set_size"], "/".join(map(str, row["video_size_counts"][1:])),
                             row["region_coverage"], row["region_mean_set_size"], row["videos"], row["regions"]])
    lines += [format_table(headers, rows), "", "## Mean ± std over seeds", ""]
    keys = ["video_ece_before", "video_ece_after", "video_brier_before", "video_brier_after", "frame_ece_before",
            "frame_ece_after", "video_qwk_before", "video_qwk_after", "video_coverage", "video_mean_set_size",
            "region_coverage"]
    rows = [[model, *(f"{stats[key]['mean']:.3f} ± {stats[key]['std']:.3f}" for key in keys)]
            for model, stats in record["summary"].items()]
    lines.append(format_table(["model", *keys], rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders of lusfeat.fit --fold all, one per seed")
    parser.add_argument("--backbone", default="xception", help="backbone folder inside each run (default: %(default)s)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    from lusfeat.errors import LusfeatError

    try:
        record = {"benchmark": "calibration", "command": command_line("calibration.py", argv),
                  "backbone": args.backbone, "machine": machine_info(), **collect([Path(r) for r in args.runs],
                                                                                   args.backbone)}
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    first = next(row for row in record["per_seed"][0]["models"].values() if row)
    record["ece_bins"] = {"frames": first["ece_bins_frames"], "videos": first["ece_bins_videos"]}
    publish(record, args.out, "calibration", render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
