"""The run folder: what ``lusfeat.fit`` writes and ``lusfeat.predict``, ``explain`` and ``report`` read.

::

    RUN/folds.csv                      patient -> fold, made once and reused (lusfeat.folds)
    RUN/summary.csv                    one row per backbone, fold and model (lusfeat.records)
    RUN/<backbone>/fold<k>/            predictions.csv (lusfeat.predictions), metrics.json, model.json and the
                                       models saved as data (lusfeat.models.saving): <model>.json + <model>.npz
                                       for each model of the preset and the distribution check
    RUN/<backbone>/pooled/             predictions.csv, metrics.json of all folds together
    RUN/<backbone>/final/              fit --final: every model trained on all patients; model.json,
                                       metrics.json (no held-out test: see pooled/) and the models

Here: writing a fold (:func:`write_fold`) and loading one back (:func:`load_saved_model`: nothing
is unpickled; a folder holding a pickle or of an older model format is refused with the command
that refits it; every file's sha256 is checked), with the checks that refuse features the models
were not trained on (:func:`check_compatible`) or a run that mixes engines (:func:`check_one_engine`).
``docs/formats.md`` describes the files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lusfeat.aggregate import Aggregate, aggregate
from lusfeat.errors import LusfeatError
from lusfeat.files import make_folder, write_json
from lusfeat.folds import FOLDS_FILE
from lusfeat.models.calibrated import Calibrated
from lusfeat.models.distribution import VideoDistribution
from lusfeat.models.registry import DISTRIBUTION, MODELS, PRESETS, FitParams
from lusfeat.models.saving import load_estimator, save_estimator
from lusfeat.predictions import Predictions
from lusfeat.store import FORMAT_VERSION, ExtractionConfig
from lusfeat.training import FoldResult, predict_all

MODEL_FORMAT = 2  # model folders of format 1 held pickles (joblib) and a .keras file: refused, refit
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
FORMAT_1_FILES = ("head.keras", "logreg.joblib", "video.joblib", "distribution.joblib")


def write_fold(folder: Path, result: FoldResult, metrics: dict[str, Any], model: dict[str, Any]) -> None:
    """Write a fold (or the final model): predictions, metrics, every estimator as data and model.json last,
    recording each estimator file's sha256 (checked by :func:`load_saved_model`)."""
    make_folder(folder)
    if result.fold == "final":  # nothing held out
        (folder / "predictions.csv").unlink(missing_ok=True)
    else:
        result.predictions.write(folder / "predictions.csv")
    write_json(metrics, folder / "metrics.json")
    files: dict[str, str] = {}
    saved = {**result.models, **({DISTRIBUTION: result.distribution} if result.distribution is not None else {})}
    for name, estimator in saved.items():
        files.update(save_estimator(estimator, folder, name))
    # an earlier fit's files (the video model a paper refit drops, a format-1 folder's pickles) must not stay
    stale = {f"{name}{suffix}" for name in (*MODELS, DISTRIBUTION) for suffix in (".json", ".npz")}
    for name in (stale | set(FORMAT_1_FILES)) - set(files):
        (folder / name).unlink(missing_ok=True)
    fitted = datetime.now(timezone.utc).isoformat(timespec="seconds")  # shown on predict's page
    write_json({**model, "model_format": MODEL_FORMAT, "fitted": fitted, "files": files}, folder / "model.json")


def write_pooled(folder: Path, predictions: Predictions, metrics: dict[str, Any]) -> None:
    make_folder(folder)
    predictions.write(folder / "predictions.csv")
    write_json(metrics, folder / "metrics.json")


ENGINE_FIELDS = ("engine", "precision")  # features of one run come from one engine at one precision


