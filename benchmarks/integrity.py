"""What the integrity checks of feature files cost, on a real feature file.

    python -m benchmarks.integrity FEATURES.h5 [--rounds 3] [--work-dir DIR] [--extraction-seconds S] [--out FILE|DIR]

1. **Writing.** The features of FEATURES.h5 are written again, in 64-frame blocks as ``extract`` writes them,
   (a) through :class:`lusfeat.store.FeatureWriter` (CRC-32 per item, fsync per block, every item read back
   from the disk before the rename) and (b) through plain h5py into the same layout with the frame table (no
   checksum, no fsync, no read-back, no early allocation: what the writer did before). The difference is what the checks add to an extraction; with
   ``--extraction-seconds`` (the file's own extraction time) it is also given as a share of it. (a) is a
   checksummed copy of FEATURES.h5, bitwise the same features: a file made before checksums is read
   unverified, its copy verified.
2. **Reading as fit does** (``read_frame_table`` then ``load_features``): the copy (checks) and FEATURES.h5
   read alike, alternating; and the CRC-32 of the loaded array alone.
3. **verify_file** (``extract``'s "up to date", the merge): the whole copy checked, its pages in memory
   (warm) and dropped from the kernel's cache first (cold).

Medians over ``--rounds``. Prints a table and writes JSON (with machine and load) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from benchmarks._common import command_line, format_table, machine_info, publish
from lusfeat.errors import LusfeatError


def _timed(action) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def write_checked(source, target: Path) -> float:
    """Seconds to write ``source``'s features through the product's writer, block by block, and finish."""
    from lusfeat.store import CHUNK_FRAMES, FeatureWriter

    target.unlink(missing_ok=True)

    def write() -> None:
        with FeatureWriter(target, source.config, source.frames, weights_source=source.attrs.get("weights_source", ""),
                           overwrite=True) as writer:
            for start in range(0, source.features.shape[1], CHUNK_FRAMES):
                writer.write(start, source.features[:, start:start + CHUNK_FRAMES])
            writer.finish()

    return _timed(write)


def write_plain(source, target: Path) -> float:
    """Seconds for the same blocks through plain h5py (the same chunked layout): no checksum, fsync or read-back."""
    from lusfeat.store import CHUNK_FRAMES, _write_frames

    target.unlink(missing_ok=True)

    def write() -> None:
        with h5py.File(target, "w") as handle:
            _write_frames(handle.create_group("frames"), source.frames)
            data = handle.create_dataset("features", shape=source.features.shape, dtype=source.features.dtype,
                                         chunks=(source.features.shape[0], CHUNK_FRAMES, source.features.shape[2]))
            for start in range(0, source.features.shape[1], CHUNK_FRAMES):
                data[:, start:start + CHUNK_FRAMES] = source.features[:, start:start + CHUNK_FRAMES]
                handle.attrs["frames_done"] = start
                handle.flush()

    return _timed(write)


def fit_load(path: Path) -> float:
    """Seconds to read a feature file as ``lusfeat.fit`` does: the frame table, then the features."""
    from lusfeat.store import load_features, read_frame_table

    return _timed(lambda: (read_frame_table(path), load_features(path)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lusfeat.integrity import drop_cached_pages, item_checksums
    from lusfeat.store import load_features, verify_file

    source_path = Path(args.features)
    source = load_features(source_path, dtype="float32")
    stored_dtype = source.config.dtype
    source.features = source.features.astype(stored_dtype, copy=False)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lusfeat-integrity-"))
    work.mkdir(parents=True, exist_ok=True)
    copy, plain = work / source_path.name, work / f"plain-{source_path.name}"
    times: dict[str, list[float]] = {key: [] for key in ("write_checked", "write_plain", "load_checked", "load_source",
                                                          "crc", "verify_warm", "verify_cold")}
    write_checked(source, copy)
    for path in (source_path, copy):  # both files' pages in memory before the first timed read
        fit_load(path)
    for _ in range(args.rounds):
        times["write_plain"].append(write_plain(source, plain))
        times["write_checked"].append(write_checked(source, copy))
        times["load_source"].append(fit_load(source_path))
        times["load_checked"].append(fit_load(copy))
        times["crc"].append(_timed(lambda: item_checksums(source.features)))
        times["verify_warm"].append(_timed(lambda: verify_file(copy)))
        drop_cached_pages(copy)
        times["verify_cold"].append(_timed(lambda: verify_file(copy)))
    same = np.array_equal(load_features(copy, dtype=stored_dtype).features.view(np.uint8),
                          source.features.view(np.uint8))
    if not same:
        raise LusfeatError(f"the checksummed copy {copy} differs from {source_path}: a bug, please report it")
    with h5py.File(source_path, "r") as handle:
        source_checked = handle.attrs.get("checksum") == "crc32"
    median = {key: statistics.median(values) for key, values in times.items()}
    write_cost = median["write_checked"] - median["write_plain"]
    return {
        "benchmark": "integrity", "command": command_line("integrity.py", args.argv), "machine": machine_info(),
        "features": str(source_path), "shape": list(source.features.shape), "dtype": stored_dtype,
        "megabytes": source.features.nbytes / 1e6, "source_has_checksums": source_checked,
        "rounds": args.rounds, "seconds": times, "median_seconds": median,
        "write_cost_seconds": write_cost, "extraction_seconds": args.extraction_seconds,
        "write_cost_percent_of_extraction": (100 * write_cost / args.extraction_seconds
                                             if args.extraction_seconds else None),
        "load_cost_percent": 100 * (median["load_checked"] - median["load_source"]) / median["load_source"],
        "crc_percent_of_load": 100 * median["crc"] / median["load_source"],
        "copy_bitwise_equal": same, "work_dir": str(work),
    }


def render(record: dict[str, Any]) -> str:
    median = record["median_seconds"]
    extraction = record["extraction_seconds"]
    rows = [
        ["write, with checks (CRC-32, fsync per block, read-back)", median["write_checked"], ""],
        ["write, plain h5py", median["write_plain"], ""],
        ["what the checks add to an extraction", record["write_cost_seconds"],
         f"{record['write_cost_percent_of_extraction']:.3f}% of {extraction:,.0f} s" if extraction else ""],
        ["fit's load, checked copy", median["load_checked"], f"{record['load_cost_percent']:+.1f}% vs unchecked"],
        ["fit's load, the file as given", median["load_source"], ""],
        ["CRC-32 of the loaded features alone", median["crc"], f"{record['crc_percent_of_load']:.1f}% of the load"],
        ["verify_file, pages in memory", median["verify_warm"], ""],
        ["verify_file, read from the disk", median["verify_cold"], ""],
    ]
    shape = " x ".join(map(str, record["shape"]))
    return (f"{record['features']}: {shape} {record['dtype']} ({record['megabytes']:.0f} MB), median of "
            f"{record['rounds']} rounds\n\n" + format_table(["step", "seconds", "share"], rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.integrity", description=__doc__.split("\n\n")[0])
    parser.add_argument("features", help="a complete pooled feature file (<backbone>.h5)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions, medians reported (default: %(default)s)")
    parser.add_argument("--work-dir", default=None, help="where the copies are written (default: a temporary folder)")
    parser.add_argument("--extraction-seconds", type=float, default=None,
                        help="the file's extraction time, to give the write cost as a share of it")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.rounds < 1:
        print("error: --rounds must be 1 or more", file=sys.stderr)
        return 1
    try:
        record = run(args)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish(record, args.out, "integrity", render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
