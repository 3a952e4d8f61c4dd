"""Estimators saved as data: parameters and fitted scalars as JSON, fitted arrays as ``.npz``.

A fitted estimator of :mod:`lusfeat.models` is a handful of arrays (means, scales, coefficients,
cut points, a PCA basis, calibration scores) and a few numbers. :func:`save_estimator` writes
them as ``STEM.json`` (the class name, its constructor parameters, the fitted scalars) and
``STEM.npz`` (the fitted arrays); :func:`load_estimator` builds the estimator again from them.
Nothing is unpickled: the ``.npz`` is read with ``np.load(..., allow_pickle=False)`` (an object
array is refused), and the class is looked up by name in :data:`SAVED_CLASSES`, the classes
that registered with :func:`saved_as_data`; no name read from a file is ever imported.

What is saved of an estimator: ``get_params(deep=False)`` (an estimator parameter, such as the
video model's ordinal regression, as a nested record) and every fitted attribute (a name ending
in ``_``): arrays go to the ``.npz``, JSON values to the record, a fitted estimator (the video
model's ``estimator_``) nested, its arrays under ``<attribute>/<name>``. An estimator with a part
that is neither (the head's Keras model) names it in ``_not_saved`` and gives its arrays through
``_extra_arrays()`` / ``_restore(arrays)``.

The loaded estimator is the fitted one: the same ``predict_proba`` on the same arrays, so its
probabilities are identical to the bit (``tests/models/test_saving.py``, every model).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lusfeat.errors import LusfeatError
from lusfeat.files import make_folder, replace_atomically, write_json
from lusfeat.manifest import file_sha256

SAVED_CLASSES: dict[str, type] = {}
ARRAY_KINDS = "biufU"  # booleans, integers, floats, text: never objects


def saved_as_data(cls: type) -> type:
    """Class decorator: ``cls`` may be saved and loaded by :func:`save_estimator` / :func:`load_estimator`."""
    SAVED_CLASSES[cls.__name__] = cls
    return cls


def _is_saved(value: Any) -> bool:
    return type(value).__name__ in SAVED_CLASSES and SAVED_CLASSES[type(value).__name__] is type(value)


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, tuple | list):
        return [_json_value(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_value(item, where) for key, item in value.items()}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number")
        return value
    raise TypeError(f"{where}: {type(value).__name__} cannot be saved as data")


def estimator_state(estimator: Any, prefix: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(record, arrays)`` of a fitted (or unfitted) estimator; ``arrays`` keys carry ``prefix``."""
    if not _is_saved(estimator):
        raise TypeError(f"{type(estimator).__name__} is not saved as data (lusfeat.models.saving.saved_as_data)")
    params: dict[str, Any] = {}
    for name, value in estimator.get_params(deep=False).items():
        params[name] = ({"estimator": estimator_state(value)[0]} if _is_saved(value)
                        else _json_value(value, f"{type(estimator).__name__}.{name}"))
    fitted: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    skip = set(getattr(estimator, "_not_saved", ()))
    for name, value in vars(estimator).items():
        if not name.endswith("_") or name.startswith("_") or name in skip:
            continue
        if _is_saved(value):
            nested[name], inner = estimator_state(value, f"{prefix}{name}/")
            arrays.update(inner)
        elif isinstance(value, np.ndarray):
            arrays[prefix + name] = value
        elif isinstance(value, float | np.floating) and not math.isfinite(float(value)):
            arrays[prefix + name] = np.asarray(value, dtype=np.float64)  # JSON has no infinity
        else:
            fitted[name] = _json_value(value, f"{type(estimator).__name__}.{name}")
    if hasattr(estimator, "_extra_arrays") and hasattr(estimator, "n_features_in_"):
        arrays.update({prefix + name: value for name, value in estimator._extra_arrays().items()})
    for name, value in arrays.items():
        if value.dtype.kind not in ARRAY_KINDS:
            raise TypeError(f"{type(estimator).__name__}: array {name} has dtype {value.dtype}, not numbers")
    record = {"class": type(estimator).__name__, "params": params, "fitted": fitted, "nested": nested,
              "arrays": sorted(name[len(prefix):] for name in arrays if name.startswith(prefix)
                               and "/" not in name[len(prefix):])}
    return record, arrays


def _params(record: dict[str, Any]) -> dict[str, Any]:
    return {name: build_estimator(value["estimator"], {}) if isinstance(value, dict) and set(value) == {"estimator"}
            else value for name, value in record.get("params", {}).items()}


def build_estimator(record: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str = "") -> Any:
    """The estimator a :func:`estimator_state` record and its arrays describe."""
    name = record.get("class")
    if name not in SAVED_CLASSES:
        raise ValueError(f"unknown estimator class {name!r}; lusfeat saves {', '.join(sorted(SAVED_CLASSES))}")
    estimator = SAVED_CLASSES[name](**_params(record))
    for attribute, value in record.get("fitted", {}).items():
        setattr(estimator, attribute, value)
    for attribute, inner in record.get("nested", {}).items():
        setattr(estimator, attribute, build_estimator(inner, arrays, f"{prefix}{attribute}/"))
    own = {key[len(prefix):]: value for key, value in arrays.items()
           if key.startswith(prefix) and "/" not in key[len(prefix):]}
    extra = {}
    for attribute, value in own.items():
        if attribute.endswith("_"):
            setattr(estimator, attribute, float(value) if value.ndim == 0 and value.dtype.kind == "f" else value)
        else:
            extra[attribute] = value
    if hasattr(estimator, "_restore") and getattr(estimator, "n_features_in_", None) is not None:
        estimator._restore(extra)
    return estimator


def save_estimator(estimator: Any, folder: str | os.PathLike, stem: str) -> dict[str, str]:
    """Write ``folder/STEM.json`` and ``folder/STEM.npz`` (atomically); ``{file name: sha256}`` of both."""
    folder = Path(folder)
    make_folder(folder)
    record, arrays = estimator_state(estimator)

    def write_arrays(target: Path) -> None:
        with open(target, "wb") as handle:
            np.savez(handle, **arrays)

    written = [write_json(record, folder / f"{stem}.json"),
               replace_atomically(folder / f"{stem}.npz", write_arrays)]
    return {path.name: file_sha256(path) for path in written}


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, never unpickling: a file holding objects or a pickle is refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise LusfeatError(f"{path}: not an array file lusfeat can read without running code in it "
                           f"({type(error).__name__}: {error}); refit the model with lusfeat.fit") from error


def load_estimator(folder: str | os.PathLike, stem: str, sha256: dict[str, str] | None = None) -> Any:
    """The estimator saved by :func:`save_estimator`; with ``sha256`` each file is checked against it first."""
    folder = Path(folder)
    paths = [folder / f"{stem}.json", folder / f"{stem}.npz"]
    for path in paths:
        if not path.is_file():
            raise LusfeatError(f"{path} not found: the model folder is incomplete; copy the whole folder or refit "
                               "with lusfeat.fit")
        if sha256 is not None:
            expected = sha256.get(path.name)
            if expected is None or file_sha256(path) != expected:
                raise LusfeatError(f"{path}: its sha256 is not the one model.json records: the file was changed or "
                                   "replaced after lusfeat.fit wrote it; copy the folder again or refit")
    try:
        record = json.loads(paths[0].read_text())
        return build_estimator(record, read_arrays(paths[1]))
    except LusfeatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError) as error:
        raise LusfeatError(f"{paths[0]}: not a model lusfeat can rebuild ({type(error).__name__}: {error}); "
                           "refit with lusfeat.fit") from error

