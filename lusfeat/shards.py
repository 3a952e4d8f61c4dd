"""Stage one in shards: a deterministic split of the frames by patient, and the exact merge of the shard files.

``python -m lusfeat.extract --shard K/N`` writes ``OUT/<backbone>.shard-K-of-N.h5``: the frames
of shard K of N (:func:`split_patients`: whole patients in manifest order, cut where the frame
counts balance), computed in the very network batches of an unsharded run
(:func:`lusfeat.embed.plan_spans`), resumable like any feature file. Besides the usual attrs and
frame table a shard file holds

- attr ``shard``: JSON ``{"index", "count", "total_frames", "frames", "patients", "split_sha256"}``:
  its place, and the whole split (frames and patients per shard, a hash of who went where);
- data set ``shard_rows``: the row of each of its frames in the whole frame table.

:func:`merge_shards` checks the shards belong together and writes ``OUT/<backbone>.h5``, whose
features and frame table are bitwise those of an unsharded run, and whose attrs are the same
(``created`` is the earliest shard's); a data set ``shards`` (JSON text) records the shard files.
It reads the shards only, checks each item it copies against its shard's checksums, copies the
checksums too, reads the merged file back against them, and only then gives it its final name
(atomically, flushed to the disk: :func:`lusfeat.files.replace_atomically`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from lusfeat.backbones import BackboneSpec, WeightsSource
from lusfeat.embed import ExtractionSummary, extract_backbone
from lusfeat.errors import LusfeatError
from lusfeat.files import make_folder, replace_atomically
from lusfeat.integrity import CHECKSUM_ATTR, CHECKSUMS, check_complete, check_items, drop_cached_pages, has_checksums
from lusfeat.store import (
    FEATURES,
    MAPS,
    PARTIAL_SUFFIX,
    ExtractionConfig,
    _open_for_reading,
    _read_frames,
    _same_frames,
    _write_frames,
    create_data,
    read_config,
    verify_file,
)

SHARD_ATTR = "shard"
ROWS = "shard_rows"
RECORD = "shards"  # the merged file's record of its shards (a JSON text data set: no attr size limit)
MERGE_BYTES = 64 << 20  # copied at a time by the merge: bounds its memory
SHARD_NAME = re.compile(r"^(?P<stem>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)\.h5$")
# Attrs that say where and how a file was computed, not what it holds: they may differ between
# shards (the merge warns), and the merged file takes the first shard's.
ENVIRONMENT_ATTRS = ("versions", "tf_threads", "weights_source")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise LusfeatError(f"--shard {text!r}: give K/N with 1 <= K <= N, e.g. --shard 2/8 for the second of 8 shards")
    return int(match[1]), int(match[2])


def shard_path(path: str | Path, index: int, count: int) -> Path:
    """``OUT/<name>.h5`` -> ``OUT/<name>.shard-K-of-N.h5``."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.h5')}.shard-{index}-of-{count}.h5")


