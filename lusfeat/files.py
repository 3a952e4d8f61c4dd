"""Writing result files safely: whole or not at all, and JSON without NaN.

Every CSV, JSON and model file lusfeat writes goes through :func:`replace_atomically`: it is
written under a temporary name in the same folder, then renamed, so a reader (or a run that is
killed) never sees half a file and an earlier complete file is never lost. The HDF5 feature
file has its own resumable ``.partial`` scheme (:mod:`lusfeat.store`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` then rename the temporary file to ``path``; return ``path``.

    The temporary name keeps the suffix (Keras insists on ``.keras``) and is removed if ``write`` fails.
    """
    path = Path(path)
    partial = path.with_name(f".partial-{path.name}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
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
