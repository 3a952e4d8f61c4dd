"""One predictions table: the frames, and per model its probabilities, scores, calibrated probabilities and sets.

:class:`Predictions` is what ``lusfeat.fit`` scores a test fold into, what ``lusfeat.predict``
scores new frames into, and what ``lusfeat.report``, :mod:`lusfeat.aggregate` and
:mod:`lusfeat.metrics` read. It holds

- ``frames``: one row per frame, :data:`FRAME_COLUMNS` (``path, frame_index, patient_id, region,
  video_id, group, score``; ``score`` -1 where unlabelled), and ``fold`` (fit's test fold) where known;
- ``models``: per model name (in column order), a :class:`ModelPredictions`: ``probabilities``
  ``(n, 4)`` of scores 0-3, ``scores`` ``(n,)`` by the model's own rule, and where the model is
  calibrated ``calibrated`` ``(n, 4)`` and ``sets`` ``(n, 4)`` booleans (score k is in the frame's
  video's conformal score set).

Arrays in, arrays out: nobody parses column names or set strings but :meth:`Predictions.read`.
Its one file format (fit's ``predictions.csv``, predict's ``frames.csv``), written by
:meth:`Predictions.write` and read back to the same numbers (floats are written to round-trip)::

    path, frame_index, patient_id, region, video_id, group, score,
    then per model: <model>_p0..<model>_p3, <model>_pred,
    then per calibrated model: <model>_cal_p0..<model>_cal_p3, <model>_set ("{1,2}"),
    then fold (fit only)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.files import write_csv
from lusfeat.index import FrameIndex, video_keys
from lusfeat.scores import CLASSES

FRAME_COLUMNS = ["path", "frame_index", "patient_id", "region", "video_id", "group", "score"]
TEXT_COLUMNS = {"path": str, "patient_id": str, "region": str, "video_id": str, "group": str}


def format_set(row) -> str:
    """``{1,2}``: the scores of one boolean row, as the CSV files write them."""
    return "{" + ",".join(str(k) for k in CLASSES if row[k]) + "}"


def parse_set(text: str) -> np.ndarray:
    """The boolean row of a :func:`format_set` string."""
    inside = str(text).strip().strip("{}")
    row = np.zeros(len(CLASSES), dtype=bool)
    for part in filter(None, (piece.strip() for piece in inside.split(","))):
        if part not in {str(k) for k in CLASSES}:
            raise ValueError(f"not a set of 0-3 scores: {text!r}")
        row[int(part)] = True
    return row


@dataclass
class ModelPredictions:
    """One model's answers for every frame of a :class:`Predictions`."""

    probabilities: np.ndarray  # (n, 4)
    scores: np.ndarray  # (n,) by the model's own rule
    calibrated: np.ndarray | None = None  # (n, 4), where the model is calibrated
    sets: np.ndarray | None = None  # (n, 4) booleans: the frame's video's score set

    def take(self, rows) -> ModelPredictions:
        return ModelPredictions(self.probabilities[rows], self.scores[rows],
                                None if self.calibrated is None else self.calibrated[rows],
                                None if self.sets is None else self.sets[rows])


