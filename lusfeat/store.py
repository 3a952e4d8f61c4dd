"""The HDF5 feature file: one per backbone, written resumably, read and validated.

Layout of ``OUT/<backbone>.h5``:

- root attrs: every field of :class:`ExtractionConfig` (what defines the features), plus
  ``weights_source``, ``versions`` (JSON), ``created``, ``frames_done`` and ``complete``;
- ``features``: ``(copies, frames, dim)``, copy 0 the original frame, copies 1..A augmented;
  chunked along frames;
- ``frames/<column>``: the per-frame table (:data:`FRAME_COLUMNS`), one entry per frame;
- ``checksums``: ``(copies, frames)`` uint32, each stored item's CRC-32 (:mod:`lusfeat.integrity`).

A file of maps (an item of more than one axis, made by an experiment's feature source, e.g.
``python -m lusfeat.experiments.finetune maps``) has the same attrs (``source`` naming what made
it, ``pooling`` "none") and frame table, and instead of ``features`` holds ``maps``:
``(copies, frames, h, w, c)``, one chunk per copy and frame, read with :func:`load_maps`.

While being written the file is ``<backbone>.h5.partial``; only a complete file is renamed to
its final name, so a reader never mistakes a half-written file for a finished one. A partial
file whose settings match the request is resumed at ``frames_done``; one that does not match
is never appended to. The data sets are allocated when the file is made (a disk too small says
so before any work); a block is on the disk (fsync) before ``frames_done`` counts it; a failed
write raises a :class:`LusfeatError` naming the file, the cause and where a rerun resumes;
before the rename every item is read back against its checksum, and readers check what they load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.files import fsync_folder, os_errno, write_failure
from lusfeat.integrity import (
    CHECKSUMS,
    DamagedFile,
    check_complete,
    check_items,
    close_quietly,
    create_checksums,
    drop_cached_pages,
    has_checksums,
    item_checksums,
    verify_data,
)

log = logging.getLogger("lusfeat.store")
FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial"
FRAME_COLUMNS = {
    "path": str,
    "frame_index": np.int32,
    "patient_id": str,
    "region": str,
    "score": np.int8,
    "video_id": str,
    "group": str,
}
CHUNK_FRAMES = 64
FEATURES, MAPS = "features", "maps"  # the data set of pooled features (one axis per item), of maps (more)
UNKNOWN_MATCHES = ("engine_version",)  # fields where "" (a file older than the field) matches any value


@dataclass(frozen=True)
class ExtractionConfig:
    """Everything that defines a feature file; two files with equal configs hold equal features."""

    backbone: str
    weights: str  # "imagenet", "none" or the weights file's sha256
    input_size: int
    feature_dim: int
    dtype: str
    copies: int  # 1 + number of augmented copies
    aug_rotation: float
    aug_shift: float
    aug_zoom: float
    aug_flip: bool
    seed: int
    frame_step: int
    manifest_sha256: str
    pooling: str = "avg"
    precision: str = "float32"  # the backbone's compute type: "float32", "bfloat16" or "int8"
    # "" for the backbone's own output, else the feature source (an experiment's) that made the file,
    # e.g. "middle": Xception's middle-flow maps (lusfeat.experiments.finetune). Read from "tap" in older files.
    source: str = ""
    format_version: int = FORMAT_VERSION
    # The inference engine (lusfeat.engines) and its version; files made before engines were
    # recorded read as TensorFlow of an unknown ("") version.
    engine: str = "tensorflow"
    engine_version: str = ""
    calibration: str = ""  # int8 only: sha256 naming the frames the quantisation was calibrated on

    @classmethod
    def from_record(cls, record: Any, where: str) -> ExtractionConfig:
        """From HDF5 attrs or a JSON dict; fields added later with a default may be absent."""
        values = {}
        if "source" not in record and record.get("tap", ""):  # written before sources: the tap was the source
            values["source"] = str(record["tap"])
        for field in dataclasses.fields(cls):
            if field.name in record:
                value = record[field.name]
                values[field.name] = value.item() if isinstance(value, np.generic) else value
            elif field.default is dataclasses.MISSING:
                raise LusfeatError(f"{where}: not a lusfeat feature record ({field.name} missing)")
        return cls(**values)

    def differences(self, other: ExtractionConfig) -> list[str]:
        """``field: mine vs other`` for each field that differs."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{key}: {mine[key]!r} vs {theirs[key]!r}" for key in mine if mine[key] != theirs[key]
                and not (key in UNKNOWN_MATCHES and "" in (mine[key], theirs[key]))]


