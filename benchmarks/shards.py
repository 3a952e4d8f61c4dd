"""Stage one in shards on this machine: processes x threads, Dask, the merge, and an estimate for N machines.

    python -m benchmarks.shards [--backbone mobilenet,xception] [--patients 4] [--frame-step 20]
        [--augment-copies 2] [--rounds 1] [--merge-frames 10000] [--no-dask] [--out FILE|DIR]

On the same COVID-BLUES frames (``--patients`` patients, so 2 shards of whole patients), each
configuration runs ``python -m lusfeat.extract`` in fresh processes, timed from process start to
end (Python, TensorFlow and the model start included), with each process' own extraction clock:

- ``1 x 2``: one unsharded process with 2 TensorFlow threads (``--threads 2``);
- ``2 x 1``: shards 1/2 and 2/2 at once, one thread each, then ``merge``;
- ``2 in sequence``: shard 1/2 then 2/2, 2 threads each, then ``merge``;
- ``dask local:2``: ``--dask local:2 --threads 1`` (cluster start, 2 shards, merge), unless ``--no-dask``.

Configurations alternate within each round, so that load from other jobs spreads over all of
them; compare them by their ratios to ``1 x 2`` in the same run. Every merged file is checked to
be bitwise the unsharded file of the same thread count.

The merge is also timed on synthetic shard files of ``--merge-frames`` frames (4 shards, 3 copies,
float32, each of ``--merge-dims`` feature sizes): seconds per 10,000 frames. From the measured
per-machine rate, start-up and merge, the JSON and the last table estimate the wall time of a
whole job on N machines.

Prints markdown tables and writes JSON (with machine and load) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._common import command_line, format_table, machine_info, publish, select_patients
from lusfeat.errors import LusfeatError

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(?P<frames>\d+) frames computed in (?P<seconds>[\d.]+) s")
CONFIGS = ("1 x 2", "2 x 1", "2 in sequence", "dask local:2")
ESTIMATE_FRAMES = 100_000  # frames of the job the N-machine estimate is for (a lab's year, at the default step)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _start(argv: list[str]) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen([sys.executable, "-m", "lusfeat.extract", *argv], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True), time.perf_counter()


def _finish(process: subprocess.Popen, began: float) -> dict[str, Any]:
    out, err = process.communicate()
    wall = time.perf_counter() - began
    if process.returncode != 0:
        raise LusfeatError(f"{' '.join(process.args[2:])} failed ({process.returncode}): {err[-2000:]}")
    runs = [{"frames": int(m["frames"]), "seconds": float(m["seconds"])} for m in SUMMARY.finditer(out)]
    merge = re.search(r"merged: \w+ .* \| ([\d.]+) s", out)
    return {"wall_seconds": wall, "extraction": runs, "merge_seconds": float(merge[1]) if merge else None,
            "stdout": out.strip().splitlines()[-4:]}


def run(argv: list[str]) -> dict[str, Any]:
    return _finish(*_start(argv))


def run_config(name: str, base: list[str], out: Path) -> dict[str, Any]:
    """One configuration in fresh processes into ``out``; wall seconds from the first start to the merged file."""
    began = time.perf_counter()
    if name == "1 x 2":
        parts = [run([*base, "--out", str(out), "--threads", "2"])]
    elif name == "2 x 1":
        started = [_start([*base, "--out", str(out), "--threads", "1", "--shard", f"{k}/2"]) for k in (1, 2)]
        parts = [_finish(*item) for item in started]
        parts.append(run(["merge", str(out)]))
    elif name == "2 in sequence":
        parts = [run([*base, "--out", str(out), "--threads", "2", "--shard", f"{k}/2"]) for k in (1, 2)]
        parts.append(run(["merge", str(out)]))
    else:
        parts = [run([*base, "--out", str(out), "--threads", "1", "--dask", "local:2"])]
    wall = time.perf_counter() - began
    extraction = [item for part in parts for item in part["extraction"]]
    merges = [part["merge_seconds"] for part in parts if part["merge_seconds"] is not None]
    return {"wall_seconds": wall, "extraction": extraction,
            "extraction_seconds_sum": sum(item["seconds"] for item in extraction),
            "extraction_seconds_max": max(item["seconds"] for item in extraction),
            "merge_seconds": sum(merges) if merges else 0.0, "parts": parts}


def same_bits(a: Path, b: Path) -> bool:
    import h5py

    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        features_equal = np.array_equal(x["features"][:].view(np.uint32), y["features"][:].view(np.uint32))
        frames_equal = all(np.array_equal(x["frames"][k][:], y["frames"][k][:]) for k in x["frames"])
    return features_equal and frames_equal


def synthetic_merge(folder: Path, frames: int, dim: int, copies: int = 3, shards: int = 4) -> dict[str, Any]:
    """Seconds to merge ``shards`` synthetic shard files of ``frames`` frames in all (random float32 features)."""
    from lusfeat.shards import ROWS, SHARD_ATTR, merge_shards, plan_shard, shard_path
    from lusfeat.store import ExtractionConfig, FeatureWriter

    patients = max(shards, frames // 100)
    table = pd.DataFrame({"path": [f"p{i * patients // frames}/v.mp4" for i in range(frames)],
                          "frame_index": np.arange(frames) % 100, "patient_id": [str(i * patients // frames)
                                                                                  for i in range(frames)],
                          "region": "L1", "score": np.arange(frames) % 4, "video_id": "v", "group": "covid"})
    config = ExtractionConfig(backbone=f"synthetic{dim}", weights="none", input_size=224, feature_dim=dim,
                              dtype="float32", copies=copies, aug_rotation=10.0, aug_shift=0.1, aug_zoom=0.1,
                              aug_flip=True, seed=0, frame_step=1, manifest_sha256="0" * 64)
    out = folder / f"synthetic{dim}.h5"
    rng = np.random.default_rng(0)
    for index in range(1, shards + 1):
        plan = plan_shard(table, index, shards)
        with FeatureWriter(shard_path(out, index, shards), config, table.iloc[plan.rows].reset_index(drop=True),
                           record={SHARD_ATTR: plan.attr, "batch_size": 32, "tf_threads": 1},
                           extra_datasets={ROWS: plan.rows}) as writer:
            for start in range(0, len(plan.rows), 4096):
                n = min(4096, len(plan.rows) - start)
                writer.write(start, rng.standard_normal((copies, n, dim), dtype=np.float32))
            writer.finish()
    summary = merge_shards(out)
    megabytes = out.stat().st_size / 1e6
    return {"frames": frames, "dim": dim, "copies": copies, "shards": shards, "seconds": summary.seconds,
            "file_mb": megabytes, "seconds_per_10k_frames": summary.seconds * 10_000 / frames}


def estimate(rate_frames_per_second: float, startup_seconds: float, merge_per_10k: float,
             machines: list[int], frames: int = ESTIMATE_FRAMES) -> list[dict[str, Any]]:
    """Wall time of ``frames`` frames on N machines: start-up + an N-th of the frames at one machine's rate + merge.

    Assumes whole patients balance the shards (``--shards`` a few times N helps) and that the
    shared file system feeds N readers; the merge runs once, on the client.
    """
    rows = []
    for n in machines:
        extract = frames / n / rate_frames_per_second
        merge = merge_per_10k * frames / 10_000
        total = startup_seconds + extract + (merge if n > 1 else 0.0)
        rows.append({"machines": n, "extract_hours": extract / 3600, "merge_minutes": merge / 60 if n > 1 else 0.0,
                     "total_hours": total / 3600})
    for row in rows:
        row["speed_up"] = rows[0]["total_hours"] / row["total_hours"]
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=str(REPO / "data_manifest.csv"), help="manifest CSV")
    parser.add_argument("--data-root", default=None, help="folder holding COVID-BLUES/ (default: $LUSFEAT_DATA_ROOT)")
    parser.add_argument("--weights", default=os.environ.get("LUSFEAT_WEIGHTS_DIR", "imagenet"),
                        help="as lusfeat.extract --weights (default: $LUSFEAT_WEIGHTS_DIR, else imagenet)")
    parser.add_argument("--backbone", default="mobilenet,xception", help="comma-separated (default: %(default)s)")
    parser.add_argument("--patients", default="4", help="all, a count K, or id,id,... (default: %(default)s)")
    parser.add_argument("--frame-step", type=int, default=20, help="every K-th frame (default: %(default)s)")
    parser.add_argument("--augment-copies", type=int, default=2, help="augmented copies (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="times each configuration runs (default: %(default)s)")
    parser.add_argument("--merge-frames", type=int, default=10_000,
                        help="frames of the synthetic merge; 0 skips it (default: %(default)s)")
    parser.add_argument("--merge-dims", default="256,512,2048",
                        help="feature sizes of the synthetic merge (default: %(default)s: mobilenet, vgg16, xception)")
    parser.add_argument("--no-dask", action="store_true", help="skip the dask local:2 configuration")
    parser.add_argument("--machines", default="1,2,4,8,16,32", help="N of the estimate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="patient choice (default: %(default)s)")
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from lusfeat.backbones import get_spec
        from lusfeat.embed import plan_frames
        from lusfeat.manifest import read_manifest, resolve_data_root
        from lusfeat.shards import plan_shard

        data_root = str(resolve_data_root(args.manifest, args.data_root))
        names = [name.strip() for name in args.backbone.split(",") if name.strip()]
        specs = {name: get_spec(name) for name in names}
        configs = [name for name in CONFIGS if not (args.no_dask and name.startswith("dask"))]
        if "dask" in " ".join(configs):
            try:
                import distributed  # noqa: F401
            except ImportError:
                configs = [name for name in configs if not name.startswith("dask")]
        table = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
        patients = select_patients(table, args.patients, args.seed)
        if len(patients) < 2:
            raise LusfeatError("--patients: 2 or more, for 2 shards of whole patients")
        with tempfile.TemporaryDirectory(prefix="lusfeat-shards-", dir=args.work_dir) as scratch:
            work = Path(scratch)
            manifest = work / "manifest.csv"
            table[table["patient_id"].isin(patients)].to_csv(manifest, index=False)
            frames = plan_frames(read_manifest(manifest, data_root), args.frame_step)
            record: dict[str, Any] = {
                "benchmark": "shards", "command": command_line("shards.py", argv), "machine": machine_info(),
                "settings": {key: value for key, value in vars(args).items() if key not in ("out", "work_dir")},
                "patients": patients, "frames": len(frames), "copies": args.augment_copies + 1,
                "frames_per_shard": plan_shard(frames, 1, 2).record["frames"],
                "backbones": {}}
            for name in specs:
                base = ["--manifest", str(manifest), "--data-root", data_root, "--backbone", name, "--weights",
                        args.weights, "--frame-step", str(args.frame_step), "--augment-copies",
                        str(args.augment_copies), "--batch-size", str(args.batch_size), "--no-progress"]
                runs: dict[str, list[dict[str, Any]]] = {config: [] for config in configs}
                for round_ in range(args.rounds):
                    for config in configs:
                        out = work / f"{name}-{config.replace(' ', '_').replace(':', '')}-{round_}"
                        print(f"[{name}] round {round_ + 1}: {config}", file=sys.stderr)
                        runs[config].append(run_config(config, base, out))
                        runs[config][-1]["file"] = str(out / f"{name}.h5")
                one_thread = [runs[c][0]["file"] for c in configs if c in ("2 x 1", "dask local:2")]
                two_threads = [runs[c][0]["file"] for c in configs if c in ("1 x 2", "2 in sequence")]
                record["backbones"][name] = {"runs": runs, "bitwise": {
                    "2 in sequence == 1 x 2 (2 threads)": same_bits(Path(two_threads[0]), Path(two_threads[1])),
                    "dask local:2 == 2 x 1 (1 thread)": (same_bits(Path(one_thread[0]), Path(one_thread[1]))
                                                         if len(one_thread) > 1 else None)}}
            if args.merge_frames:
                dims = sorted({int(dim) for dim in args.merge_dims.split(",") if dim.strip()}
                              | {spec.feature_dim for spec in specs.values()})
                record["merge"] = [synthetic_merge(work, args.merge_frames, dim) for dim in dims]
            summarise(record, [int(n) for n in args.machines.split(",")])
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish(record, args.out, "shards", render_tables)
    return 0


def summarise(record: dict[str, Any], machines: list[int]) -> None:
    """Medians over rounds, ratios to ``1 x 2``, and the N-machine estimate, into ``record``."""
    merge_by_dim = {item["dim"]: item["seconds_per_10k_frames"] for item in record.get("merge", [])}
    images = record["frames"] * record["copies"]
    for name, entry in record["backbones"].items():
        rows = {}
        for config, runs in entry["runs"].items():
            wall = float(np.median([run["wall_seconds"] for run in runs]))
            busiest = float(np.median([run["extraction_seconds_max"] for run in runs]))
            total = float(np.median([run["extraction_seconds_sum"] for run in runs]))
            rows[config] = {"wall_seconds": wall, "extraction_seconds_max": busiest, "extraction_seconds_sum": total,
                            "merge_seconds": float(np.median([run["merge_seconds"] for run in runs])),
                            "images_per_second_wall": images / wall}
        base = rows["1 x 2"]
        for row in rows.values():
            row["wall_ratio_to_1x2"] = row["wall_seconds"] / base["wall_seconds"]
        entry["summary"] = rows
        # One machine's rate and fixed start-up, from the unsharded run (all its cores, one process).
        rate = record["frames"] / base["extraction_seconds_max"]
        startup = base["wall_seconds"] - base["extraction_seconds_max"]
        from lusfeat.backbones import get_spec

        dim = get_spec(name).feature_dim
        entry["estimate"] = {"frames": ESTIMATE_FRAMES, "rate_frames_per_second": rate, "startup_seconds": startup,
                             "merge_seconds_per_10k_frames": merge_by_dim.get(dim, float("nan")),
                             "machines": estimate(rate, startup, merge_by_dim.get(dim, 0.0), machines)}


def render_tables(record: dict[str, Any]) -> str:
    parts = []
    images = record["frames"] * record["copies"]
    for name, entry in record["backbones"].items():
        rows = [[config, row["wall_seconds"], row["wall_ratio_to_1x2"], row["extraction_seconds_max"],
                 row["extraction_seconds_sum"], row["merge_seconds"], row["images_per_second_wall"]]
                for config, row in entry["summary"].items()]
        parts.append(f"{name}: {record['frames']} frames x {record['copies']} copies = {images} images, shards of "
                     f"{' + '.join(map(str, record['frames_per_shard']))} frames; bitwise: "
                     + ", ".join(f"{key}: {value}" for key, value in entry["bitwise"].items() if value is not None))
        parts.append(format_table(["configuration", "wall s", "wall / 1x2", "longest extraction s",
                                   "extraction s (sum)", "merge s", "images/s (wall)"], rows))
    if record.get("merge"):
        parts.append(format_table(["merge: feature dim", "frames", "copies", "shards", "file MB", "seconds",
                                   "s per 10,000 frames"],
                                  [[m["dim"], m["frames"], m["copies"], m["shards"], m["file_mb"], m["seconds"],
                                    m["seconds_per_10k_frames"]] for m in record["merge"]]))
    for name, entry in record["backbones"].items():
        guess = entry["estimate"]
        parts.append(f"{name}: estimate for {guess['frames']:,} frames x {record['copies']} copies from one machine's "
                     f"{guess['rate_frames_per_second']:.2f} frames/s, {guess['startup_seconds']:.0f} s start-up and "
                     f"{guess['merge_seconds_per_10k_frames']:.2f} s of merge per 10,000 frames")
        parts.append(format_table(["machines", "extraction h", "merge min", "total h", "speed-up"],
                                  [[row["machines"], row["extract_hours"], row["merge_minutes"], row["total_hours"],
                                    row["speed_up"]] for row in guess["machines"]]))
    return "\n\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
