"""The run folder: what ``lusfeat.fit`` writes and ``lusfeat.predict`` and ``lusfeat.report`` read.

::

    RUN/folds.csv                      patient -> fold, made once and reused (lusfeat.folds)
    RUN/summary.csv                    one row per backbone, fold and model
    RUN/<backbone>/fold<k>/            predictions.csv, metrics.json, model.json and the models:
                                       head.keras, logreg.joblib, [video.joblib]
    RUN/<backbone>/pooled/             predictions.csv, metrics.json of all folds together

Here: the fit parameters (:class:`FitParams`), fitting one fold (:func:`fit_fold`), the tables and
records written (:func:`predictions_table`, :func:`fold_metrics`, :func:`pooled_metrics`,
:func:`model_record`), writing a fold (:func:`write_fold`) and loading one back
(:func:`load_saved_model`) with the checks that refuse features it was not trained on, and
scoring features with it (:func:`score_features`). ``docs/formats.md`` describes the files.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lusfeat import __version__
from lusfeat.errors import LusfeatError
from lusfeat.files import replace_atomically, write_csv, write_json
from lusfeat.folds import split_frames
from lusfeat.metrics import agreement_kappa, evaluate
from lusfeat.models.head import SeverityHead
from lusfeat.models.linear import StandardisedLogisticRegression, pipeline_probabilities
from lusfeat.models.ordinal import OrdinalLogisticRegression
from lusfeat.models.video import VideoPoolingClassifier
from lusfeat.scores import CLASSES, argmax_high
from lusfeat.store import FORMAT_VERSION, ExtractionConfig, FeatureSet, read_config, read_frame_table

log = logging.getLogger("lusfeat.runs")
DEFAULT_FEATURES = "features/*.h5"
FRAME_COLUMNS = ["path", "frame_index", "patient_id", "region", "video_id", "group", "score"]
MODELS = ("head", "logreg", "video")  # column order in predictions.csv
PRESETS = {"video": ("video", "head", "logreg"), "paper": ("head", "logreg")}  # primary model first
OWN_DECISION = ("video",)  # models whose score is their own rule (ordinal median), not the argmax
MODEL_FILES = {"head": "head.keras", "logreg": "logreg.joblib", "video": "video.joblib"}
SUMMARY_COLUMNS = ["backbone", "fold", "model", "accuracy", "macro_f1", "qwk", "roc_auc", "seconds"]
ACCURACY_GAP_WARNING = 0.05  # the head may trail the regression by this much before we warn


@dataclass(frozen=True)
class FitParams:
    """Everything, besides the features and the folds, that defines a fit; written to metrics.json."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    dropout: float = 0.5
    class_weight: str | None = None  # None: the paper's loss; "balanced": see SeverityHead
    seed: int = 0
    folds: int = 3
    logreg_C: float = 0.001
    logreg_max_iter: int = 200
    preset: str = "video"
    video_pooling: tuple[str, ...] = ("mean", "std", "max")
    video_class_weight: str | None = "balanced"
    video_Cs: tuple[float, ...] = (0.001, 0.01, 0.1)  # grid of benchmarks/accuracy.py, chosen by inner CV

    @property
    def models(self) -> tuple[str, ...]:
        """The models this preset trains, the primary one first."""
        return PRESETS[self.preset]

    def video_model(self) -> VideoPoolingClassifier:
        ordinal = OrdinalLogisticRegression(class_weight=self.video_class_weight, random_state=self.seed)
        return VideoPoolingClassifier(estimator=ordinal, pooling=self.video_pooling, Cs=self.video_Cs,
                                      random_state=self.seed)

    def head(self) -> SeverityHead:
        return SeverityHead(dropout=self.dropout, learning_rate=self.learning_rate, epochs=self.epochs,
                            batch_size=self.batch_size, class_weight=self.class_weight, random_state=self.seed)

    def logistic_check(self) -> StandardisedLogisticRegression:
        return StandardisedLogisticRegression(C=self.logreg_C, max_iter=self.logreg_max_iter, random_state=self.seed)


