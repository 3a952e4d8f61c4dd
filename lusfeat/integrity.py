"""Checksums of feature files: what a file holds is checked against what was computed.

A feature file (:mod:`lusfeat.store`) keeps a data set ``checksums`` ``(copies, frames)`` of
uint32: the CRC-32 (zlib) of each stored item (one copy of one frame, its bytes as stored),
computed from the network's output before it is written; the root attr ``checksum`` =
``"crc32"`` says a file has them. The writer reads every item back from the disk against them
before it gives a file its final name; readers check what they load. A file written before
checksums existed has neither: it is read with a warning (once per file and process).

Also here: closing an HDF5 file after a failed write, and dropping a file's pages from the
kernel's cache so that a check reads the disk.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import h5py
import numpy as np

from lusfeat.errors import LusfeatError

log = logging.getLogger("lusfeat.integrity")
CHECKSUMS, CHECKSUM_ATTR, CHECKSUM_KIND = "checksums", "checksum", "crc32"
VERIFY_BYTES = 64 << 20  # read at a time when a whole file is checked: bounds memory
_UNCHECKED: set[str] = set()  # files already warned about in this process


class DamagedFile(LusfeatError):
    """A feature file whose stored items do not match their checksums; ``frame``: the first row that differs."""

    def __init__(self, message: str, frame: int) -> None:
        super().__init__(message)
        self.frame = frame


def item_checksums(values: np.ndarray) -> np.ndarray:
    """``(copies, frames)`` CRC-32 of each item of ``values`` ``(copies, frames, *item)``, its bytes as stored."""
    values = np.ascontiguousarray(values)
    flat = values.reshape(values.shape[0] * values.shape[1], -1).view(np.uint8)
    return np.fromiter((zlib.crc32(row) for row in flat), np.uint32, len(flat)).reshape(values.shape[:2])


def create_checksums(handle: h5py.File, copies: int, frames: int, chunk: int, dcpl: h5py.h5p.PropDCID) -> None:
    """The ``checksums`` data set of a new file (chunked ``chunk`` frames along frames), and the attr naming them."""
    handle.attrs[CHECKSUM_ATTR] = CHECKSUM_KIND
    handle.create_dataset(CHECKSUMS, shape=(copies, frames), dtype="uint32", chunks=(copies, max(1, min(chunk, frames))),
                          dcpl=dcpl)


def remake_command(path: Path, attrs: h5py.AttributeManager) -> str:
    """The extract command that remakes the feature file at ``path`` whose root attrs are ``attrs``."""
    made_by = attrs.get("source", "") or attrs.get("tap", "")
    if made_by:  # an experiment's feature source made it
        return f"the experiment command that made its {made_by!r} maps, with --overwrite"
    return (f"python -m lusfeat.extract --backbone {attrs.get('backbone')} --frame-step {attrs.get('frame_step')} "
            f"--augment-copies {int(attrs.get('copies', 1)) - 1} --engine {attrs.get('engine', 'tensorflow')} "
            f"--precision {attrs.get('precision', 'float32')} --out {path.parent} --overwrite (with the "
            "--manifest and --weights it was made from)")


def check_complete(path: Path, handle: h5py.File, data: h5py.Dataset) -> None:
    """Refuse a file not marked complete, or marked complete without every frame of ``data`` (a damaged file)."""
    if not handle.attrs.get("complete", False):
        raise LusfeatError(f"{path}: the file is marked incomplete; rerun python -m lusfeat.extract")
    if int(handle.attrs.get("frames_done", -1)) != data.shape[1]:
        raise LusfeatError(f"{path} is damaged: marked complete with {handle.attrs.get('frames_done')} of "
                           f"{data.shape[1]} frames written; remake it with {remake_command(path, handle.attrs)}")


def has_checksums(handle: h5py.File, path: Path) -> bool:
    """Whether the file carries checksums; warns once per file (per process) about one made before they existed."""
    if CHECKSUMS in handle and handle.attrs.get(CHECKSUM_ATTR) == CHECKSUM_KIND:
        return True
    if str(path) not in _UNCHECKED:
        _UNCHECKED.add(str(path))
        log.warning("warning: %s was written before lusfeat checked feature files (it has no checksums): it is read "
                    "unverified; if it was ever written on a disk that ran full, or to be sure, remake it with %s",
                    path, remake_command(path, handle.attrs))
    return False


def check_items(path: Path, handle: h5py.File, values: np.ndarray, copies: list[int] | None, start: int = 0) -> None:
    """Raise :class:`DamagedFile` if the items ``values[k, i]`` (copy ``copies[k]``, or ``k`` if ``None``; frame
    ``start + i``) do not match the file's checksums."""
    stored = handle[CHECKSUMS][:, start:start + values.shape[1]]
    stored = stored if copies is None else stored[copies]
    bad = np.argwhere(item_checksums(values) != stored)
    if len(bad):
        copy = int(bad[0, 0]) if copies is None else copies[int(bad[0, 0])]
        frame = start + int(bad[0, 1])
        frames = handle["frames"]
        name = f"{frames['path'].asstr()[frame]} frame {int(frames['frame_index'][frame])}"
        raise DamagedFile(f"{path} is damaged: {len(bad)} stored item(s) differ from what was computed (first: copy "
                          f"{copy} of row {frame}, {name}); do not use it: remake it with "
                          f"{remake_command(path, handle.attrs)}", frame)


def verify_data(path: Path, handle: h5py.File, data: h5py.Dataset) -> bool:
    """Check every item of ``data`` against the checksums, a bounded slice at a time; ``False`` if there are none."""
    if not has_checksums(handle, path):
        return False
    frame_bytes = data.dtype.itemsize * int(np.prod(data.shape)) // max(1, data.shape[1])
    step = max(1, VERIFY_BYTES // max(1, frame_bytes))
    for start in range(0, data.shape[1], step):
        check_items(path, handle, data[:, start:start + step], None, start)
    return True


def close_quietly(handle: h5py.File | None) -> None:
    """Close a file whose write failed: HDF5 may fail again flushing it, which was reported already."""
    if handle is None:
        return
    try:
        handle.close()
    except (OSError, RuntimeError, ValueError) as error:
        log.debug("closing after a failed write: %s", error)


def drop_cached_pages(path: str | os.PathLike) -> None:
    """Ask the kernel to forget ``path``'s (flushed) pages, so that the next read comes from the disk."""
    if hasattr(os, "posix_fadvise"):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
