"""Stage-one throughput: ``lusfeat.extract`` end to end against the bare network, and its peak memory.

    python benchmarks/extract_throughput.py [--backbone xception,vgg16,mobilenet] [--videos 12]
        [--frame-step 10] [--augment-copies 2] [--memory-factor 4] [--no-bfloat16] [--out FILE|DIR]

For each backbone, on the same COVID-BLUES frames and augmented copies:

- **extraction**: ``python -m lusfeat.extract`` run in a subprocess on a manifest of ``--videos``
  videos (decode, augment, network, HDF5 write; its own clock, which starts after the model is
  built), images/s, and the subprocess' peak resident memory (``VmHWM`` in /proc/self/status;
  not ``ru_maxrss``, which on Linux carries the parent's RSS over fork/exec);
- **bare**: the same images, already decoded, augmented and resized in memory, through
  ``model.predict(batch_size=B)`` and through the compiled call that extract uses
  (``tf.function(model(x, training=False))``), steady state after one warm-up batch, measured
  before and after the extraction so that drift shows;
- **memory**: extraction again on ``--memory-factor`` times as many videos (4N frames): its peak
  resident memory should equal the one at N;
- **bfloat16** (optional): the compiled call of the extractor ``lusfeat.extract --precision bfloat16``
  builds (``build_feature_extractor(..., precision="bfloat16")``), its speed and the cosine
  similarity of its features to the float32 ones on the same real frames.

Prints a markdown table and writes JSON (with machine and version info) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import command_line, format_table, machine_info, publish  # noqa: E402
from lusfeat.errors import LusfeatError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Runs in the subprocess: the real command-line entry point, with its summary and peak RSS recorded.
CHILD_CODE = r"""
import json, resource, sys, time
began = time.perf_counter()
from lusfeat import extract
summaries = []
original = extract.extract_backbone
def recording(*args, **kwargs):
    summary = original(*args, **kwargs)
    summaries.append(summary)
    return summary
extract.extract_backbone = recording
code = extract.main(sys.argv[2:])
wall = time.perf_counter() - began
s = summaries[0] if summaries else None
# VmHWM: the peak RSS of this process' own memory map. (ru_maxrss is not usable here: on Linux
# it keeps the parent's RSS at fork/exec, so every child would report at least the parent's size.)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
record = {"code": code, "wall_seconds": wall, "peak_rss_mb": peak_kb / 1024,
          "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "seconds": s.seconds if s else None, "frames": s.frames if s else None,
          "copies": s.copies if s else None, "computed_frames": s.computed_frames if s else None}
with open(sys.argv[1], "w") as handle:
    json.dump(record, handle)
raise SystemExit(code)
"""


def select_videos(manifest_path: Path, data_root: str | None, count: int, seed: int) -> pd.DataFrame:
    """``count`` manifest rows (videos) in a seeded order; a prefix of the order for a smaller count."""
    table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    if count > len(table):
        raise LusfeatError(f"{count} videos asked for, the manifest has {len(table)}")
    order = np.random.default_rng(seed).permutation(len(table))
    return table.iloc[np.sort(order[:count])]


def run_extraction_subprocess(manifest: Path, data_root: str, backbone: str, weights: str, args: argparse.Namespace,
                              work: Path) -> dict[str, Any]:
    """``python -m lusfeat.extract`` in a fresh process; its own summary plus its peak RSS."""
    out = work / f"features-{backbone}-{manifest.stem}"
    record_path = work / f"child-{backbone}-{manifest.stem}.json"
    argv = ["--manifest", str(manifest), "--data-root", data_root, "--backbone", backbone, "--weights", weights,
            "--augment-copies", str(args.augment_copies), "--frame-step", str(args.frame_step),
            "--batch-size", str(args.batch_size), "--out", str(out), "--overwrite", "--no-progress"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD_CODE, str(record_path), *argv], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0 or not record_path.is_file():
        raise LusfeatError(f"extraction subprocess failed ({done.returncode}): {done.stderr[-2000:]}")
    record = json.loads(record_path.read_text())
    record["process_seconds"] = time.perf_counter() - began
    record["images"] = record["computed_frames"] * record["copies"]
    record["images_per_second"] = record["images"] / record["seconds"]
    record["command"] = "python -m lusfeat.extract " + " ".join(argv)
    return record


def decoded_images(manifest: Path, data_root: str, spec, args: argparse.Namespace) -> np.ndarray:
    """The exact images extract feeds the network (original + augmented copies), in memory."""
    from lusfeat.augment import AugmentParams
    from lusfeat.embed import iter_images, plan_frames
    from lusfeat.manifest import read_manifest

    frames = plan_frames(read_manifest(manifest, data_root), args.frame_step)
    copies = args.augment_copies + 1
    blocks = list(iter_images(frames, spec.input_size, copies, args.seed, AugmentParams()))
    return np.concatenate(blocks).reshape(-1, spec.input_size, spec.input_size, 3)


def time_call(call, images: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds for ``call`` over all images after a one-batch warm-up, and the features."""
    call(images[:batch_size])
    began = time.perf_counter()
    features = call(images)
    return time.perf_counter() - began, np.asarray(features, np.float32)