@dataclass
class Predictions:
    """Frames and each model's answers for them (see the module docstring)."""

    frames: pd.DataFrame
    models: dict[str, ModelPredictions] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frames = self.frames.reset_index(drop=True)
        for name, answers in self.models.items():
            arrays = [answers.probabilities, answers.scores, answers.calibrated, answers.sets]
            if any(array is not None and len(array) != len(self.frames) for array in arrays):
                raise ValueError(f"{name}: one row per frame ({len(self.frames)}) is needed")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def names(self) -> list[str]:
        """The models, in column order."""
        return list(self.models)

    @property
    def truth(self) -> np.ndarray:
        """The true score of each frame, -1 where unlabelled."""
        return self.frames["score"].to_numpy().astype(int)

    @property
    def index(self) -> FrameIndex:
        return FrameIndex.of(self.frames)

    @property
    def videos(self) -> np.ndarray:
        """Each frame's video key (:func:`lusfeat.index.video_keys`)."""
        return video_keys(self.frames)

    @property
    def fold(self) -> np.ndarray | None:
        return self.frames["fold"].to_numpy().astype(int) if "fold" in self.frames.columns else None

    def probabilities(self, model: str, calibrated: bool = False) -> np.ndarray:
        """``(n, 4)``: the model's probabilities; with ``calibrated``, its calibrated ones where it has them."""
        answers = self[model]
        return answers.calibrated if calibrated and answers.calibrated is not None else answers.probabilities

    def __getitem__(self, model: str) -> ModelPredictions:
        if model not in self.models:
            raise LusfeatError(f"no predictions of model {model!r}; these are of {', '.join(self.models) or 'none'}")
        return self.models[model]

    def take(self, rows) -> Predictions:
        """These frames (positions or a boolean mask) and their answers."""
        rows = np.asarray(rows)
        return Predictions(self.frames.iloc[rows if rows.dtype != bool else np.flatnonzero(rows)],
                           {name: answers.take(rows) for name, answers in self.models.items()})

    def labelled(self) -> Predictions:
        """The frames with a true score."""
        return self.take(self.truth != -1)

    @staticmethod
    def concat(parts: Iterable[Predictions]) -> Predictions:
        """Several tables of the same models one after the other (fit's pooled folds)."""
        parts = list(parts)
        names = parts[0].names
        if any(part.names != names for part in parts):
            raise ValueError("predictions of different models cannot be pooled")

        def joined(name: str, attribute: str) -> np.ndarray | None:
            arrays = [getattr(part.models[name], attribute) for part in parts]
            return None if any(array is None for array in arrays) else np.concatenate(arrays)

        models = {name: ModelPredictions(joined(name, "probabilities"), joined(name, "scores"),
                                         joined(name, "calibrated"), joined(name, "sets")) for name in names}
        return Predictions(pd.concat([part.frames for part in parts], ignore_index=True), models)

    # ------------------------------------------------------------------ the file

    def table(self) -> pd.DataFrame:
        """The CSV layout (module docstring) as a DataFrame."""
        columns: dict[str, object] = {name: self.frames[name].to_numpy() for name in FRAME_COLUMNS}
        for name, answers in self.models.items():
            columns.update({f"{name}_p{k}": answers.probabilities[:, k] for k in CLASSES})
            columns[f"{name}_pred"] = np.asarray(answers.scores).astype(int)
        for name, answers in self.models.items():
            if answers.calibrated is not None and answers.sets is not None:
                columns.update({f"{name}_cal_p{k}": answers.calibrated[:, k] for k in CLASSES})
                columns[f"{name}_set"] = [format_set(row) for row in answers.sets]
        if "fold" in self.frames.columns:
            columns["fold"] = self.frames["fold"].to_numpy()
        return pd.DataFrame(columns)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the CSV atomically (:func:`lusfeat.files.write_csv`)."""
        return write_csv(self.table(), path)

    @classmethod
    def from_table(cls, table: pd.DataFrame, where: str = "predictions table") -> Predictions:
        """The :class:`Predictions` of a DataFrame in the CSV layout; a missing column is a named error."""
        missing = [column for column in FRAME_COLUMNS if column not in table.columns]
        if missing:
            raise LusfeatError(f"{where}: lacks column(s) {', '.join(missing)}; is it a lusfeat.fit predictions.csv "
                               "or a lusfeat.predict frames.csv?")
        names = [column[:-len("_pred")] for column in table.columns if column.endswith("_pred")]
        names = [name for name in names if all(f"{name}_p{k}" in table.columns for k in CLASSES)]
        if not names:
            raise LusfeatError(f"{where}: no <model>_pred and <model>_p0.._p3 columns; is it a lusfeat.fit "
                               "predictions.csv or a lusfeat.predict frames.csv?")
        models = {}
        for name in names:
            calibrated = sets = None
            if f"{name}_set" in table.columns and all(f"{name}_cal_p{k}" in table.columns for k in CLASSES):
                calibrated = table[[f"{name}_cal_p{k}" for k in CLASSES]].to_numpy(float)
                try:
                    sets = np.array([parse_set(text) for text in table[f"{name}_set"]], dtype=bool).reshape(-1, 4)
                except ValueError as error:
                    raise LusfeatError(f"{where}: column {name}_set: {error}") from error
            models[name] = ModelPredictions(table[[f"{name}_p{k}" for k in CLASSES]].to_numpy(float),
                                            table[f"{name}_pred"].to_numpy().astype(int), calibrated, sets)
        frames = table[FRAME_COLUMNS + (["fold"] if "fold" in table.columns else [])]
        return cls(frames, models)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Predictions:
        """Read a predictions CSV written by :meth:`write`; a file that is not one is a named error."""
        try:
            table = pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False, float_precision="round_trip")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise LusfeatError(f"{path}: not a readable predictions CSV ({error})") from error
        return cls.from_table(table, str(path))
