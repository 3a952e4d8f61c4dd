"""Stage-one throughput per inference engine: ``lusfeat.extract`` end to end against the bare engine call.

    python -m benchmarks.extract_throughput [--backbone xception,vgg16,mobilenet] [--videos 12]
        [--frame-step 10] [--augment-copies 2] [--engines all|ENGINE:PRECISION,...] [--memory-factor 4]
        [--no-bfloat16] [--out FILE|DIR]

For each backbone, on the same COVID-BLUES frames and augmented copies, and for each engine and
precision (``--engines``; ``all``: every one ``lusfeat.engines`` runs on this CPU, OpenVINO's only
where it is installed, bfloat16 on OpenVINO only with native bfloat16):

- **bare**: the same images, already decoded, augmented and resized in memory, through the very
  call ``lusfeat.extract --engine E --precision P`` uses (``lusfeat.engines.build_embed``), steady
  state after one warm-up batch, measured before and after the extraction so that drift shows;
  for TensorFlow float32 also ``model.predict(batch_size=B)``;
- **extraction**: ``python -m lusfeat.extract --engine E --precision P`` run in a subprocess on a
  manifest of ``--videos`` videos (decode, augment, network, HDF5 write; its own clock, which
  starts after the model is built or read from the cache), images/s, and the subprocess' peak
  resident memory (``VmHWM`` in /proc/self/status; not ``ru_maxrss``, which on Linux carries the
  parent's RSS over fork/exec); its ratio to the bare call is the target (>= 90%); also its
  **steady** rate, from the end of the first stored block (64 frames) to the end of the last whole
  one, which leaves out the pipeline filling and the padded last batch (needs three blocks or more:
  ``--videos``, ``--frame-step``; the target is judged over >= 1,000 steady images);
- **fidelity**: cosine similarity of the engine's features to TensorFlow float32's on the same images
  (measured first; an ``--engines`` list without ``tensorflow:float32`` skips it and the speed-up);
- **decoding alone**: images/s of the decode-resize-augment side of extraction with no network
  (``lusfeat.embed.iter_spans``), what end to end costs on top of the network on shared cores;
- **memory**: extraction (the first engine) again on ``--memory-factor`` times as many videos (4N
  frames): its peak resident memory should equal the one at N.

int8 is calibrated (NNCF) on the frames ``lusfeat.extract`` would choose from the small manifest,
and cached, so that the subprocess reads the same quantised model. Prints markdown tables and
writes JSON (with machine, load and version info) to benchmarks/results/.
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

from benchmarks._common import command_line, format_table, machine_info, publish
from lusfeat.errors import LusfeatError

REPO = Path(__file__).resolve().parents[1]

# Runs in the subprocess: the real command-line entry point, with its summary and peak RSS recorded.
CHILD_CODE = r"""
import json, os, resource, sys, threading, time
began = time.perf_counter()
from lusfeat import extract
summaries, blocks, named = [], [], {}
original = extract.extract_backbone

def cpu_seconds():
    # CPU seconds of each thread of this process (utime + stime, /proc/self/task/*/stat)
    ticks, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out

def on_block(done, total):
    # (clock, frames done) when the file opens and after each stored block: the steady-state rate;
    # the threads' names, to tell the decoding thread in the CPU times
    blocks.append((time.perf_counter(), done))
    named.update({thread.native_id: thread.name for thread in threading.enumerate()})
    if len(blocks) == 2:  # the end of the first block: CPU times of the steady state are counted from here
        named["steady_from"] = cpu_seconds()

def recording(*args, **kwargs):
    kwargs["on_block"] = on_block
    summary = original(*args, **kwargs)
    summaries.append(summary)
    named["steady_to"] = cpu_seconds()
    return summary
extract.extract_backbone = recording
from lusfeat import embed
original_spans = embed.iter_spans
def timed_spans(*args, **kwargs):
    # runs in the decoding thread: its CPU time, the whole run (the thread ends before the last blocks are stored)
    start = time.thread_time()
    try:
        yield from original_spans(*args, **kwargs)
    finally:
        named["decode_cpu"] = time.thread_time() - start