@dataclass
class FoldResult:
    """One backbone, one test fold: the fitted models, test predictions and metrics."""

    fold: int
    train_patients: list[str]
    test_patients: list[str]
    n_train_frames: int
    test_frames: pd.DataFrame
    probabilities: dict[str, np.ndarray]  # model -> (n_test, 4)
    predicted: dict[str, np.ndarray]  # model -> (n_test,) scores
    seconds: dict[str, float]  # model -> fit wall time
    models: dict[str, Any]  # model -> fitted estimator, in the preset's order

    @property
    def head(self) -> SeverityHead:
        return self.models["head"]

    @property
    def logreg(self) -> StandardisedLogisticRegression:
        return self.models["logreg"]


def _patients(values: Any) -> list[str]:
    unique = sorted(set(map(str, values)))
    return sorted(unique, key=lambda p: (int(p), p) if p.isdigit() else (float("inf"), p))


def read_labelled_frames(path: Path) -> tuple[ExtractionConfig, pd.DataFrame]:
    """Config and frame table of a complete feature file whose every frame has a 0-3 score."""
    config, frames = read_frame_table(path)
    if config.tap:
        raise LusfeatError(f"{path} holds {config.backbone}'s {config.tap!r} activation maps (extract --tap), not pooled "
                           "features: they are for lusfeat.experiments.finetune; pass <backbone>.h5 files to lusfeat.fit")
    unlabelled = ~np.isin(frames["score"].to_numpy(), CLASSES)
    if unlabelled.any():
        raise LusfeatError(f"{path}: {int(unlabelled.sum())} frame(s) have no 0-3 score (unlabelled rows of the "
                           "manifest); stage two trains and scores only labelled frames")
    return config, frames


def video_keys(frames: pd.DataFrame) -> np.ndarray:
    """One id per video, unique across patients (two patients may both have an ``L1.mp4``)."""
    return (frames["patient_id"].astype(str) + "/" + frames["video_id"].astype(str)).to_numpy()


def video_fit_arguments(frames: pd.DataFrame) -> dict[str, np.ndarray]:
    """``videos``, ``groups`` (patients) and ``strata`` (groups) of these frames, for ``VideoPoolingClassifier.fit``."""
    return {"videos": video_keys(frames), "groups": frames["patient_id"].to_numpy(),
            "strata": frames["group"].to_numpy()}


def fit_fold(features: FeatureSet, folds: pd.DataFrame, fold: int, params: FitParams) -> FoldResult:
    """Train the preset's models on every fold but ``fold`` (all cached copies); predict ``fold`` (copy 0)."""
    train, test = split_frames(features.frames, folds, fold)
    frames = features.frames
    scores = frames["score"].to_numpy().astype(int)
    train_scores = scores[train]
    if len(np.unique(train_scores)) < 2:
        raise LusfeatError(f"fold {fold}: the training frames hold a single score ({train_scores[0]}); nothing to learn")
    X_train = features.features[:, train]
    X_test = features.features[0, test]
    videos = video_keys(frames)
    makers = {"head": params.head, "logreg": params.logistic_check, "video": params.video_model}
    models, probabilities, predicted, seconds = {}, {}, {}, {}
    for name in params.models:
        model = makers[name]()
        began = time.perf_counter()
        with warnings.catch_warnings():
            # Non-convergence is reported in metrics.json (logreg.converged), not as a stray warning.
            warnings.simplefilter("ignore", category=UserWarning)
            extra = video_fit_arguments(frames.iloc[train]) if name == "video" else {}
            model.fit(X_train, train_scores, **extra)
        seconds[name] = time.perf_counter() - began
        if name == "video":
            probabilities[name] = model.predict_proba(X_test, videos[test])
            predicted[name] = model.predict(X_test, videos[test])
        else:
            probabilities[name] = model.predict_proba(X_test)
            predicted[name] = CLASSES[argmax_high(probabilities[name])]
        models[name] = model
    return FoldResult(
        fold=fold,
        train_patients=_patients(frames["patient_id"].iloc[train]),
        test_patients=_patients(frames["patient_id"].iloc[test]),
        n_train_frames=len(train),
        test_frames=frames.iloc[test].reset_index(drop=True),
        probabilities=probabilities,
        predicted=predicted,
        seconds=seconds,
        models=models,
    )