def read_config(file: h5py.File | str | os.PathLike) -> ExtractionConfig:
    if not isinstance(file, h5py.File):
        with _open_for_reading(file) as handle:
            return read_config(handle)
    return ExtractionConfig.from_record(file.attrs, file.filename)


def existing_config(path: str | os.PathLike) -> ExtractionConfig | None:
    """The config of the feature file at ``path``, or of its unfinished ``.partial``; ``None`` if neither
    exists or can be read (the write loop then says what is wrong with it)."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + PARTIAL_SUFFIX)):
        if candidate.is_file():
            try:
                with h5py.File(candidate, "r") as handle:
                    return ExtractionConfig.from_record(handle.attrs, str(candidate))
            except (OSError, LusfeatError):
                return None
    return None


def _open_for_reading(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        hint = f" ({partial} exists: the extraction did not finish; rerun it to resume)" if partial.exists() else ""
        raise LusfeatError(f"feature file {path} not found{hint}; make it with python -m lusfeat.extract")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise LusfeatError(f"{path}: not a readable HDF5 file ({error}); rerun python -m lusfeat.extract --overwrite") from error


def _locked(error: OSError) -> bool:
    """Whether h5py failed to open a file because another process holds its HDF5 lock."""
    text = str(error).lower()
    return "unable to lock file" in text or "lock" in text and ("errno = 11" in text or "temporarily unavailable" in text)


def _write_frames(group: h5py.Group, frames: pd.DataFrame) -> None:
    for column, kind in FRAME_COLUMNS.items():
        if kind is str:
            group.create_dataset(column, data=frames[column].astype(str).to_numpy(dtype=object), dtype=h5py.string_dtype())
        else:
            group.create_dataset(column, data=frames[column].to_numpy(dtype=kind))


def _read_frames(group: h5py.Group) -> pd.DataFrame:
    columns = {}
    for column, kind in FRAME_COLUMNS.items():
        data = group[column]
        columns[column] = data.asstr()[:] if kind is str else data[:]
    return pd.DataFrame(columns)


def _same_frames(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if len(a) != len(b):
        return False
    return all((a[column].astype(str).to_numpy() == b[column].astype(str).to_numpy()).all() for column in FRAME_COLUMNS)


def create_data(handle: h5py.File, config: ExtractionConfig, n: int, item_shape: tuple[int, ...]) -> h5py.Dataset:
    """The ``features`` (or, for items of more than one axis, ``maps``) data set of ``n`` frames, chunked as every
    feature file is, and its ``checksums``; both allocated on the disk now, so that a disk too small for the file
    fails here, not later."""
    early = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    early.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # with fill_time IFSET (default): zeros written now
    create_checksums(handle, config.copies, n, CHUNK_FRAMES, early.copy())
    if len(item_shape) > 1:
        # One chunk per copy and frame (0.5 MB for Xception's middle flow): training reads
        # random frames and copies, never a run of neighbours.
        shape, chunks = (config.copies, n, *item_shape), (1, 1, *item_shape)
        return handle.create_dataset(MAPS, shape=shape, dtype=config.dtype, chunks=chunks, dcpl=early)
    shape = (config.copies, n, config.feature_dim)
    chunks = (config.copies, max(1, min(CHUNK_FRAMES, n)), config.feature_dim)
    return handle.create_dataset(FEATURES, shape=shape, dtype=config.dtype, chunks=chunks, dcpl=early)


def verify_file(path: str | os.PathLike, handle: h5py.File | None = None) -> bool:
    """Check every stored item of the feature file at ``path`` against its checksum, a bounded slice at a time.

    Raises :class:`~lusfeat.integrity.DamagedFile` naming the first item that differs; returns ``False``
    (with a warning) for a file made before checksums existed, ``True`` for a verified one.
    """
    path = Path(path)
    if handle is None:
        with _open_for_reading(path) as opened:
            return verify_file(path, opened)
    return verify_data(path, handle, handle[MAPS if MAPS in handle else FEATURES])


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("lusfeat", "tensorflow", "tensorflow-cpu", "keras", "numpy", "h5py", "av", "pillow", "openvino", "nncf"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


class FeatureWriter:
    """Create or resume ``path`` (via ``path.partial``) for one config and frame table.

    ``frames_done`` tells where to continue; call :meth:`write` with consecutive blocks and
    :meth:`finish` at the end. A complete file with the same config is reported by
    ``complete`` (nothing to do, once its checksums are verified); any mismatch raises unless
    ``overwrite``, which starts a new file (or resumes a matching partial one) and replaces the
    old file only when done. A write that fails raises a :class:`LusfeatError` (the partial
    file keeps every block before it, flushed to the disk).
    """

    def __init__(self, path: str | os.PathLike, config: ExtractionConfig, frames: pd.DataFrame,
                 *, overwrite: bool = False, weights_source: str = "", item_shape: tuple[int, ...] | None = None,
                 record: dict[str, Any] | None = None, must_match: dict[str, Any] | None = None,
                 extra_datasets: dict[str, np.ndarray] | None = None) -> None:
        self.path = Path(path)
        # Attrs and data sets a new file gets besides the config (e.g. batch size, a shard's rows),
        # and attrs an existing file must hold to be resumed or confirmed (e.g. a shard's place).
        self.record = dict(record or {})
        self.must_match = dict(must_match or {})
        self.extra_datasets = dict(extra_datasets or {})
        # One frame's stored value: (feature_dim,) pooled, or a feature source's (h, w, c) map.
        self.item_shape = tuple(item_shape) if item_shape is not None else (config.feature_dim,)
        self.dataset = MAPS if len(self.item_shape) > 1 else FEATURES
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.config, self.total = config, len(frames)
        self.frames_done = 0
        self.complete = False
        self._file: h5py.File | None = None
        self._failed = False  # a write failed: closing must not raise again
        # With overwrite the old file stays readable until the new one replaces it at finish().
        if self.path.exists() and not overwrite:
            with _open_for_reading(self.path) as handle:
                self._refuse_if_different(self.path, handle, frames)
                check_complete(self.path, handle, handle[self.dataset])
                verify_file(self.path, handle)
            self.complete = True
            self.frames_done = len(frames)
            return
        if self.partial.exists():
            try:
                handle = h5py.File(self.partial, "r+", rdcc_nbytes=0)  # no chunk cache: a write fails where it is made
            except OSError as error:
                if _locked(error):
                    raise LusfeatError(f"{self.partial} is being written by another running extraction (HDF5 "
                                       "file lock); wait for it to finish, or stop it and run again") from error
                if os_errno(error) in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise write_failure(error, self.partial, "then run the same command again to resume it") from error
                # A run killed in the middle of an HDF5 metadata write leaves an unreadable
                # file; nothing in it can be trusted, so start over.
                self.partial.unlink()
            else:
                try:
                    self._refuse_if_different(self.partial, handle, frames)
                    held = handle[self.dataset].shape[2:] if self.dataset in handle else None
                    if held != self.item_shape:
                        raise LusfeatError(f"{self.partial}: items of shape {held}, not {self.item_shape}; pass "
                                           "--overwrite to start again")
                except LusfeatError:
                    handle.close()
                    if not overwrite:
                        raise
                    self.partial.unlink()
                else:
                    if CHECKSUMS in handle:
                        self._file = handle
                        self.frames_done = int(handle.attrs["frames_done"])
                        return
                    # Begun by a lusfeat that counted blocks a full disk had lost: its frames cannot be trusted.
                    log.warning("warning: %s was begun by a lusfeat without write checks: its %d frames are computed "
                                "again", self.partial, int(handle.attrs["frames_done"]))
                    handle.close()
                    self.partial.unlink()
        self._file = self._create(frames, weights_source)

    def _refuse_if_different(self, path: Path, handle: h5py.File, frames: pd.DataFrame) -> None:
        differences = read_config(handle).differences(self.config)
        for key, wanted in self.must_match.items():
            held = handle.attrs.get(key)
            held = held.item() if isinstance(held, np.generic) else held
            if held != wanted:
                differences.append(f"{key}: {held!r} vs {wanted!r}")
        if not differences and not _same_frames(_read_frames(handle["frames"]), frames):
            differences = ["the per-frame table (files, frame counts or labels changed)"]
        if differences:
            raise LusfeatError(f"{path} was made with other settings ({'; '.join(differences)}; file vs request). "
                               "It is kept as it is: choose another --out folder, or pass --overwrite to replace it")

    def _create(self, frames: pd.DataFrame, weights_source: str) -> h5py.File:
        """A new partial file, all of it allocated on the disk; on a failure none is left behind."""
        handle = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = h5py.File(self.partial, "w", rdcc_nbytes=0)
            self._fill(handle, frames, weights_source)
            handle.flush()
            os.fsync(handle.id.get_vfd_handle())
        except (OSError, RuntimeError, ValueError) as error:
            if os_errno(error) is None:
                raise
            close_quietly(handle)
            with contextlib.suppress(OSError):  # it holds no frame; a folder gone read-only may keep it
                self.partial.unlink(missing_ok=True)
            size = self.config.copies * len(frames) * (np.prod(self.item_shape) * np.dtype(self.config.dtype).itemsize + 4)
            raise write_failure(error, self.partial, f"then run the command again (its features take {size / 1e6:.3g} MB)") from error
        return handle

    def _fill(self, handle: h5py.File, frames: pd.DataFrame, weights_source: str) -> None:
        for key, value in dataclasses.asdict(self.config).items():
            if key == "source" and not value:
                continue  # a backbone's pooled files keep exactly the attrs they had before sources existed
            handle.attrs[key] = value
        handle.attrs["weights_source"] = weights_source
        handle.attrs["versions"] = json.dumps(package_versions())
        handle.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        handle.attrs["frames_done"] = 0
        handle.attrs["complete"] = False
        for key, value in self.record.items():
            handle.attrs[key] = value
        create_data(handle, self.config, len(frames), self.item_shape)
        _write_frames(handle.create_group("frames"), frames)
        for key, data in self.extra_datasets.items():
            handle.create_dataset(key, data=data)

    def write(self, start: int, features: np.ndarray) -> None:
        """Store ``features`` ``(copies, n, dim)`` for frames ``start .. start+n`` (must follow on), and their checksums,
        on the disk before ``frames_done`` counts them; a failed write raises a :class:`LusfeatError`."""
        if start != self.frames_done:
            raise ValueError(f"write at {start}, expected {self.frames_done}")
        stop = start + features.shape[1]
        features = np.ascontiguousarray(features, dtype=self._file[self.dataset].dtype)  # checksums of the stored bytes
        checksums = item_checksums(features)
        try:
            self._file[self.dataset][:, start:stop] = features
            self._file[CHECKSUMS][:, start:stop] = checksums
            self._file.flush()
            os.fsync(self._file.id.get_vfd_handle())
            # The counter moves only after the data is on the disk: a kill between the two recomputes a block.
            self._file.attrs["frames_done"] = stop
            self._file.flush()
        except (OSError, RuntimeError, ValueError) as error:
            if os_errno(error) is None:
                raise
            self._failed = True
            raise write_failure(error, self.partial, f"then run the same command again: {self.partial.name} keeps the "
                                f"first {self.frames_done} of {self.total} frames and the rerun goes on from there") from error
        self.frames_done = stop

    def finish(self) -> Path:
        """Mark the file complete, read every item back from the disk against its checksum, then rename it; a
        mismatch raises :class:`DamagedFile` and sets ``frames_done`` back to it (a rerun recomputes from there)."""
        if self.complete:
            return self.path
        if self.frames_done != self._file[self.dataset].shape[1]:
            raise ValueError("finish() before every frame was written")
        try:
            self._file.attrs["complete"] = True
            self._file.flush()
            os.fsync(self._file.id.get_vfd_handle())
            self._file.close()
            self._file = None
            drop_cached_pages(self.partial)  # the check below reads the disk, not what is left in memory
            try:
                verify_file(self.partial)
            except DamagedFile as damaged:
                with h5py.File(self.partial, "r+") as handle:
                    handle.attrs["frames_done"] = damaged.frame
                    handle.attrs["complete"] = False
                raise
            os.replace(self.partial, self.path)
            fsync_folder(self.path.parent)
        except (OSError, RuntimeError, ValueError) as error:
            if os_errno(error) is None:
                raise
            self._failed = True
            raise write_failure(error, self.path, f"then run the same command again: it checks {self.partial.name} "
                                "and gives it its final name") from error
        self.complete = True
        return self.path

    def close(self) -> None:
        """Close the file; after a failed write, without raising again (the failure was reported)."""
        handle, self._file = self._file, None
        if handle is not None and self._failed:
            close_quietly(handle)
        elif handle is not None:
            try:
                handle.close()
            except (OSError, RuntimeError, ValueError) as error:
                if os_errno(error) is None:
                    raise
                raise write_failure(error, self.partial, "then run the same command again to resume it") from error

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


@dataclass
class FeatureSet:
    """A feature file in memory: its config, per-frame table and ``features[copy, frame, dim]``."""

    path: Path
    config: ExtractionConfig
    frames: pd.DataFrame
    features: np.ndarray
    attrs: dict[str, Any]


def read_frame_table(path: str | os.PathLike) -> tuple[ExtractionConfig, pd.DataFrame]:
    """The config and per-frame table of a complete feature file, without reading the features (so without
    checking their checksums: :func:`load_features` does)."""
    with _open_for_reading(path) as handle:
        check_complete(Path(path), handle, handle[MAPS if MAPS in handle else FEATURES])
        return read_config(handle), _read_frames(handle["frames"])


def load_features(path: str | os.PathLike, copies: list[int] | None = None, dtype: str = "float32") -> FeatureSet:
    """Read a complete feature file (all copies, or those listed) into memory, checked against its checksums."""
    with _open_for_reading(path) as handle:
        check_complete(Path(path), handle, handle[MAPS if MAPS in handle else FEATURES])
        config = read_config(handle)
        if MAPS in handle:
            raise LusfeatError(f"{path} holds {config.backbone}'s {config.source!r} maps, not pooled features: it is "
                               "for an experiment (lusfeat.store.load_maps); pass a <backbone>.h5 file here")
        frames = _read_frames(handle["frames"])
        data = handle["features"]
        stored = data[:] if copies is None else data[sorted(copies)]
        if has_checksums(handle, Path(path)):
            check_items(Path(path), handle, stored, None if copies is None else sorted(copies))
        features = stored.astype(dtype, copy=False)
        attrs = {key: (value.item() if isinstance(value, np.generic) else value) for key, value in handle.attrs.items()}
    return FeatureSet(Path(path), config, frames, features, attrs)


@dataclass
class MapSet:
    """A file of maps in memory: its config, per-frame table and ``maps[copy, frame, h, w, c]``."""

    path: Path
    config: ExtractionConfig
    frames: pd.DataFrame
    maps: np.ndarray
    attrs: dict[str, Any]


def load_maps(path: str | os.PathLike, copies: list[int] | None = None, source: str | None = None) -> MapSet:
    """Read a complete file of maps (all copies, or those listed) into memory, in its stored dtype.

    ``source``, when given, must be the feature source the file was made by: maps of another layer
    would not fit what is rebuilt for ``source``.
    """
    with _open_for_reading(path) as handle:
        check_complete(Path(path), handle, handle[MAPS if MAPS in handle else FEATURES])
        config = read_config(handle)
        if MAPS not in handle:
            raise LusfeatError(f"{path} holds pooled features, not maps; make maps with an experiment's feature "
                               "source, e.g. python -m lusfeat.experiments.finetune --tap NAME")
        if source is not None and config.source != source:
            raise LusfeatError(f"{path} holds the {config.source!r} maps, not {source!r}: use {config.source!r}, or "
                               f"make the {source!r} maps (python -m lusfeat.experiments.finetune --tap {source})")
        frames = _read_frames(handle["frames"])
        data = handle[MAPS]
        if copies is not None and not set(copies) <= set(range(data.shape[0])):
            raise LusfeatError(f"{path}: copies {sorted(copies)} asked for, the file holds 0..{data.shape[0] - 1}")
        maps = data[:] if copies is None else np.stack([data[copy] for copy in sorted(copies)])
        if has_checksums(handle, Path(path)):
            check_items(Path(path), handle, maps, None if copies is None else sorted(copies))
        attrs = {key: (value.item() if isinstance(value, np.generic) else value) for key, value in handle.attrs.items()}
    return MapSet(Path(path), config, frames, maps, attrs)