def split_patients(frames: pd.DataFrame, count: int) -> list[list[str]]:
    """The patients of each of ``count`` shards: whole patients, in order of first appearance, cut where
    the running frame count comes nearest to an equal share (each shard gets at least one patient)."""
    order = list(dict.fromkeys(frames["patient_id"].astype(str)))
    if count < 1 or count > len(order):
        raise LusfeatError(f"{count} shards asked for, but the manifest has {len(order)} patient(s) and a patient "
                           f"is never split: use at most {len(order)} shards")
    sizes = frames["patient_id"].astype(str).value_counts().reindex(order).to_numpy()
    running = np.cumsum(sizes)
    cuts = [0]
    for k in range(1, count):
        target = running[-1] * k / count
        # Patients before the cut: more than the last cut, and leave one for each shard after.
        low, high = cuts[-1] + 1, len(order) - (count - k)
        candidates = np.arange(low, high + 1)
        cuts.append(int(candidates[np.argmin(np.abs(running[candidates - 1] - target))]))
    cuts.append(len(order))
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index`` of ``count``: its rows of the whole frame table and the record its file keeps."""

    index: int
    count: int
    rows: np.ndarray
    record: dict[str, Any]

    @property
    def attr(self) -> str:
        return json.dumps(self.record, sort_keys=True)


def plan_shard(frames: pd.DataFrame, index: int, count: int) -> ShardPlan:
    """Shard ``index`` (1-based) of ``count`` of the frame table ``frames``."""
    split = split_patients(frames, count)
    patients = frames["patient_id"].astype(str)
    sizes = [int(patients.isin(group).sum()) for group in split]
    digest = hashlib.sha256("\n".join(",".join(group) for group in split).encode()).hexdigest()
    rows = np.flatnonzero(patients.isin(split[index - 1]).to_numpy()).astype(np.int64)
    record = {"index": index, "count": count, "total_frames": len(frames), "frames": sizes,
              "patients": [len(group) for group in split], "split_sha256": digest}
    return ShardPlan(index, count, rows, record)


def extract_shard(frames: pd.DataFrame, spec: BackboneSpec, source: WeightsSource, config: ExtractionConfig,
                  out_path: Path, index: int, count: int, *, batch_size: int = 32, overwrite: bool = False,
                  progress: bool = True, on_block: Callable[[int, int], None] | None = None) -> ExtractionSummary:
    """Write (or resume, or confirm) shard ``index`` of ``count`` of ``out_path``'s frames: ``shard_path(out_path, ...)``.

    ``frames`` is the whole frame table: the shard's frames are computed in the batches of an
    unsharded run over it (so ``batch_size`` must be the one of the other shards). A shard file
    of another split or batch size is refused (kept) unless ``overwrite``.
    """
    plan = plan_shard(frames, index, count)
    return extract_backbone(frames, spec, source, config, shard_path(out_path, index, count), batch_size=batch_size,
                            overwrite=overwrite, progress=progress, rows=plan.rows,
                            record={SHARD_ATTR: plan.attr}, must_match={SHARD_ATTR: plan.attr, "batch_size": batch_size},
                            extra_datasets={ROWS: plan.rows}, on_block=on_block)


# --------------------------------------------------------------------------- the merge


@dataclass
class MergeSummary:
    path: Path
    frames: int
    shards: int
    seconds: float
    status: str  # "written", "up to date"
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"merged: {self.status} {self.path} | {self.frames} frames from {self.shards} shards | "
                f"{self.seconds:.1f} s")


@dataclass
class _Shard:
    path: Path
    index: int
    count: int
    config: ExtractionConfig
    record: dict[str, Any]
    attrs: dict[str, Any]
    frames: pd.DataFrame
    rows: np.ndarray
    item_shape: tuple[int, ...]
    checked: bool  # the shard has checksums (made by a lusfeat that writes them)


def _attrs(handle: h5py.File) -> dict[str, Any]:
    return {key: (value.item() if isinstance(value, np.generic) else value) for key, value in handle.attrs.items()}


def find_shards(out_path: Path) -> list[Path]:
    """The shard files of ``out_path`` (``OUT/<name>.h5``) in its folder, by index."""
    stem = out_path.name.removesuffix(".h5")
    found = []
    for candidate in out_path.parent.glob(f"{glob_escape(stem)}.shard-*-of-*.h5"):
        match = SHARD_NAME.match(candidate.name)
        if match and match["stem"] == stem:
            found.append((int(match["count"]), int(match["index"]), candidate))
    return [path for _, _, path in sorted(found)]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _read_shard(path: Path) -> _Shard:
    match = SHARD_NAME.match(path.name)
    with _open_for_reading(path) as handle:
        attrs = _attrs(handle)
        if not attrs.get("complete", False):
            raise LusfeatError(f"shard {path} is incomplete: rerun its python -m lusfeat.extract --shard K/N to finish "
                               "it, then merge again")
        if SHARD_ATTR not in attrs or ROWS not in handle:
            raise LusfeatError(f"{path} is not a shard file (no shard record): make shards with "
                               "python -m lusfeat.extract --shard K/N")
        record = json.loads(attrs[SHARD_ATTR])
        config = read_config(handle)
        data = handle[MAPS if MAPS in handle else FEATURES]
        check_complete(path, handle, data)
        shard = _Shard(path, int(record["index"]), int(record["count"]), config, record, attrs,
                       _read_frames(handle["frames"]), handle[ROWS][:], tuple(data.shape[2:]), has_checksums(handle, path))
    if match and (int(match["index"]), int(match["count"])) != (shard.index, shard.count):
        raise LusfeatError(f"{path} holds shard {shard.index} of {shard.count}, not what its name says (renamed or "
                           f"copied?): give it back its name {shard_path(match['stem'] + '.h5', shard.index, shard.count).name} "
                           "or remove it")
    return shard


def _check_together(shards: list[_Shard], out_path: Path) -> list[str]:
    """Refuse shards that do not make one file; return warnings for what only changes the last bits."""
    counts = sorted({shard.count for shard in shards})
    if len(counts) > 1:
        listing = "; ".join(f"{shard.path.name}: of {shard.count}" for shard in shards)
        raise LusfeatError(f"shards of different splits ({listing}): merge the shards of one split, and remove the "
                           "others' files")
    count = counts[0]
    by_index: dict[int, _Shard] = {}
    for shard in shards:
        if shard.index in by_index:
            raise LusfeatError(f"shard {shard.index} of {shard.count} is listed twice: {by_index[shard.index].path} and "
                               f"{shard.path}; keep one of them")
        by_index[shard.index] = shard
    for index in range(1, count + 1):
        if index not in by_index:
            expected = shard_path(out_path, index, count)
            partial = expected.with_name(expected.name + PARTIAL_SUFFIX)
            how = (f"it is incomplete ({partial.name} exists): rerun python -m lusfeat.extract --shard {index}/{count} "
                   "with the same options to finish it" if partial.exists() else
                   f"make it with python -m lusfeat.extract --shard {index}/{count} and the same options")
            raise LusfeatError(f"shard {index} of {count} is missing ({expected}): {how}, then merge again")
    first = by_index[1]
    warnings: list[str] = []
    bits_differ = False
    for shard in (by_index[index] for index in range(2, count + 1)):
        if shard.config.manifest_sha256 != first.config.manifest_sha256:
            raise LusfeatError(f"shard {shard.path} was made from another manifest than {first.path.name} (manifest "
                               f"sha256 {shard.config.manifest_sha256[:12]}... vs {first.config.manifest_sha256[:12]}...): "
                               f"rerun it with --overwrite on the manifest the others used")
        differences = shard.config.differences(first.config)
        if differences:
            raise LusfeatError(f"shard {shard.path} was made with other settings than {first.path.name} "
                               f"({'; '.join(differences)}): rerun it with --overwrite and the others' options")
        if {key: shard.record[key] for key in ("total_frames", "frames", "split_sha256")} != \
                {key: first.record[key] for key in ("total_frames", "frames", "split_sha256")}:
            raise LusfeatError(f"shard {shard.path} belongs to another split of the frames than {first.path.name} "
                               "(the frame table changed between them): rerun it with --overwrite")
        if shard.attrs.get("batch_size") != first.attrs.get("batch_size"):
            raise LusfeatError(f"shard {shard.path} was computed in network batches of {shard.attrs.get('batch_size')}, "
                               f"{first.path.name} of {first.attrs.get('batch_size')}: rerun it with --overwrite "
                               f"--batch-size {first.attrs.get('batch_size')}")
        if shard.item_shape != first.item_shape:
            raise LusfeatError(f"shard {shard.path} holds items of shape {shard.item_shape}, {first.path.name} "
                               f"{first.item_shape}: rerun it with --overwrite")
        for key in ENVIRONMENT_ATTRS:
            if shard.attrs.get(key) != first.attrs.get(key):
                warnings.append(f"{shard.path.name} differs from {first.path.name} in {key} ({shard.attrs.get(key)!r} vs "
                                f"{first.attrs.get(key)!r})")
                bits_differ = bits_differ or key != "weights_source"
    if bits_differ:
        warnings.append("features computed with other TensorFlow threads or versions differ in their last bits "
                        "(~1e-6): the merged file equals no single run exactly; rerun those shards with --overwrite "
                        "where the others ran for that")
    total = int(first.record["total_frames"])
    rows = np.concatenate([by_index[index].rows for index in range(1, count + 1)])
    for shard in shards:
        if len(shard.rows) != len(shard.frames) or len(shard.rows) != shard.record["frames"][shard.index - 1]:
            raise LusfeatError(f"shard {shard.path}: its rows and frame table disagree (damaged file?): rerun it with "
                               "--overwrite")
    if len(rows) != total or not np.array_equal(np.sort(rows), np.arange(total)):
        raise LusfeatError(f"the shards of {out_path.name} do not cover the {total} frames once each (damaged "
                           "files?): rerun the shards with --overwrite")
    return warnings


def existing_output(out_path: Path, config: ExtractionConfig, frames: pd.DataFrame) -> str:
    """"" (no file), "same" (complete, these settings and frames) or "other" for ``out_path``."""
    if not out_path.exists():
        return ""
    with _open_for_reading(out_path) as handle:
        same = (handle.attrs.get("complete", False) and not read_config(handle).differences(config)
                and _same_frames(_read_frames(handle["frames"]), frames))
        if same:  # "up to date" only once what it holds is checked
            check_complete(out_path, handle, handle[MAPS if MAPS in handle else FEATURES])
            verify_file(out_path, handle)
    return "same" if same else "other"


def merge_shards(out_path: str | Path, shard_paths: list[str | Path] | None = None, *,
                 overwrite: bool = False) -> MergeSummary:
    """Merge the shards of ``out_path`` (all found beside it, or ``shard_paths``) into ``out_path``.

    Refuses, naming the shard: a missing or incomplete shard, shards of other settings, another
    manifest or another split, a shard listed twice. The shards are only read; ``out_path`` is
    written under a temporary name and renamed when complete. An existing ``out_path`` of the
    same settings and frames is left as it is ("up to date"); another is kept unless ``overwrite``.
    """
    began = time.perf_counter()
    out_path = Path(out_path)
    if shard_paths is None:
        paths = find_shards(out_path)
        if not paths:
            partials = sorted(out_path.parent.glob(f"{glob_escape(out_path.name.removesuffix('.h5'))}.shard-*.h5"
                                                   f"{PARTIAL_SUFFIX}"))
            hint = (f" ({', '.join(path.name for path in partials)} not finished: rerun their --shard K/N to finish them)"
                    if partials else "")
            raise LusfeatError(f"no shard files {out_path.name.removesuffix('.h5')}.shard-K-of-N.h5 in "
                               f"{out_path.parent}{hint}; make them with python -m lusfeat.extract --shard K/N")
    else:
        paths = [Path(path) for path in shard_paths]
        seen: dict[Path, Path] = {}
        for path in paths:
            key = path.resolve()
            if key in seen:
                raise LusfeatError(f"shard {path} is listed twice; list each shard file once")
            seen[key] = path
    shards = [_read_shard(path) for path in paths]
    warnings = _check_together(shards, out_path)
    shards.sort(key=lambda shard: shard.index)
    first = shards[0]
    total = int(first.record["total_frames"])
    frames = pd.concat([shard.frames for shard in shards], ignore_index=True)
    frames = frames.iloc[np.argsort(np.concatenate([shard.rows for shard in shards]), kind="stable")]
    frames = frames.reset_index(drop=True)

    existing = existing_output(out_path, first.config, frames) if not overwrite else ""
    if existing:
        if existing == "same":
            return MergeSummary(out_path, total, len(shards), time.perf_counter() - began, "up to date", warnings)
        raise LusfeatError(f"{out_path} exists with other settings or frames than its shards; it is kept: pass "
                           "--overwrite to replace it with the merge, or merge into another folder")

    def write(target: Path) -> None:
        with h5py.File(target, "w") as handle:
            for key, value in first.attrs.items():
                if key != SHARD_ATTR:
                    handle.attrs[key] = value
            handle.attrs["created"] = min(str(shard.attrs.get("created", "")) for shard in shards)
            handle.attrs["frames_done"] = total
            handle.attrs["complete"] = False
            data = create_data(handle, first.config, total, first.item_shape)
            checked = all(shard.checked for shard in shards)
            if not checked:  # shards made before checksums existed: the merge has none either
                del handle[CHECKSUMS], handle.attrs[CHECKSUM_ATTR]
            _write_frames(handle.create_group("frames"), frames)
            for shard in shards:
                _copy_rows(shard, data, handle[CHECKSUMS] if checked else None)
            record = [{"file": shard.path.name, "index": shard.index, "count": shard.count,
                       "frames": len(shard.rows), "patients": list(dict.fromkeys(shard.frames["patient_id"])),
                       **{key: shard.attrs.get(key) for key in ("created", *ENVIRONMENT_ATTRS)}} for shard in shards]
            handle.create_dataset(RECORD, data=json.dumps(record), dtype=h5py.string_dtype())
            handle.attrs["complete"] = True
            handle.flush()
            os.fsync(handle.id.get_vfd_handle())
        drop_cached_pages(target)  # read back from the disk, not from memory
        verify_file(target)

    make_folder(out_path.parent)
    replace_atomically(out_path, write)
    return MergeSummary(out_path, total, len(shards), time.perf_counter() - began, "written", warnings)


def _copy_rows(shard: _Shard, data: h5py.Dataset, checksums: h5py.Dataset | None) -> None:
    """Copy a shard's frames (and their ``checksums``, if given) to their rows of ``data``, run by run of consecutive
    rows, a bounded slice at a time; each slice checked against the shard's checksums where it has them."""
    item_bytes = shard.config.copies * int(np.prod(shard.item_shape)) * np.dtype(shard.config.dtype).itemsize
    step = max(1, MERGE_BYTES // max(1, item_bytes))
    breaks = np.flatnonzero(np.diff(shard.rows) != 1) + 1
    starts = np.concatenate([[0], breaks]).astype(int)
    stops = np.concatenate([breaks, [len(shard.rows)]]).astype(int)
    with h5py.File(shard.path, "r") as handle:
        source = handle[MAPS if MAPS in handle else FEATURES]
        for start, stop in zip(starts, stops, strict=True):
            for at in range(start, stop, step):
                end = min(stop, at + step)
                row = int(shard.rows[at])
                values = source[:, at:end]
                if shard.checked:
                    check_items(shard.path, handle, values, None, at)
                data[:, row:row + end - at] = values
                if checksums is not None:
                    checksums[:, row:row + end - at] = handle[CHECKSUMS][:, at:end]