embed.iter_spans = timed_spans
code = extract.main(sys.argv[2:])
wall = time.perf_counter() - began
s = summaries[0] if summaries else None
threads = {}
if "steady_from" in named and "steady_to" in named:
    main_id = threading.main_thread().native_id
    for tid, seconds in named["steady_to"].items():
        if named.get(tid) != "lusfeat-decode":
            role = "main" if tid == main_id else "engine and other"
            threads[role] = threads.get(role, 0.0) + seconds - named["steady_from"].get(tid, 0.0)
decode_cpu = named.get("decode_cpu")
# VmHWM: the peak RSS of this process' own memory map. (ru_maxrss is not usable here: on Linux
# it keeps the parent's RSS at fork/exec, so every child would report at least the parent's size.)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
record = {"code": code, "wall_seconds": wall, "peak_rss_mb": peak_kb / 1024,
          "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "seconds": s.seconds if s else None, "frames": s.frames if s else None,
          "copies": s.copies if s else None, "computed_frames": s.computed_frames if s else None,
          "blocks": blocks, "steady_cpu_seconds": threads, "decode_thread_cpu_seconds": decode_cpu}
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
                              work: Path, engine: str = "tensorflow", precision: str = "float32") -> dict[str, Any]:
    """``python -m lusfeat.extract`` in a fresh process; its own summary plus its peak RSS."""
    out = work / f"features-{backbone}-{engine}-{precision}-{manifest.stem}"
    record_path = work / f"child-{backbone}-{engine}-{precision}-{manifest.stem}.json"
    argv = ["--manifest", str(manifest), "--data-root", data_root, "--backbone", backbone, "--weights", weights,
            "--augment-copies", str(args.augment_copies), "--frame-step", str(args.frame_step),
            "--batch-size", str(args.batch_size), "--engine", engine, "--precision", precision,
            "--seed", str(args.seed), "--out", str(out), "--overwrite", "--no-progress"]
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
    steady = steady_span(record["blocks"], record["copies"])
    record["steady_images_per_second"], record["steady_images"] = steady if steady else (None, 0)
    record["command"] = "python -m lusfeat.extract " + " ".join(argv)
    return record


def steady_span(blocks: list[list[float]], copies: int) -> tuple[float, int] | None:
    """``(images/s, images)`` from the end of the first stored block to the end of the last whole one: extraction
    once its pipeline is full. The first block waits for its own decoding and the first inference; a last block
    shorter than the first is left out too (its few frames pay a whole padded network batch: counting it read
    10-12% of the bare rate on every row of a 65-frame run). ``None`` without a whole block after the first (give
    more ``--videos`` or a smaller ``--frame-step``)."""
    if len(blocks) < 3:  # the file opening, then one stamp per block
        return None
    block = blocks[1][1] - blocks[0][1]
    whole = [stamp for previous, stamp in zip(blocks[1:-1], blocks[2:], strict=True) if stamp[1] - previous[1] >= block]
    if not whole:
        return None
    (first, done_first), (last, done_last) = blocks[1], whole[-1]
    images = int((done_last - done_first) * copies)
    return (images / (last - first), images) if last > first else None


def planned_frames(manifest: Path, data_root: str, args: argparse.Namespace) -> pd.DataFrame:
    from lusfeat.embed import plan_frames
    from lusfeat.manifest import read_manifest

    return plan_frames(read_manifest(manifest, data_root), args.frame_step)


def decoded_images(frames: pd.DataFrame, spec, args: argparse.Namespace) -> np.ndarray:
    """The exact images extract feeds the network (original + augmented copies), in memory."""
    from lusfeat.augment import AugmentParams
    from lusfeat.embed import iter_images

    copies = args.augment_copies + 1
    blocks = list(iter_images(frames, spec.input_size, copies, args.seed, AugmentParams()))
    return np.concatenate(blocks).reshape(-1, spec.input_size, spec.input_size, 3)


def decoding_alone(frames: pd.DataFrame, spec, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of extraction's decode-resize-augment side alone (``iter_spans``, no network, no prefetch thread)."""
    from lusfeat.augment import AugmentParams
    from lusfeat.embed import iter_spans, plan_spans
    from lusfeat.store import CHUNK_FRAMES

    copies = args.augment_copies + 1
    spans = plan_spans(len(frames), np.arange(len(frames)), CHUNK_FRAMES, copies, args.batch_size)
    began = time.perf_counter()
    images = sum(len(block) for _, block in iter_spans(frames, spans, spec.input_size, copies, args.seed,
                                                       AugmentParams()))
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "images": images, "images_per_second": images / seconds,
            "ms_per_frame": 1000 * seconds / len(frames)}