def earlier_extractions(run_dir: Path, replaced: set[tuple[str, str]]) -> list[tuple[Path, ExtractionConfig]]:
    """The extraction records of the models already in ``run_dir`` (``<backbone>/fold<k>`` and ``<backbone>/final``),
    except the ``(backbone, folder)``s about to be replaced."""
    found = []
    for path in sorted(run_dir.glob("*/*/model.json")):
        backbone, folder = path.parent.parent.name, path.parent.name
        if not (folder == "final" or (folder.startswith("fold") and folder[4:].isdigit())) or (backbone, folder) in replaced:
            continue
        try:
            found.append((path, ExtractionConfig.from_record(json.loads(path.read_text())["extraction"], str(path))))
        except (OSError, ValueError, KeyError, TypeError, LusfeatError):
            continue  # not ours to judge here: lusfeat.predict refuses a broken model folder
    return found


def check_one_engine(sources: list[tuple[Path, ExtractionConfig]]) -> None:
    """Refuse features of different engines or precisions in one run: their results would not compare."""
    if not sources:
        return
    first_path, first = sources[0]
    problems = []
    for path, config in sources[1:]:
        differ = [f"{name}: {getattr(first, name)!r} vs {getattr(config, name)!r}" for name in ENGINE_FIELDS
                  if getattr(first, name) != getattr(config, name)]
        if differ:
            problems.append(f"{first_path} vs {path}: {'; '.join(differ)}")
    if problems:
        raise LusfeatError("features of different inference engines or precisions in one run (" + " | ".join(problems)
                           + "); extract them all with one --engine and --precision, or fit into separate --out folders")


@dataclass
class SavedModel:
    """A ``lusfeat.fit`` model folder: its models and what their features were made with."""

    folder: Path
    info: dict
    extraction: ExtractionConfig
    models: dict[str, Calibrated]  # name -> the fitted model with its calibration and score sets
    primary: str
    distribution: VideoDistribution | None = None

    def predictions(self, features: np.ndarray, frames: pd.DataFrame, coverage: float | None = None) -> Predictions:
        """Every model's answers for these frames: as fit scored its test fold, the same code (score sets at
        ``coverage``, default the one each was fitted for)."""
        return predict_all(self.models, features, frames, coverage=coverage)