def predictions_table(frames: pd.DataFrame, probabilities: dict[str, np.ndarray], predicted: dict[str, np.ndarray],
                      folds: np.ndarray | int | None = None) -> pd.DataFrame:
    """One row per frame: its labels (``score`` -1 where unlabelled), each model's probabilities
    ``<model>_p0..p3`` and score ``<model>_pred``, and its test ``fold`` (fit's predictions.csv only)."""
    table = frames[FRAME_COLUMNS].reset_index(drop=True).copy()
    for model in (name for name in MODELS if name in probabilities):
        for label in CLASSES:
            table[f"{model}_p{label}"] = probabilities[model][:, label]
        table[f"{model}_pred"] = predicted[model]
    if folds is not None:
        table["fold"] = folds
    return table


def evaluate_model(frames: pd.DataFrame, predictions: pd.DataFrame, model: str) -> dict[str, Any]:
    """``lusfeat.metrics.evaluate`` of one model's columns (its own scores where it has a rule of its own)."""
    probabilities = predictions[[f"{model}_p{label}" for label in CLASSES]].to_numpy(float)
    own = predictions[f"{model}_pred"].to_numpy() if model in OWN_DECISION else None
    return evaluate(frames, probabilities, own)


def compare_models(metrics: dict[str, dict[str, Any]], predictions: pd.DataFrame) -> tuple[float | None, list[str]]:
    """Agreement (Cohen's kappa) of head and regression predictions, and warnings about the head."""
    warnings_found = []
    head, logreg = metrics["head"]["accuracy"], metrics["logreg"]["accuracy"]
    if head < logreg - ACCURACY_GAP_WARNING:
        warnings_found.append(
            f"head accuracy {head:.3f} is {logreg - head:.3f} below the logistic regression's {logreg:.3f} "
            f"(more than {ACCURACY_GAP_WARNING}): the head may be undertrained (more --epochs?) or mis-set"
        )
    return agreement_kappa(predictions["head_pred"], predictions["logreg_pred"]), warnings_found


def features_record(features: FeatureSet) -> dict[str, Any]:
    return {"path": str(features.path), **dataclasses.asdict(features.config),
            "weights_source": features.attrs.get("weights_source", "")}


def fold_metrics(backbone: str, result: FoldResult, predictions: pd.DataFrame, features: FeatureSet,
                 params: FitParams) -> dict[str, Any]:
    record: dict[str, Any] = {
        "backbone": backbone,
        "fold": result.fold,
        "n_train_frames": result.n_train_frames,
        "n_test_frames": len(predictions),
        "train_patients": result.train_patients,
        "test_patients": result.test_patients,
    }
    record["models"] = list(result.models)
    record["primary"] = record["models"][0]
    for model in result.models:
        record[model] = {**evaluate_model(result.test_frames, predictions, model), "fit_seconds": result.seconds[model]}
    record["head"]["history"] = result.head.history_
    record["logreg"]["n_iter"] = result.logreg.n_iter_
    record["logreg"]["converged"] = result.logreg.converged_
    if "video" in result.models:
        video = result.models["video"]
        record["video"].update({"C": video.C_, "inner_video_qwk": video.inner_qwk_, "train_videos": video.n_videos_,
                                "converged": bool(video.estimator_.converged_)})
    record["agreement_kappa"], record["warnings"] = compare_models(record, predictions)
    if not result.logreg.converged_:
        record["warnings"].append(f"the logistic regression stopped at max_iter={params.logreg_max_iter} before converging")
    record["params"] = {**dataclasses.asdict(params), "train_copies": features.config.copies, "eval_copy": 0}
    record["features"] = features_record(features)
    return record


def pooled_metrics(backbone: str, fold_records: list[dict[str, Any]], predictions: pd.DataFrame,
                   features: FeatureSet, params: FitParams) -> dict[str, Any]:
    """Metrics of all test folds' predictions together, with the per-fold values beside them."""
    frames = predictions[FRAME_COLUMNS]
    record: dict[str, Any] = {
        "backbone": backbone,
        "fold": "pooled",
        "folds": [entry["fold"] for entry in fold_records],
        "n_test_frames": len(predictions),
        "test_patients": _patients(predictions["patient_id"]),
        "models": fold_records[0]["models"],
        "primary": fold_records[0]["primary"],
    }
    for model in record["models"]:
        per_fold = [entry[model] for entry in fold_records]
        record[model] = {
            **evaluate_model(frames, predictions, model),
            "fit_seconds": float(sum(entry["fit_seconds"] for entry in per_fold)),
            "per_fold": {key: [entry[key] for entry in per_fold]
                         for key in ("accuracy", "macro_f1", "qwk", "roc_auc_macro", "mae", "fit_seconds")},
        }
    # Only the pooled comparison's own warnings here; run_backbone adds the folds' after printing.
    record["agreement_kappa"], record["warnings"] = compare_models(record, predictions)
    record["params"] = fold_records[0]["params"]
    record["features"] = features_record(features)
    return record


