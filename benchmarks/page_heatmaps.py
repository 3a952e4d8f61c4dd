"""What the heat maps on predict's page cost: ``lusfeat.predict`` of the same input with 0, 1, 2, 3 heat maps per video.

    python -m benchmarks.page_heatmaps --model RUN/<backbone>/final INPUT [--data-root DIR] [--counts 0,1,2,3]
        [--weights imagenet] [--out FILE|DIR]

One process, one warm-up run first (``--heatmaps 0``, discarded: TensorFlow's and the engine's
start-up), then ``predict`` once per count, each timed wall (``perf_counter``) and CPU (the
process' own, every thread). The heat maps' cost is the difference from the run without them
(building the TensorFlow backbone for the maps, then per video the gradient from the pooled
features and one backbone pass per frame shown), given per video. The machine is shared: the
load average before and after is recorded, and CPU seconds travel better than wall seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import command_line, format_table, machine_info, publish
from lusfeat.errors import LusfeatError


def timed_predict(model: str, input_path: str, out: Path, count: int, data_root: str | None,
                  weights: str) -> dict[str, Any]:
    from lusfeat.predict import predict

    wall, cpu = time.perf_counter(), time.process_time()
    result = predict(model, input_path, out=out, data_root=data_root, weights=weights, heatmaps=count,
                     progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    videos = sum(len(region["videos"]) for patient in result["patients"] for region in patient["regions"].values())
    return {"heatmaps": count, "wall_s": wall, "cpu_s": cpu, "videos": videos, "frames": result["frames"],
            "page_bytes": (out / "report.html").stat().st_size}


def run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    counts = [int(part) for part in args.counts.split(",")]
    if 0 not in counts:
        counts = [0, *counts]
    record: dict[str, Any] = {"command": command_line("page_heatmaps.py", argv), "machine": machine_info(),
                              "model": args.model, "input": args.input, "runs": []}
    with tempfile.TemporaryDirectory(prefix="page-heatmaps-") as scratch:
        timed_predict(args.model, args.input, Path(scratch) / "warm", 0, args.data_root, args.weights)
        for count in counts:
            record["runs"].append(timed_predict(args.model, args.input, Path(scratch) / f"k{count}", count,
                                                args.data_root, args.weights))
    base = next(r for r in record["runs"] if r["heatmaps"] == 0)
    for entry in record["runs"]:
        extra = entry["wall_s"] - base["wall_s"]
        entry.update({"heatmaps_wall_s": extra, "heatmaps_cpu_s": entry["cpu_s"] - base["cpu_s"],
                      "heatmaps_wall_s_per_video": extra / entry["videos"]})
    return record


def render(record: dict[str, Any]) -> str:
    rows = [[r["heatmaps"], r["videos"], r["frames"], r["wall_s"], r["cpu_s"], r["heatmaps_wall_s"],
             r["heatmaps_cpu_s"], r["heatmaps_wall_s_per_video"], r["page_bytes"] // 1024] for r in record["runs"]]
    load = record["machine"].get("load_average")
    return (f"predict with N heat maps per video ({record['model']}; load average before {load}, after "
            f"{record['machine_after']['load_average']})\n\n"
            + format_table(["heat maps per video", "videos", "frames", "wall s", "CPU s", "heat maps wall s",
                            "heat maps CPU s", "wall s per video", "page KB"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="what lusfeat.predict takes: a manifest CSV or a patient folder")
    parser.add_argument("--model", required=True, help="a lusfeat.fit model folder")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--counts", default="0,1,2,3", help="heat maps per video to time (default: %(default)s)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    try:
        record = run(args, argv)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish(record, args.out, "page_heatmaps", render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