def refit_command(folder: Path, info: dict[str, Any] | None) -> str:
    """The ``lusfeat.fit`` command that writes this model folder again, as the folder's records say."""
    info = info or {}
    metrics = folder / "metrics.json"
    try:
        features = json.loads(metrics.read_text())["features"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        features = f"features/{info.get('backbone', folder.parent.name)}.h5"
    fold = str(info.get("fold", folder.name.removeprefix("fold")))
    which = "--final" if fold == "final" else f"--fold {fold}"
    return f"python -m lusfeat.fit --features {features} {which} --out {folder.parent.parent}"


def _is_pickle(path: Path) -> bool:
    if path.suffix in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # the pickle protocol's first bytes


def refuse_code_files(folder: Path, info: dict[str, Any] | None) -> None:
    """Refuse a model folder holding a pickle (an old run's ``.joblib``, a crafted file): loading one runs its code."""
    found = sorted(path.name for path in folder.iterdir() if path.is_file() and _is_pickle(path))
    if found:
        raise LusfeatError(
            f"{folder} holds {', '.join(found)}: a pickled model (lusfeat before model format {MODEL_FORMAT}, or a file "
            "put there by someone else), and loading a pickle runs whatever code it holds, so lusfeat never loads one. "
            f"Refit the model (it is saved as data now): {refit_command(folder, info)}; or, if the folder came from "
            "someone else, ask them for one written by this lusfeat")


def _load_estimator(folder: Path, name: str, files: dict[str, str], extraction: ExtractionConfig, kind: type):
    model = load_estimator(folder, name, files)
    if not isinstance(model, kind):
        raise LusfeatError(f"{folder / name}.json: a {type(model).__name__}, not the {kind.__name__} model.json lists "
                           f"as {name}; refit with lusfeat.fit")
    width = getattr(model, "n_features_in_", None)
    if width != extraction.feature_dim:
        raise LusfeatError(f"{folder / name}.npz: fitted on {width} features, but model.json records "
                           f"{extraction.feature_dim}")
    return model


def load_saved_model(folder: str | os.PathLike) -> SavedModel:
    """The models of a ``lusfeat.fit`` folder, built from their JSON and arrays; nothing is unpickled.

    Refused: a folder holding a pickle (:func:`refuse_code_files`), one of an older model format, a file whose
    sha256 is not the one model.json records, features of another format version.
    """
    folder = Path(folder)
    info_path = folder / "model.json"
    if not info_path.is_file():
        raise LusfeatError(f"{info_path} not found: --model takes a folder written by lusfeat.fit "
                           "(RUN/<backbone>/fold<k> or final, holding model.json)")
    try:
        info = json.loads(info_path.read_text())
        recorded = dict(info["extraction"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise LusfeatError(f"{info_path}: not a lusfeat model record ({error!r})") from error
    refuse_code_files(folder, info)
    if info.get("model_format") != MODEL_FORMAT or not isinstance(info.get("files"), dict):
        raise LusfeatError(f"{info_path}: a model folder of an older lusfeat (model format "
                           f"{info.get('model_format', 1)}, this lusfeat reads {MODEL_FORMAT}); refit it: "
                           f"{refit_command(folder, info)}")
    extraction = ExtractionConfig.from_record(recorded, f"{info_path} (refit with this lusfeat version)")
    if extraction.format_version != FORMAT_VERSION:
        raise LusfeatError(f"{info_path}: features of format version {extraction.format_version}, this lusfeat "
                           f"makes version {FORMAT_VERSION}; refit the model with this version")
    names = list(info.get("models", []))
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise LusfeatError(f"{info_path}: unknown model(s) {', '.join(unknown) or '(none listed)'}; this lusfeat "
                           f"knows {', '.join(MODELS)}")
    files = info["files"]
    models = {name: _load_estimator(folder, name, files, extraction, Calibrated) for name in names}
    primary = str(info.get("primary", names[0]))
    if primary not in models:
        raise LusfeatError(f"{info_path}: primary model {primary!r} is not among its models {', '.join(names)}; "
                           "refit the fold with lusfeat.fit")
    distribution = None
    if "distribution" in info:
        distribution = _load_estimator(folder, DISTRIBUTION, files, extraction, VideoDistribution)
    return SavedModel(folder, info, extraction, models, primary, distribution)


def check_compatible(model: SavedModel, weights_identity: str, weights_description: str, input_size: int,
                     feature_dim: int, engine: str | None = None, precision: str | None = None) -> None:
    """Raise when the features we would compute are not the ones the head was trained on.

    ``engine`` / ``precision``: those asked for (``None``: the model's own).
    """
    recorded = model.extraction
    problems = []
    asked = (engine or recorded.engine, precision or recorded.precision)
    if asked != (recorded.engine, recorded.precision):
        problems.append(f"engine: model trained on features of {recorded.engine} {recorded.precision}, you asked "
                        f"{asked[0]} {asked[1]} (drop --engine/--precision to use the model's)")
    if recorded.pooling != "avg":
        problems.append(f"pooling: model trained on {recorded.pooling!r} features, lusfeat.predict computes whole-frame "
                        "'avg' pooled features only")
    if weights_identity != recorded.weights:
        hint = ""
        if recorded.weights == "imagenet":
            hint = " (the model used Keras' own ImageNet download: pass --weights imagenet with $LUSFEAT_WEIGHTS_DIR unset)"
        elif recorded.weights == "none":
            hint = " (the model was trained on features of a randomly initialised backbone: pass --weights none)"
        else:
            hint = f" (pass the weights file whose sha256 is {recorded.weights}, or its folder)"
        problems.append(f"backbone weights: model trained with {recorded.weights!r} "
                        f"({model.info.get('weights_source', '?')}), you gave {weights_identity!r} "
                        f"({weights_description}){hint}")
    if input_size != recorded.input_size:
        problems.append(f"input size: model trained at {recorded.input_size} px, you asked {input_size} px")
    if feature_dim != recorded.feature_dim:
        problems.append(f"feature size: model trained on {recorded.feature_dim}, the backbone gives {feature_dim}")
    if problems:
        raise LusfeatError(f"{model.folder} does not fit these features, its scores would be wrong: " + "; ".join(problems))


# --------------------------------------------------------------------------- reading a run for the report


KNOWN_PREFIXES = PRESETS[FitParams.preset]  # the default preset's models, its primary model first
FOLD_DIR = re.compile(r"^fold(\d+)$")


@dataclass
class Section:
    """One backbone on one test set: a fold, or all folds pooled."""

    backbone: str
    name: str  # "fold 1", "pooled"
    predictions: Predictions
    metrics: dict | None
    model: dict | None
    note: str = ""
    aggregates: list[Aggregate] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.backbone}-{self.name}".lower())

    @property
    def prefixes(self) -> list[str]:
        return [agg.model for agg in self.aggregates]


@dataclass
class Run:
    path: Path
    folds: pd.DataFrame | None
    sections: dict[str, list[Section]]  # backbone -> folds then pooled


def model_prefixes(predictions: Predictions) -> list[str]:
    """The models of a predictions table: video, head and logreg first."""
    found = predictions.names
    return [p for p in KNOWN_PREFIXES if p in found] + [p for p in found if p not in KNOWN_PREFIXES]


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LusfeatError(f"{path}: not readable JSON ({error})") from error


def _section(backbone: str, name: str, folder: Path, predictions: Predictions, rule: str, note: str = "") -> Section:
    section = Section(backbone, name, predictions, read_json(folder / "metrics.json"), read_json(folder / "model.json"), note)
    section.aggregates = [aggregate(predictions, prefix, rule) for prefix in model_prefixes(predictions)]
    return section


def load_run(run_dir: str | os.PathLike, rule: str = "mode") -> Run:
    """Every backbone, fold and pooled test set of a run folder, aggregated by ``rule``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LusfeatError(f"run folder {run_dir} not found; make one with python -m lusfeat.fit")
    folds_csv = run_dir / FOLDS_FILE  # shown as it is (read_folds would refuse a hand-made one-fold run)
    folds = pd.read_csv(folds_csv, dtype={"patient_id": str}) if folds_csv.is_file() else None
    sections: dict[str, list[Section]] = {}
    for backbone_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        fold_dirs = sorted((p for p in backbone_dir.iterdir() if FOLD_DIR.match(p.name) and (p / "predictions.csv").is_file()),
                           key=lambda p: int(FOLD_DIR.match(p.name).group(1)))
        found = []
        for fold_dir in fold_dirs:
            found.append(_section(backbone_dir.name, f"fold {FOLD_DIR.match(fold_dir.name).group(1)}", fold_dir,
                                  Predictions.read(fold_dir / "predictions.csv"), rule))
        pooled_dir = backbone_dir / "pooled"
        if (pooled_dir / "predictions.csv").is_file():
            found.append(_section(backbone_dir.name, "pooled", pooled_dir, Predictions.read(pooled_dir / "predictions.csv"),
                                  rule))
        elif len(found) > 1:
            pooled = Predictions.concat([s.predictions for s in found])
            frames = pooled.frames
            if frames.groupby("patient_id")["fold"].nunique().max() > 1 if "fold" in frames.columns else False:
                raise LusfeatError(f"{backbone_dir}: a patient is in the test set of two folds; the folds are not patient-level")
            found.append(_section(backbone_dir.name, "pooled", pooled_dir, pooled, rule,
                                  note=f"made by the report from the {len(found)} fold predictions (no pooled/ folder)"))
        if found:
            sections[backbone_dir.name] = found
    if not sections:
        raise LusfeatError(f"{run_dir}: no <backbone>/fold<k>/predictions.csv found; is it a lusfeat.fit run folder?")
    return Run(run_dir, folds, sections)