def model_record(backbone: str, result: FoldResult, features: FeatureSet, params: FitParams) -> dict[str, Any]:
    """What ``predict`` needs to rebuild the feature extractor and refuse a mismatch."""
    return {
        "backbone": backbone,
        "fold": result.fold,
        "extraction": dataclasses.asdict(features.config),
        "weights_source": features.attrs.get("weights_source", ""),
        "feature_dim": int(features.features.shape[2]),
        "classes": CLASSES.tolist(),
        "train_patients": result.train_patients,
        "models": list(result.models),
        "primary": next(iter(result.models)),
        "files": {name: MODEL_FILES[name] for name in result.models},
        "lusfeat_version": __version__,
        "params": dataclasses.asdict(params),
    }


def write_fold(folder: Path, result: FoldResult, predictions: pd.DataFrame, metrics: dict[str, Any],
               model: dict[str, Any]) -> None:
    import joblib

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(predictions, folder / "predictions.csv")
    write_json(metrics, folder / "metrics.json")
    replace_atomically(folder / MODEL_FILES["head"], result.head.model_.save)
    replace_atomically(folder / MODEL_FILES["logreg"], lambda target: joblib.dump(result.logreg.pipeline_, target))
    if "video" in result.models:
        replace_atomically(folder / MODEL_FILES["video"], lambda target: joblib.dump(result.models["video"], target))
    else:
        (folder / MODEL_FILES["video"]).unlink(missing_ok=True)  # a paper refit must not leave an older video model
    write_json(model, folder / "model.json")


def write_pooled(folder: Path, predictions: pd.DataFrame, metrics: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(predictions, folder / "predictions.csv")
    write_json(metrics, folder / "metrics.json")


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"backbone": metrics["backbone"], "fold": str(metrics["fold"]), "model": model,
             "accuracy": metrics[model]["accuracy"], "macro_f1": metrics[model]["macro_f1"],
             "qwk": metrics[model]["qwk"], "roc_auc": metrics[model]["roc_auc_macro"],
             "seconds": metrics[model]["fit_seconds"]} for model in metrics["models"]]