def time_call(call, images: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds for ``call`` over all images after a one-batch warm-up, and the features."""
    call(images[:batch_size])
    began = time.perf_counter()
    features = call(images)
    return time.perf_counter() - began, np.asarray(features, np.float32)


def fidelity(features: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Cosine similarity and relative L2 error of ``features`` to ``reference``, per image."""
    dot = np.sum(features * reference, axis=1)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = dot / np.maximum(norms, 1e-12)
    relative = np.linalg.norm(features - reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "cosine_p01": float(np.percentile(cosine, 1)), "relative_l2_error_mean": float(relative.mean()),
            "relative_max_error": float(np.abs(features - reference).max() / np.abs(reference).max())}


def calibration_for(frames: pd.DataFrame, spec, args: argparse.Namespace):
    """The int8 calibration ``lusfeat.extract`` makes for these frames (same frames, same key, same cache entry)."""
    from lusfeat.augment import AugmentParams
    from lusfeat.embed import calibration_set, iter_images
    from lusfeat.engines import Calibration

    subset, key = calibration_set(frames, args.seed)
    return Calibration(key, lambda: np.stack([copies[0] for copies in iter_images(
        subset, spec.input_size, 1, args.seed, AugmentParams())]))


def bare_throughput(spec, source, images: np.ndarray, args: argparse.Namespace, engine: str, precision: str,
                    calibration=None, predict: bool = False) -> dict[str, Any]:
    """Images/s of the engine's own call (``lusfeat.engines.build_embed``) on in-memory images, and its features;
    with ``predict``, of TensorFlow's ``model.predict`` too."""
    import keras

    from lusfeat.backbones import build_feature_extractor
    from lusfeat.engines import build_embed

    keras.backend.clear_session()
    record: dict[str, Any] = {}
    if predict:
        model = build_feature_extractor(spec, source)
        seconds, _ = time_call(lambda x: model.predict(x, batch_size=args.batch_size, verbose=0), images,
                               args.batch_size)
        record.update(predict_seconds=seconds, predict_images_per_second=len(images) / seconds)
        del model
        keras.backend.clear_session()
    began = time.perf_counter()
    embed = build_embed(engine, spec, source, spec.input_size, precision, args.batch_size, calibration)
    record["build_seconds"] = time.perf_counter() - began
    seconds, features = time_call(embed, images, args.batch_size)
    record.update(seconds=seconds, images_per_second=len(images) / seconds, features=features)
    return record


def engine_list(text: str, no_bfloat16: bool) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``(engine, precision)`` pairs to measure, TensorFlow float32 first (the reference), and those skipped, why."""
    from lusfeat.engines import ENGINES, native_bfloat16

    skipped: dict[str, str] = {}
    if text == "all":
        native, evidence = native_bfloat16()
        pairs = []
        for engine in ENGINES.values():
            for precision in engine.precisions:
                if reason := engine.missing():
                    skipped[f"{engine.name}:{precision}"] = reason
                elif engine.name == "openvino" and precision == "bfloat16" and not native:
                    skipped[f"{engine.name}:{precision}"] = f"OpenVINO would run float32 here ({evidence})"
                else:
                    pairs.append((engine.name, precision))
    else:
        pairs = [tuple(item.strip().split(":", 1)) if ":" in item else (item.strip(), "float32")
                 for item in text.split(",") if item.strip()]
    if no_bfloat16:
        skipped.update({f"{e}:{p}": "--no-bfloat16" for e, p in pairs if p == "bfloat16"})
        pairs = [(e, p) for e, p in pairs if p != "bfloat16"]
    if not pairs:
        raise LusfeatError(f"--engines {text}: nothing left to measure ({', '.join(skipped) or 'empty list'} skipped)")
    reference = ("tensorflow", "float32")
    if text != "all" and reference not in pairs:  # throughput only: no fidelity, no speed-up column
        return pairs, skipped
    return [reference] + [pair for pair in pairs if pair != reference], skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.extract_throughput",
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
    parser.add_argument("--engines", default="all", help="all (every engine and precision that runs here), or "
                        "ENGINE:PRECISION,... e.g. tensorflow:float32,openvino:int8 (default: %(default)s)")
    parser.add_argument("--no-bfloat16", action="store_true", help="skip bfloat16 (slow where it is emulated)")
    parser.add_argument("--no-predict", action="store_true", help="skip timing TensorFlow's model.predict (two passes "
                        "of the slowest engine)")
    parser.add_argument("--seed", type=int, default=0, help="video choice and augmentation seed")
    parser.add_argument("--work-dir", default=None, help="scratch folder for manifests and features (default: a temp dir)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def measure_backbone(name: str, spec, args: argparse.Namespace, data_root: str, small: Path, large: Path,
                     work: Path, pairs: list[tuple[str, str]], memory: bool) -> dict[str, Any]:
    from lusfeat.backbones import resolve_weights

    print(f"[{name}] decoding the frames into memory", file=sys.stderr)
    source = resolve_weights(spec, args.weights)
    frames = planned_frames(small, data_root, args)
    images = decoded_images(frames, spec, args)
    entry: dict[str, Any] = {"images_in_memory": len(images), "input_size": spec.input_size,
                             "decoding_alone": decoding_alone(frames, spec, args), "engines": {}}
    reference = None
    for engine, precision in pairs:
        label = f"{engine}:{precision}"
        calibration = calibration_for(frames, spec, args) if precision == "int8" else None
        tf32 = (engine, precision) == ("tensorflow", "float32")
        print(f"[{name}] {label}: bare call (before)", file=sys.stderr)
        before = bare_throughput(spec, source, images, args, engine, precision, calibration,
                                 predict=tf32 and not args.no_predict)
        print(f"[{name}] {label}: lusfeat.extract subprocess", file=sys.stderr)
        extraction = run_extraction_subprocess(small, data_root, name, args.weights, args, work, engine, precision)
        print(f"[{name}] {label}: bare call (after)", file=sys.stderr)
        after = bare_throughput(spec, source, images, args, engine, precision, calibration,
                                predict=tf32 and not args.no_predict)
        features = before.pop("features")
        after.pop("features")
        if reference is None and tf32:
            reference = features
        bare = (before["images_per_second"] + after["images_per_second"]) / 2
        steady = extraction["steady_images_per_second"]
        record: dict[str, Any] = {"bare_before": before, "bare_after": after, "extraction_n": extraction,
                                  "bare_images_per_second": bare,
                                  "extract_over_bare": extraction["images_per_second"] / bare,
                                  "steady_extract_over_bare": steady / bare if steady else None,
                                  "fidelity": fidelity(features, reference) if reference is not None else None}
        if "predict_images_per_second" in before:
            record["bare_predict_images_per_second"] = (before["predict_images_per_second"]
                                                        + after["predict_images_per_second"]) / 2
        entry["engines"][label] = record
    first = entry["engines"][f"{pairs[0][0]}:{pairs[0][1]}"]
    if reference is not None:
        for record in entry["engines"].values():
            record["speedup_over_tensorflow_float32"] = (record["bare_images_per_second"]
                                                         / first["bare_images_per_second"])
    if memory:
        print(f"[{name}] lusfeat.extract subprocess on {args.memory_factor}x the videos", file=sys.stderr)
        entry["extraction_4n"] = run_extraction_subprocess(large, data_root, name, args.weights, args, work, *pairs[0])
        entry["peak_rss_ratio_4n_over_n"] = (entry["extraction_4n"]["peak_rss_mb"]
                                             / first["extraction_n"]["peak_rss_mb"])
    return entry


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from lusfeat.backbones import get_spec
        from lusfeat.engines import check_engine
        from lusfeat.manifest import resolve_data_root

        data_root = str(resolve_data_root(args.manifest, args.data_root))
        names = [name.strip() for name in args.backbone.split(",") if name.strip()]
        memory_names = names if args.memory_backbones is None else [
            name.strip() for name in args.memory_backbones.split(",") if name.strip()]
        specs = {name: get_spec(name) for name in names}
        pairs, skipped = engine_list(args.engines, args.no_bfloat16)
        for engine, precision in pairs:
            check_engine(engine, precision)
        if args.work_dir:  # a folder that does not exist yet is made (it was a FileNotFoundError)
            Path(args.work_dir).mkdir(parents=True, exist_ok=True)
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
                "engines": [f"{e}:{p}" for e, p in pairs], "skipped": skipped, "backbones": {}}
            for name, spec in specs.items():
                record["backbones"][name] = measure_backbone(
                    name, spec, args, data_root, small, large, work, pairs,
                    memory=name in memory_names and args.memory_factor > 1)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish(record, args.out, "extract_throughput", render_tables)
    return 0


def render_tables(record: dict[str, Any]) -> str:
    rows, predict_rows, memory_rows, decoding_rows, cpu_rows = [], [], [], [], []
    for name, entry in record["backbones"].items():
        for label, engine in entry["engines"].items():
            extraction = engine["extraction_n"]
            steady, speedup, close = (engine.get("steady_extract_over_bare"),
                                      engine.get("speedup_over_tensorflow_float32"), engine["fidelity"])
            rows.append([name, *label.split(":"), engine["bare_images_per_second"],
                         f"{speedup:.2f}x" if speedup else "-", extraction["images_per_second"],
                         f"{100 * engine['extract_over_bare']:.0f}%",
                         f"{100 * steady:.0f}%" if steady else "n/a (1 block)", extraction.get("steady_images", 0),
                         f"{close['cosine_mean']:.5f}" if close else "-", f"{close['cosine_min']:.5f}" if close else "-"])
            threads = extraction.get("steady_cpu_seconds") or {}
            done = extraction["blocks"][-1][1] - extraction["blocks"][1][1] if len(extraction["blocks"]) > 2 else 0
            if threads and done:
                per_image = 1000 / (done * extraction["copies"])
                wall = extraction["blocks"][-1][0] - extraction["blocks"][1][0]
                decode = 1000 * (extraction.get("decode_thread_cpu_seconds") or 0.0) / (
                    extraction["computed_frames"] * extraction["copies"])
                network = (threads.get("engine and other", 0.0) + threads.get("main", 0.0)) * per_image
                cpu_rows.append([name, *label.split(":"), wall * per_image, network, decode,
                                 f"{100 * decode / (network + decode):.1f}%", (network + decode) / (wall * per_image)])
            if "bare_predict_images_per_second" in engine:
                predict_rows.append([name, f"{extraction['frames']} x {extraction['copies']}",
                                     engine["bare_predict_images_per_second"], engine["bare_images_per_second"],
                                     extraction["images_per_second"]])
        decoding = entry["decoding_alone"]
        decoding_rows.append([name, entry["input_size"], decoding["images_per_second"], decoding["ms_per_frame"]])
        if "extraction_4n" in entry:
            small = next(iter(entry["engines"].values()))["extraction_n"]
            large = entry["extraction_4n"]
            memory_rows.append([name, small["frames"], small["peak_rss_mb"], large["frames"], large["peak_rss_mb"],
                                entry["peak_rss_ratio_4n_over_n"]])
    parts = [format_table(["backbone", "engine", "precision", "bare img/s", "vs TF float32", "lusfeat.extract img/s",
                           "extract / bare", "steady extract / bare", "steady images", "cosine mean",
                           "cosine min"], rows)]
    if record.get("skipped"):
        parts.append("skipped: " + "; ".join(f"{key} ({why})" for key, why in record["skipped"].items()))
    if cpu_rows:
        parts.append(format_table(["backbone", "engine", "precision", "steady wall ms/img", "CPU ms/img: main and "
                                   "engine threads (inference, batches, HDF5)", "decoding thread (decode, resize, "
                                   "augment; whole run)", "decoding's share", "cores busy"], cpu_rows))
    parts.append(format_table(["backbone", "frames x copies", "TF model.predict img/s", "TF compiled img/s",
                               "lusfeat.extract img/s"], predict_rows))
    parts.append(format_table(["backbone", "px", "decode+resize+augment alone img/s", "ms per frame (all copies)"],
                              decoding_rows))
    if memory_rows:
        k = record["settings"]["memory_factor"]
        parts.append(format_table(["backbone", "N frames", "peak RSS at N (MB)", f"{k}N frames",
                                   f"peak RSS at {k}N (MB)", f"ratio {k}N/N"], memory_rows))
    return "\n\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