def bare_throughput(spec, source, images: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Images/s of ``model.predict`` and of the compiled call on in-memory images; float32 features."""
    import keras

    from lusfeat.backbones import build_feature_extractor
    from lusfeat.embed import Embedder

    keras.backend.clear_session()
    model = build_feature_extractor(spec, source)
    predict_seconds, features = time_call(lambda x: model.predict(x, batch_size=batch_size, verbose=0),
                                          images, batch_size)
    embed = Embedder(model, batch_size)
    compiled_seconds, _ = time_call(embed, images, batch_size)
    return {"predict_seconds": predict_seconds, "predict_images_per_second": len(images) / predict_seconds,
            "compiled_seconds": compiled_seconds, "compiled_images_per_second": len(images) / compiled_seconds,
            "features": features}


def bfloat16_comparison(spec, source, images: np.ndarray, reference: np.ndarray, batch_size: int) -> dict[str, Any]:
    """The compiled call of the shipped bfloat16 extractor: images/s and cosine similarity to float32 features.

    Built as ``lusfeat.extract --precision bfloat16`` builds it (``build_feature_extractor(...,
    precision="bfloat16")``), so the measurement is of the code that ships.
    """
    import keras

    from lusfeat.backbones import build_feature_extractor
    from lusfeat.embed import Embedder

    keras.backend.clear_session()
    embed = Embedder(build_feature_extractor(spec, source, precision="bfloat16"), batch_size)
    seconds, features = time_call(embed, images, batch_size)
    dot = np.sum(features * reference, axis=1)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = dot / np.maximum(norms, 1e-12)
    relative = np.linalg.norm(features - reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    return {"compiled_seconds": seconds, "compiled_images_per_second": len(images) / seconds,
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "cosine_p01": float(np.percentile(cosine, 1)), "relative_l2_error_mean": float(relative.mean())}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/extract_throughput.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=str(REPO / "data_manifest.csv"), help="manifest CSV")
    parser.add_argument("--data-root", default=None, help="folder holding COVID-BLUES/ (default: $LUSFEAT_DATA_ROOT)")
    parser.add_argument("--backbone", default="xception,vgg16,mobilenet", help="comma-separated (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="as lusfeat.extract --weights (default: %(default)s)")
    parser.add_argument("--videos", type=int, default=12, help="videos in the N-frame run (default: %(default)s)")
    parser.add_argument("--frame-step", type=int, default=10, help="every K-th frame (default: %(default)s)")
    parser.add_argument("--augment-copies", type=int, default=2, help="augmented copies per frame (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--memory-factor", type=int, default=4,
                        help="the memory run uses this many times more videos; 0 skips it (default: %(default)s)")
    parser.add_argument("--memory-backbones", default=None, help="backbones for the memory run (default: all)")
    parser.add_argument("--no-bfloat16", action="store_true", help="skip the bfloat16 comparison")
    parser.add_argument("--seed", type=int, default=0, help="video choice and augmentation seed")
    parser.add_argument("--work-dir", default=None, help="scratch folder for manifests and features (default: a temp dir)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from lusfeat.backbones import get_spec, resolve_weights
        from lusfeat.manifest import resolve_data_root

        data_root = str(resolve_data_root(args.manifest, args.data_root))
        names = [name.strip() for name in args.backbone.split(",") if name.strip()]
        memory_names = names if args.memory_backbones is None else [
            name.strip() for name in args.memory_backbones.split(",") if name.strip()]
        specs = {name: get_spec(name) for name in names}
        with tempfile.TemporaryDirectory(prefix="lusfeat-bench-", dir=args.work_dir) as scratch:
            work = Path(scratch)
            small = work / "manifest_n.csv"
            select_videos(Path(args.manifest), data_root, args.videos, args.seed).to_csv(small, index=False)
            large = work / "manifest_4n.csv"
            if args.memory_factor > 1 and memory_names:
                select_videos(Path(args.manifest), data_root, args.videos * args.memory_factor,
                              args.seed).to_csv(large, index=False)
            record: dict[str, Any] = {"benchmark": "extract_throughput", "command": command_line(
                "extract_throughput.py", argv), "machine": machine_info(), "settings": {
                    key: value for key, value in vars(args).items() if key not in ("out", "work_dir")},
                "backbones": {}}
            for name, spec in specs.items():
                print(f"[{name}] decoding the frames into memory", file=sys.stderr)
                source = resolve_weights(spec, args.weights)
                images = decoded_images(small, data_root, spec, args)
                print(f"[{name}] bare network on {len(images)} images (before)", file=sys.stderr)
                before = bare_throughput(spec, source, images, args.batch_size)
                print(f"[{name}] lusfeat.extract subprocess", file=sys.stderr)
                extraction = run_extraction_subprocess(small, data_root, name, args.weights, args, work)
                print(f"[{name}] bare network (after)", file=sys.stderr)
                after = bare_throughput(spec, source, images, args.batch_size)
                reference = before.pop("features")
                after.pop("features")
                bare_predict = (before["predict_images_per_second"] + after["predict_images_per_second"]) / 2
                bare_compiled = (before["compiled_images_per_second"] + after["compiled_images_per_second"]) / 2
                entry: dict[str, Any] = {
                    "images_in_memory": len(images), "input_size": spec.input_size,
                    "bare_before": before, "bare_after": after, "extraction_n": extraction,
                    "bare_predict_images_per_second": bare_predict,
                    "bare_compiled_images_per_second": bare_compiled,
                    "extract_over_predict": extraction["images_per_second"] / bare_predict,
                    "extract_over_compiled": extraction["images_per_second"] / bare_compiled,
                }
                if name in memory_names and args.memory_factor > 1:
                    print(f"[{name}] lusfeat.extract subprocess on {args.memory_factor}x the videos", file=sys.stderr)
                    entry["extraction_4n"] = run_extraction_subprocess(large, data_root, name, args.weights, args, work)
                    entry["peak_rss_ratio_4n_over_n"] = (entry["extraction_4n"]["peak_rss_mb"]
                                                         / extraction["peak_rss_mb"])
                if not args.no_bfloat16:
                    print(f"[{name}] bfloat16", file=sys.stderr)
                    entry["bfloat16"] = bfloat16_comparison(spec, source, images, reference, args.batch_size)
                    entry["bfloat16"]["speedup_over_float32_compiled"] = (
                        entry["bfloat16"]["compiled_images_per_second"] / bare_compiled)
                record["backbones"][name] = entry
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish(record, args.out, "extract_throughput", render_tables)
    return 0


def render_tables(record: dict[str, Any]) -> str:
    rows, memory_rows, bf16_rows = [], [], []
    for name, entry in record["backbones"].items():
        extraction = entry["extraction_n"]
        rows.append([name, entry["input_size"], f"{extraction['frames']} x {extraction['copies']}",
                     entry["bare_predict_images_per_second"], entry["bare_compiled_images_per_second"],
                     extraction["images_per_second"], f"{100 * entry['extract_over_predict']:.0f}%",
                     f"{100 * entry['extract_over_compiled']:.0f}%"])
        if "extraction_4n" in entry:
            large = entry["extraction_4n"]
            memory_rows.append([name, extraction["frames"], extraction["peak_rss_mb"], large["frames"],
                                large["peak_rss_mb"], entry["peak_rss_ratio_4n_over_n"]])
        if "bfloat16" in entry:
            bf16 = entry["bfloat16"]
            bf16_rows.append([name, entry["bare_compiled_images_per_second"], bf16["compiled_images_per_second"],
                              bf16["speedup_over_float32_compiled"], f"{bf16['cosine_mean']:.4f}",
                              f"{bf16['cosine_min']:.4f}", f"{bf16['relative_l2_error_mean']:.3f}"])
    parts = [format_table(["backbone", "px", "frames x copies", "bare model.predict img/s", "bare compiled img/s",
                           "lusfeat.extract img/s", "extract / predict", "extract / compiled"], rows)]
    if memory_rows:
        k = record["settings"]["memory_factor"]
        parts.append(format_table(["backbone", "N frames", "peak RSS at N (MB)", f"{k}N frames",
                                   f"peak RSS at {k}N (MB)", f"ratio {k}N/N"], memory_rows))
    if bf16_rows:
        parts.append(format_table(["backbone", "float32 compiled img/s", "bfloat16 compiled img/s", "speed-up",
                                   "cosine mean", "cosine min", "rel. L2 error"], bf16_rows))
    return "\n\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