def update_summary(path: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``RUN/summary.csv`` with these rows; rows of earlier calls for other (backbone, fold) are kept."""
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    if path.exists():
        earlier = pd.read_csv(path, dtype={"backbone": str, "fold": str, "model": str})
        if list(earlier.columns) == SUMMARY_COLUMNS:
            fresh = set(zip(table["backbone"], table["fold"], strict=True))
            keep = [(backbone, fold) not in fresh for backbone, fold in zip(earlier["backbone"], earlier["fold"], strict=True)]
            table = pd.concat([earlier[keep], table], ignore_index=True)
    order = table["fold"].map(lambda fold: (1, 0) if fold == "pooled" else (0, int(fold)))
    table = table.assign(_order=order).sort_values(["backbone", "_order", "model"], kind="stable")
    table = table.drop(columns="_order").reset_index(drop=True)
    write_csv(table, path)
    return table


def resolve_feature_paths(patterns: list[str] | None) -> list[Path]:
    """The feature files named (globs allowed), or every pooled ``features/*.h5``; one per backbone.

    The default leaves out tap files (``extract --tap``: activation maps, not pooled features).
    """
    paths: list[Path] = []
    for pattern in patterns or [DEFAULT_FEATURES]:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not patterns:
            matches = [match for match in matches if not read_config(match).tap]
        if not matches:
            raise LusfeatError(f"no feature files match {pattern}; make them with python -m lusfeat.extract "
                               "or name them with --features")
        paths.extend(Path(match) for match in matches)
    return list(dict.fromkeys(paths))


@dataclass
class SavedModel:
    """A ``lusfeat.fit`` model folder: its models and what their features were made with."""

    folder: Path
    info: dict
    extraction: ExtractionConfig
    models: dict[str, object]  # name -> keras.Model "head" | sklearn Pipeline "logreg" | VideoPoolingClassifier "video"
    primary: str

    @property
    def head(self) -> object:
        return self.models["head"]


def _load_head(path: Path, extraction: ExtractionConfig):
    import keras

    try:
        head = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises assorted types for a broken or foreign file
        raise LusfeatError(f"{path}: not a loadable Keras model ({type(error).__name__}: {error})") from error
    width = head.input_shape[-1]
    if width != extraction.feature_dim or head.output_shape[-1] != len(CLASSES):
        raise LusfeatError(f"{path}: maps {width} features to {head.output_shape[-1]} classes, but model.json "
                           f"records {extraction.feature_dim} features and {len(CLASSES)} classes")
    return head


def _load_joblib(path: Path, extraction: ExtractionConfig):
    import joblib

    try:
        model = joblib.load(path)
    except Exception as error:  # unpickling a broken or foreign file raises assorted types
        raise LusfeatError(f"{path}: not a loadable model file ({type(error).__name__}: {error}); refit the fold "
                           "with lusfeat.fit") from error
    width = getattr(model, "n_features_in_", None)
    if width != extraction.feature_dim:
        raise LusfeatError(f"{path}: fitted on {width} features, but model.json records {extraction.feature_dim}")
    return model


def load_saved_model(folder: str | os.PathLike) -> SavedModel:
    folder = Path(folder)
    info_path = folder / "model.json"
    if not info_path.is_file():
        raise LusfeatError(f"{info_path} not found: --model takes a folder written by lusfeat.fit "
                           "(RUN/<backbone>/fold<k>, holding model.json and head.keras)")
    try:
        info = json.loads(info_path.read_text())
        recorded = dict(info["extraction"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise LusfeatError(f"{info_path}: not a lusfeat model record ({error!r})") from error
    extraction = ExtractionConfig.from_record(recorded, f"{info_path} (refit with this lusfeat version)")
    if extraction.format_version != FORMAT_VERSION:
        raise LusfeatError(f"{info_path}: features of format version {extraction.format_version}, this lusfeat "
                           f"makes version {FORMAT_VERSION}; refit the model with this version")
    names = list(info.get("models", ["head"]))  # folders of lusfeat 0.1 before presets hold the head only
    unknown = [name for name in names if name not in MODEL_FILES]
    if unknown:
        raise LusfeatError(f"{info_path}: unknown model(s) {', '.join(unknown)}; this lusfeat knows "
                           f"{', '.join(MODEL_FILES)}")
    models = {}
    for name in names:
        path = folder / MODEL_FILES[name]
        if not path.is_file():
            raise LusfeatError(f"{path} not found: model.json lists the {name} model; refit the fold with lusfeat.fit "
                               "or copy the whole folder")
        models[name] = _load_head(path, extraction) if name == "head" else _load_joblib(path, extraction)
    primary = str(info.get("primary", names[0]))
    if primary not in models:
        raise LusfeatError(f"{info_path}: primary model {primary!r} is not among its models {', '.join(names)}; "
                           "refit the fold with lusfeat.fit")
    return SavedModel(folder, info, extraction, models, primary)


def check_compatible(model: SavedModel, weights_identity: str, weights_description: str, input_size: int,
                     feature_dim: int) -> None:
    """Raise when the features we would compute are not the ones the head was trained on."""
    recorded = model.extraction
    problems = []
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


def score_features(features: np.ndarray, frames: pd.DataFrame,
                   model: SavedModel) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per model of the folder: ``(probabilities (n, 4) per model, scores (n,) per model)`` of every frame."""
    probabilities, predicted = {}, {}
    for name, estimator in model.models.items():
        if name == "head":
            proba = np.concatenate([np.asarray(estimator(features[i:i + 1024], training=False), dtype="float64")
                                    for i in range(0, len(features), 1024)])
            probabilities[name] = proba / proba.sum(axis=1, keepdims=True)
        elif name == "logreg":
            probabilities[name] = pipeline_probabilities(estimator, features)
        else:  # video: one answer per (patient, video), given to each of its frames
            keys = video_keys(frames)
            probabilities[name], predicted[name] = estimator.predict_proba(features, keys), estimator.predict(features, keys)
        if name not in predicted:
            predicted[name] = CLASSES[argmax_high(probabilities[name])]
    return probabilities, predicted


