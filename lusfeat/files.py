"""Writing result files safely: whole or not at all, and JSON without NaN.

Every CSV, JSON and model file lusfeat writes goes through :func:`replace_atomically`: it is
written under a temporary name in the same folder, flushed to the disk (fsync), then renamed,
and the rename itself is flushed; so a reader (or a run that is killed, or a machine that loses
power) never sees half a file, and an earlier complete file is never lost. A write that fails
(disk full, quota, file-size limit, read-only folder, I/O error) raises a :class:`LusfeatError`
naming the file, the operating system's cause and what to do (:func:`write_failure`), and
leaves the earlier file as it was. The HDF5 feature file has its own resumable ``.partial``
scheme (:mod:`lusfeat.store`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError

# What to do, per cause of a failed write (errno); anything else gets the OS's message and the generic advice.
_ADVICE = {
    errno.ENOSPC: "free space on that disk (or write to another folder)",
    errno.EDQUOT: "free space within your disk quota, or ask for a larger one (or write to another folder)",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or write to a file system that takes larger files",
    errno.EROFS: "make the folder writable again (it is on a read-only file system), or write to another folder",
    errno.EACCES: "make the folder writable for you, or write to another folder",
    errno.EPERM: "make the folder writable for you (is it immutable, chattr +i?), or write to another folder",
    errno.EIO: "check the disk (the kernel log says more: dmesg) and its free space",
}
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def os_errno(error: BaseException) -> int | None:
    """The errno of a failed write: an ``OSError``'s own, or the one HDF5 puts in its message (h5py raises
    ``RuntimeError`` or ``ValueError`` for those); ``None`` when ``error`` is no operating-system failure."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    match = _HDF5_ERRNO.search(str(error))
    return int(match[1]) if match else None


def write_failure(error: BaseException, path: str | os.PathLike, then: str = "then run the command again") -> LusfeatError:
    """A :class:`LusfeatError` for a failed write of ``path``: the OS's cause, what to do, and ``then``."""
    code = os_errno(error)
    if code is None:
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    else:
        cause = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    advice = _ADVICE.get(code, "fix the cause")
    return LusfeatError(f"could not write {path}: {cause}; {advice}, {then}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to the disk (a full disk or an I/O error can first show here, on NFS say)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:  # some file systems refuse fsync on a folder: the rename stands, unflushed
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a failure (read-only parent, full disk) raises a :class:`LusfeatError` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_failure(error, path) from error
    return path


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)``, flush it to the disk, rename it to ``path`` and flush the rename; return ``path``.

    The temporary name keeps the suffix (Keras insists on ``.keras``) and is removed if anything fails,
    leaving an earlier ``path`` as it was; a failed write (``OSError``, or HDF5's errors that carry an
    errno) raises a :class:`LusfeatError` naming ``path`` and the cause (:func:`write_failure`).
    """
    path = Path(path)
    partial = path.with_name(f".partial-{path.name}")
    renamed = False
    try:
        write(partial)
        fsync_file(partial)
        os.replace(partial, path)
        renamed = True
        fsync_folder(path.parent)
    except (OSError, RuntimeError, ValueError) as error:
        if os_errno(error) is None:
            raise
        kept = " (the earlier file is kept)" if path.exists() and not renamed else ""
        raise write_failure(error, path, f"then run the command again{kept}") from error
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: nothing was made there either
    return path


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values, paths as text, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: an undefined number (a diverged loss, say) is null
    return value


def write_text(text: str, path: str | os.PathLike) -> Path:
    return replace_atomically(path, lambda target: target.write_text(text, encoding="utf-8"))


def write_json(record: Any, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(json_ready(record), indent=2, allow_nan=False) + "\n", path)


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    return replace_atomically(path, lambda target: table.to_csv(target, index=False))
