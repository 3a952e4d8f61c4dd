"""Helpers shared by the benchmark scripts: machine record, frame subsets, folds, tables, JSON."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU features that matter for TensorFlow here (AVX-512, BF16, VNNI)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(flag for flag in flags if flag.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def other_python_load() -> list[dict[str, Any]]:
    """Other processes using CPU right now (from ``ps``), so a noisy measurement says why."""
    try:
        output = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True,
                                text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    busy = []
    for line in output.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) == os.getpid():
            continue
        if float(parts[1]) >= 5.0:
            busy.append({"pid": int(parts[0]), "cpu_percent": float(parts[1]), "elapsed": parts[2],
                         "command": parts[3][:160]})
    return busy


def machine_info() -> dict[str, Any]:
    """Machine, load and package versions, recorded with every result."""
    from lusfeat.store import package_versions

    versions = package_versions()
    try:
        from importlib.metadata import version

        versions["scikit-learn"] = version("scikit-learn")
    except Exception:  # noqa: BLE001 - a missing version is not worth failing a benchmark
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "load_average": list(os.getloadavg()),
        "busy_processes": other_python_load(),
        "versions": versions,
        "git_commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def select_patients(manifest: pd.DataFrame, patients: str, seed: int) -> list[str]:
    """``patients``: ``all``, a count K (K patients alternating covid / negative, seeded) or ``id,id,...``."""
    from lusfeat.errors import LusfeatError

    known = list(dict.fromkeys(manifest["patient_id"].astype(str)))
    if patients == "all":
        return known
    if patients.isdigit():
        count = int(patients)
        if not 1 <= count <= len(known):
            raise LusfeatError(f"--patients {count}: the manifest has {len(known)} patients")
        rng = np.random.default_rng(seed)
        firsts = manifest.drop_duplicates("patient_id")
        groups = [list(rng.permutation(ids.astype(str).tolist()))
                  for _, ids in firsts.groupby(firsts["group"].astype(str))["patient_id"]]
        chosen: list[str] = []
        while len(chosen) < count:
            for ids in groups:
                if ids and len(chosen) < count:
                    chosen.append(ids.pop(0))
        return sorted((str(p) for p in chosen), key=known.index)
    chosen = [p.strip() for p in patients.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise LusfeatError(f"--patients: unknown patient ids {', '.join(unknown)}")
    return chosen


def patient_folds(frames: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..n_folds-1) of each frame: the library's outer patient-level folds
    (:func:`lusfeat.training.patient_splits`), as an array, so that every method of a benchmark sees the same folds."""
    from lusfeat.training import patient_splits

    fold_of = np.empty(len(frames), np.int64)
    for fold, (_, test) in enumerate(patient_splits(frames, n_folds, seed)):
        fold_of[test] = fold
    return fold_of


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if not np.isfinite(value):
                return "n/a"
            if abs(value) >= 100:
                return f"{value:,.0f}"
            if abs(value) >= 10:
                return f"{value:.1f}"
            return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def save_json(record: dict[str, Any], out: str | os.PathLike | None, stem: str) -> Path:
    """Write ``record`` to ``out`` (a .json file or a folder; default benchmarks/results/) atomically."""
    from lusfeat.files import write_json

    target = Path(out) if out else RESULTS_DIR
    if target.suffix != ".json":
        target = target / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_json(record, target)


def command_line(script: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{script}", *args])


def publish(record: dict[str, Any], out: str | os.PathLike | None, stem: str,
            render: Callable[[dict[str, Any]], str]) -> Path:
    """Note the load after the run, print the tables and save the JSON (the end of every benchmark)."""
    record["machine_after"] = {"load_average": list(os.getloadavg()), "busy_processes": machine_info()["busy_processes"]}
    print(render(record))
    path = save_json(record, out, stem)
    print(f"\nJSON: {path}")
    return path
