"""The run folder: what ``lusfeat.fit`` writes and ``lusfeat.predict`` and ``lusfeat.report`` read.

::

    RUN/folds.csv                      patient -> fold, made once and reused (lusfeat.folds)
    RUN/summary.csv                    one row per backbone, fold and model
    RUN/<backbone>/fold<k>/            predictions.csv, metrics.json, model.json and the models, saved as data
                                       (lusfeat.models.saving): head, logreg, [video], distribution .json + .npz
    RUN/<backbone>/pooled/             predictions.csv, metrics.json of all folds together
    RUN/<backbone>/final/              fit --final: every model trained on all patients; model.json,
                                       metrics.json (no held-out test: see pooled/) and the models

Here: the fit parameters (:class:`FitParams`), fitting one fold (:func:`fit_fold`), the tables and
records written (:func:`make_predictions`, :func:`fold_metrics`, :func:`pooled_metrics`,
:func:`model_record`), writing a fold (:func:`write_fold`) and loading one back
(:func:`load_saved_model`) with the checks that refuse features it was not trained on, and
scoring features with it (:func:`score_features`). ``docs/formats.md`` describes the files.

Post-hoc (:func:`fit_posthoc`): every model of a fold (or of the final fit) is also refitted on
inner patient-level folds of its *training* patients (the split that chooses the video model's
C); the inner held-out probabilities fit a temperature (:class:`~lusfeat.models.calibration.TemperatureScaling`)
and, on the calibrated video probabilities, conformal score sets (:class:`~lusfeat.models.conformal.ConformalScoreSets`).
No test patient is used. ``docs/uncertainty.md`` says what they mean.
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
from lusfeat.aggregate import REGION_KEYS, VIDEO_KEYS, group_sets
from lusfeat.errors import LusfeatError
from lusfeat.files import json_ready, make_folder, write_csv, write_json
from lusfeat.folds import assert_patients_disjoint, make_folds, patient_strata, split_frames
from lusfeat.index import split_key, video_keys
from lusfeat.metrics import agreement_kappa, evaluate, set_metrics, video_probabilities
from lusfeat.models.calibration import TemperatureScaling
from lusfeat.models.conformal import ConformalScoreSets
from lusfeat.models.distribution import VideoDistribution
from lusfeat.models.head import SeverityHead
from lusfeat.models.linear import StandardisedLogisticRegression
from lusfeat.models.ordinal import OrdinalLogisticRegression, decide
from lusfeat.models.saving import load_estimator, save_estimator
from lusfeat.models.video import VideoPoolingClassifier
from lusfeat.predictions import FRAME_COLUMNS, ModelPredictions, Predictions
from lusfeat.scores import CLASSES, argmax_high, most_frequent
from lusfeat.store import FORMAT_VERSION, ExtractionConfig, FeatureSet, read_config, read_frame_table

log = logging.getLogger("lusfeat.runs")
DEFAULT_FEATURES = "features/*.h5"
MODELS = ("head", "logreg", "video")  # column order in predictions.csv
PRESETS = {"video": ("video", "head", "logreg"), "paper": ("head", "logreg")}  # primary model first
OWN_DECISION = ("video",)  # models whose score is their own rule (ordinal median), not the argmax
MODEL_FILES = {"head": "head", "logreg": "logreg", "video": "video"}  # saved as <name>.json + <name>.npz
DISTRIBUTION_FILE = "distribution"  # VideoDistribution: is a new video like the training videos?
MODEL_FORMAT = 2  # model folders of format 1 held pickles (joblib) and a .keras file: refused, refit
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
FORMAT_1_FILES = ("head.keras", "logreg.joblib", "video.joblib", "distribution.joblib")
MIN_CALIBRATION_PATIENTS = 10  # fewer training patients: fit warns that the distribution check's threshold is unreliable
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
    coverage: float = 0.9  # conformal sets: share of videos whose set should hold the true score
    conformal_method: str = "lac"
    inner_folds: int = 3  # patient-level folds of the training patients, for C, calibration and sets
    # VideoDistribution (benchmarks/in_distribution.py): mean pooling flags 4.7% of held-out videos as mean+std does
    # (4.5%), every non-lung one as it does, and half as many single frames (a still image has no std).
    distribution_pooling: tuple[str, ...] = ("mean",)
    distribution_components: int = 10
    distribution_shrinkage: float = 0.1
    distribution_quantile: float = 0.95  # about 5% of new videos like the training ones are flagged

    @property
    def models(self) -> tuple[str, ...]:
        """The models this preset trains, the primary one first."""
        return PRESETS[self.preset]

    def video_model(self) -> VideoPoolingClassifier:
        ordinal = OrdinalLogisticRegression(class_weight=self.video_class_weight, random_state=self.seed)
        return VideoPoolingClassifier(estimator=ordinal, pooling=self.video_pooling, Cs=self.video_Cs,
                                      inner_folds=self.inner_folds, random_state=self.seed)

    def head(self) -> SeverityHead:
        return SeverityHead(dropout=self.dropout, learning_rate=self.learning_rate, epochs=self.epochs,
                            batch_size=self.batch_size, class_weight=self.class_weight, random_state=self.seed)

    def logistic_check(self) -> StandardisedLogisticRegression:
        return StandardisedLogisticRegression(C=self.logreg_C, max_iter=self.logreg_max_iter, random_state=self.seed)

    def distribution(self) -> VideoDistribution:
        return VideoDistribution(pooling=self.distribution_pooling, n_components=self.distribution_components,
                                 shrinkage=self.distribution_shrinkage, quantile=self.distribution_quantile,
                                 random_state=self.seed)


@dataclass
class FoldResult:
    """One backbone, one test fold: the fitted models, test predictions and metrics."""

    fold: int | str  # 1..k, or "final"
    train_patients: list[str]
    test_patients: list[str]
    n_train_frames: int
    test_frames: pd.DataFrame
    probabilities: dict[str, np.ndarray]  # model -> (n_test, 4)
    predicted: dict[str, np.ndarray]  # model -> (n_test,) scores
    seconds: dict[str, float]  # model -> fit wall time
    models: dict[str, Any]  # model -> fitted estimator, in the preset's order
    posthoc: dict[str, PostHoc] = dataclasses.field(default_factory=dict)  # model -> calibration and sets
    calibrated: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # model -> (n_test, 4)
    sets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # model -> (n_test, 4) booleans
    notes: list[str] = dataclasses.field(default_factory=list)  # models left uncalibrated, and why
    distribution: VideoDistribution | None = None  # fitted on the training videos
    test_videos: pd.DataFrame | None = None  # per test video: patient_id, video_id, distance, in_distribution

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


def video_fit_arguments(frames: pd.DataFrame) -> dict[str, np.ndarray]:
    """``videos``, ``groups`` (patients) and ``strata`` (groups) of these frames, for ``VideoPoolingClassifier.fit``."""
    return {"videos": video_keys(frames), "groups": frames["patient_id"].to_numpy(),
            "strata": frames["group"].to_numpy()}


CALIBRATION_LINKS = {"head": "softmax", "logreg": "softmax", "video": "cumulative"}
INNER_SEED_OFFSET = 1000  # the inner split's seed: seed + 1000, as VideoPoolingClassifier's C choice


@dataclass
class PostHoc:
    """One model's calibration (a temperature) and conformal sets, learned on its training patients only."""

    calibrator: TemperatureScaling
    conformal: ConformalScoreSets
    record: dict[str, Any]  # how they were made: inner folds, patients, rows

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        return self.calibrator.transform(probabilities)

    def frame_sets(self, frames: pd.DataFrame, calibrated: np.ndarray, coverage: float | None = None) -> np.ndarray:
        """``(n_frames, 4)`` booleans: each frame's row is its video's set (of the mean calibrated probabilities)."""
        keys = video_keys(frames)
        _, inverse = np.unique(keys, return_inverse=True)
        sums = np.zeros((inverse.max() + 1 if len(inverse) else 0, len(CLASSES)))
        np.add.at(sums, inverse, calibrated)
        counts = np.bincount(inverse)[:, np.newaxis]
        return self.conformal.predict_sets(sums / counts, coverage)[inverse]

    def to_records(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({**self.calibrator.to_record(), **self.record},
                {**self.conformal.to_record(), "level": "video", **self.record})

    @classmethod
    def from_records(cls, calibration: dict[str, Any], conformal: dict[str, Any]) -> PostHoc:
        return cls(TemperatureScaling.from_record(calibration), ConformalScoreSets.from_record(conformal),
                   {key: value for key, value in calibration.items() if key.startswith("inner_")})


def _fit_model(name: str, model: Any, X: np.ndarray, y: np.ndarray, frames: pd.DataFrame) -> Any:
    with warnings.catch_warnings():
        # Non-convergence is reported in metrics.json (logreg.converged), not as a stray warning.
        warnings.simplefilter("ignore", category=UserWarning)
        extra = video_fit_arguments(frames) if name == "video" else {}
        return model.fit(X, y, **extra)


def _score_model(name: str, model: Any, X: np.ndarray, frames: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (n, 4), scores (n,))`` of copy 0 of ``X``, by the model's own rule."""
    if name == "video":
        keys = video_keys(frames)
        return model.predict_proba(X, keys), model.predict(X, keys)
    probabilities = model.predict_proba(X)
    return probabilities, CLASSES[argmax_high(probabilities)]


def decision(name: str, probabilities: np.ndarray) -> np.ndarray:
    """Scores read from (calibrated) probabilities by the model's rule: the ordinal median for the video model."""
    return decide(probabilities, "median") if name in OWN_DECISION else CLASSES[argmax_high(probabilities)]


def _refit_copy(name: str, model: Any) -> Any:
    """An unfitted copy with the fitted model's settings: the video model at its chosen C, no new choice."""
    from sklearn.base import clone

    copy = clone(model)
    if name == "video" and getattr(model, "C_", None) is not None:
        copy.set_params(Cs=None, estimator__C=model.C_)
    return copy


def _per_video(frames: pd.DataFrame, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    videos, mean = video_probabilities(frames, probabilities)
    return mean, videos["score"].to_numpy().astype(int)


def fit_posthoc(name: str, model: Any, X: np.ndarray, y: np.ndarray, frames: pd.DataFrame,
                params: FitParams) -> tuple[PostHoc | None, str]:
    """Calibration and conformal sets of a fitted ``model`` from inner folds of its training frames.

    ``(None, why)`` when they cannot be made (fewer than two training patients, or an inner part
    that the model cannot be fitted on); the model is then used uncalibrated and without sets.
    """
    strata = patient_strata(frames)
    n_inner = min(params.inner_folds, len(strata))
    if n_inner < 2:
        return None, "a single training patient: no inner patient-level split to calibrate on"
    inner = make_folds(strata, n_inner, seed=INNER_SEED_OFFSET + params.seed).set_index("patient_id")["fold"]
    fold_of = frames["patient_id"].astype(str).map(inner).to_numpy()
    held_out = np.zeros((len(frames), len(CLASSES)))
    for k in range(1, n_inner + 1):
        part, rest = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
        try:
            copy = _fit_model(name, _refit_copy(name, model), X[:, rest], y[rest], frames.iloc[rest])
        except ValueError as error:  # e.g. an inner part holding one score only
            return None, f"inner fold {k} could not be fitted ({error})"
        held_out[part] = _score_model(name, copy, X[0, part], frames.iloc[part])[0]
    # The video model answers per video: calibrate on one row per video, the frame models per frame.
    rows, truth = _per_video(frames, held_out) if name == "video" else (held_out, y)
    calibrator = TemperatureScaling(link=CALIBRATION_LINKS[name]).fit(rows, truth)
    video_rows, video_truth = _per_video(frames, calibrator.transform(held_out))
    conformal = ConformalScoreSets(coverage=params.coverage, method=params.conformal_method).fit(video_rows, video_truth)
    record = {"inner_folds": n_inner, "inner_seed": INNER_SEED_OFFSET + params.seed,
              "inner_patients": _patients(frames["patient_id"]), "inner_rows": len(rows),
              "inner_videos": len(video_rows)}
    return PostHoc(calibrator, conformal, record), ""


def _fit_models(features: FeatureSet, train: np.ndarray, params: FitParams, where: str) -> tuple[
        dict[str, Any], dict[str, float], dict[str, PostHoc], list[str]]:
    frames = features.frames
    train_scores = frames["score"].to_numpy().astype(int)[train]
    if len(np.unique(train_scores)) < 2:
        raise LusfeatError(f"{where}: the training frames hold a single score ({train_scores[0]}); nothing to learn")
    X_train = features.features[:, train]
    train_frames = frames.iloc[train].reset_index(drop=True)
    makers = {"head": params.head, "logreg": params.logistic_check, "video": params.video_model}
    models, seconds, posthoc, notes = {}, {}, {}, []
    for name in params.models:
        began = time.perf_counter()
        models[name] = _fit_model(name, makers[name](), X_train, train_scores, train_frames)
        seconds[name] = time.perf_counter() - began
        fitted, why = fit_posthoc(name, models[name], X_train, train_scores, train_frames, params)
        if fitted is None:
            notes.append(f"{name}: no calibration or score sets: {why}")
        else:
            posthoc[name] = fitted
    return models, seconds, posthoc, notes


def fit_fold(features: FeatureSet, folds: pd.DataFrame, fold: int, params: FitParams) -> FoldResult:
    """Train the preset's models on every fold but ``fold`` (all cached copies); predict ``fold`` (copy 0).

    Each model's calibration and score sets are learned on the training patients only (:func:`fit_posthoc`).
    """
    train, test = split_frames(features.frames, folds, fold)
    frames = features.frames
    models, seconds, posthoc, notes = _fit_models(features, train, params, f"fold {fold}")
    test_patients = frames["patient_id"].iloc[test].astype(str)
    for fitted in posthoc.values():  # calibration rows come from training patients only: checked, not assumed
        assert_patients_disjoint(fitted.record["inner_patients"], test_patients)
    X_test = features.features[0, test]
    test_frames = frames.iloc[test].reset_index(drop=True)
    probabilities, predicted, calibrated, sets = {}, {}, {}, {}
    for name, model in models.items():
        probabilities[name], predicted[name] = _score_model(name, model, X_test, test_frames)
        if name in posthoc:
            calibrated[name] = posthoc[name].calibrate(probabilities[name])
            sets[name] = posthoc[name].frame_sets(test_frames, calibrated[name])
    distribution, test_videos = fit_distribution(features, train, params, X_test, test_frames)
    result = FoldResult(
        fold=fold,
        train_patients=_patients(frames["patient_id"].iloc[train]),
        test_patients=_patients(frames["patient_id"].iloc[test]),
        n_train_frames=len(train),
        test_frames=test_frames,
        probabilities=probabilities,
        predicted=predicted,
        seconds=seconds,
        models=models,
        posthoc=posthoc,
        calibrated=calibrated,
        sets=sets,
        notes=notes,
        distribution=distribution,
        test_videos=test_videos,
    )
    return result


def fit_final(features: FeatureSet, params: FitParams) -> FoldResult:
    """Train the preset's models on every patient of ``features`` (``lusfeat.fit --final``); nothing is held out.

    Its calibration and score sets come from the same inner patient-level folds, now of all patients.
    """
    frames = features.frames
    everything = np.arange(len(frames))
    models, seconds, posthoc, notes = _fit_models(features, everything, params, "final model")
    empty = np.zeros((0, len(CLASSES)))
    no_test = frames.iloc[:0].reset_index(drop=True)
    distribution, test_videos = fit_distribution(features, everything, params, features.features[0, :0], no_test)
    result = FoldResult(fold="final", train_patients=_patients(frames["patient_id"]), test_patients=[],
                        n_train_frames=len(frames), test_frames=no_test,
                        probabilities=dict.fromkeys(models, empty), predicted=dict.fromkeys(models, np.zeros(0, int)),
                        seconds=seconds, models=models, posthoc=posthoc, notes=notes, distribution=distribution,
                        test_videos=test_videos)
    return result


def fit_distribution(features: FeatureSet, train: np.ndarray, params: FitParams, X_test: np.ndarray,
                     test_frames: pd.DataFrame) -> tuple[VideoDistribution, pd.DataFrame]:
    """The distribution check of the training videos (copy 0), and its answer for each test video."""
    frames = features.frames.iloc[train]
    distribution = params.distribution().fit(features.features[:1, train], frames["score"].to_numpy().astype(int),
                                             **video_fit_arguments(frames))
    return distribution, distribution_table(distribution, X_test, test_frames)


def distribution_table(distribution: VideoDistribution, features: np.ndarray, frames: pd.DataFrame) -> pd.DataFrame:
    """Per video of ``frames``: ``patient_id, video_id, distance, in_distribution`` (distance <= the threshold)."""
    if len(frames) == 0:  # the final model has no test videos
        return pd.DataFrame({"patient_id": [], "video_id": [], "distance": np.zeros(0), "in_distribution": np.zeros(0, bool)})
    keys, distances = distribution.video_distances(features, video_keys(frames))
    patient, video = zip(*(split_key(key) for key in keys), strict=True) if len(keys) else ((), ())
    return pd.DataFrame({"patient_id": list(patient), "video_id": list(video), "distance": distances,
                         "in_distribution": distances <= distribution.threshold_})


def distribution_record(result: FoldResult) -> dict[str, Any]:
    """What metrics.json says of the fold's distribution check: its threshold and the held-out videos it flags."""
    distribution, videos = result.distribution, result.test_videos
    flagged = int((~videos["in_distribution"]).sum())
    return {"threshold": distribution.threshold_, "quantile": distribution.quantile,
            "components": distribution.n_components_, "train_videos": distribution.n_videos_,
            "test_videos": len(videos), "flagged": flagged, "flag_rate": flagged / len(videos) if len(videos) else None,
            "flagged_videos": [f"{p}/{v}" for p, v in videos.loc[~videos["in_distribution"], ["patient_id", "video_id"]]
                               .itertuples(index=False)]}


def make_predictions(frames: pd.DataFrame, probabilities: dict[str, np.ndarray], predicted: dict[str, np.ndarray],
                     folds: np.ndarray | int | None = None, calibrated: dict[str, np.ndarray] | None = None,
                     sets: dict[str, np.ndarray] | None = None) -> Predictions:
    """The :class:`~lusfeat.predictions.Predictions` of these frames: each model's probabilities and scores,
    and for each calibrated model its calibrated probabilities and score sets; ``folds``: fit's test fold."""
    table = frames[FRAME_COLUMNS].reset_index(drop=True).copy()
    if folds is not None:
        table["fold"] = folds
    calibrated, sets = calibrated or {}, sets or {}
    return Predictions(table, {name: ModelPredictions(probabilities[name], predicted[name], calibrated.get(name),
                                                      sets.get(name)) for name in MODELS if name in probabilities})


def evaluate_model(predictions: Predictions, model: str) -> dict[str, Any]:
    """``lusfeat.metrics.evaluate`` of one model (its own scores where it has a rule of its own)."""
    answers = predictions[model]
    return evaluate(predictions.frames, answers.probabilities, answers.scores if model in OWN_DECISION else None)


def posthoc_metrics(predictions: Predictions, model: str, target: float) -> dict[str, Any]:
    """``calibrated`` (``evaluate`` of the calibrated probabilities, scores by the model's rule) and ``sets``
    (coverage and size of the score sets per video and per region) of a calibrated model."""
    calibrated = predictions[model].calibrated
    out: dict[str, Any] = {"calibrated": evaluate(predictions.frames, calibrated, decision(model, calibrated))}
    sets: dict[str, Any] = {"target_coverage": target}
    for level, keys in (("video", VIDEO_KEYS), ("region", REGION_KEYS)):
        groups, hulls = group_sets(predictions, model, keys)
        truth = np.array([most_frequent(predictions.truth[rows]) for rows in groups["rows"]])
        sets[level] = set_metrics(truth[truth != -1], hulls[truth != -1])
    out["sets"] = sets
    return out


def compare_models(metrics: dict[str, dict[str, Any]], predictions: Predictions) -> tuple[float | None, list[str]]:
    """Agreement (Cohen's kappa) of head and regression predictions, and warnings about the head."""
    warnings_found = []
    head, logreg = metrics["head"]["accuracy"], metrics["logreg"]["accuracy"]
    if head < logreg - ACCURACY_GAP_WARNING:
        warnings_found.append(
            f"head accuracy {head:.3f} is {logreg - head:.3f} below the logistic regression's {logreg:.3f} "
            f"(more than {ACCURACY_GAP_WARNING}): the head may be undertrained (more --epochs?) or mis-set"
        )
    return agreement_kappa(predictions["head"].scores, predictions["logreg"].scores), warnings_found


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
        record[model] = {**evaluate_model(predictions, model), "fit_seconds": result.seconds[model]}
        if model in result.posthoc:
            calibration, conformal = result.posthoc[model].to_records()
            record[model]["calibration"] = calibration
            record[model].update(posthoc_metrics(predictions, model, params.coverage))
            record[model]["sets"]["threshold"] = conformal["threshold"]
    _headline_coverage(record)
    record["head"]["history"] = result.head.history_
    record["logreg"]["n_iter"] = result.logreg.n_iter_
    record["logreg"]["converged"] = result.logreg.converged_
    if "video" in result.models:
        video = result.models["video"]
        record["video"].update({"C": video.C_, "inner_video_qwk": video.inner_qwk_, "train_videos": video.n_videos_,
                                "converged": bool(video.estimator_.converged_)})
    if result.distribution is not None:
        record["in_distribution"] = distribution_record(result)
    record["agreement_kappa"], record["warnings"] = compare_models(record, predictions)
    record["warnings"].extend(result.notes)
    if result.distribution is not None and len(result.train_patients) < MIN_CALIBRATION_PATIENTS:
        record["warnings"].append(
            f"the distribution check's threshold is calibrated on only {len(result.train_patients)} training patients "
            f"(fewer than {MIN_CALIBRATION_PATIENTS}): which new videos it flags is unreliable")
    if not result.logreg.converged_:
        record["warnings"].append(f"the logistic regression stopped at max_iter={params.logreg_max_iter} before converging")
    record["params"] = {**dataclasses.asdict(params), "train_copies": features.config.copies, "eval_copy": 0}
    record["features"] = features_record(features)
    return record


def pooled_metrics(backbone: str, fold_records: list[dict[str, Any]], predictions: pd.DataFrame,
                   features: FeatureSet, params: FitParams) -> dict[str, Any]:
    """Metrics of all test folds' predictions together, with the per-fold values beside them."""
    record: dict[str, Any] = {
        "backbone": backbone,
        "fold": "pooled",
        "folds": [entry["fold"] for entry in fold_records],
        "n_test_frames": len(predictions),
        "test_patients": _patients(predictions.frames["patient_id"]),
        "models": fold_records[0]["models"],
        "primary": fold_records[0]["primary"],
    }
    for model in record["models"]:
        per_fold = [entry[model] for entry in fold_records]
        record[model] = {
            **evaluate_model(predictions, model),
            "fit_seconds": float(sum(entry["fit_seconds"] for entry in per_fold)),
            "per_fold": {key: [entry[key] for entry in per_fold]
                         for key in ("accuracy", "macro_f1", "qwk", "roc_auc_macro", "mae", "fit_seconds")},
        }
        if predictions[model].calibrated is not None:
            record[model].update(posthoc_metrics(predictions, model, params.coverage))
            record[model]["calibration"] = {"temperature_per_fold": [entry.get("calibration", {}).get("temperature")
                                                                     for entry in per_fold]}
    _headline_coverage(record)
    checked = [entry["in_distribution"] for entry in fold_records if "in_distribution" in entry]
    if checked:
        videos, flagged = sum(entry["test_videos"] for entry in checked), sum(entry["flagged"] for entry in checked)
        record["in_distribution"] = {"test_videos": videos, "flagged": flagged, "flag_rate": flagged / max(videos, 1),
                                     "per_fold": [entry["flag_rate"] for entry in checked]}
    # Only the pooled comparison's own warnings here; run_backbone adds the folds' after printing.
    record["agreement_kappa"], record["warnings"] = compare_models(record, predictions)
    record["params"] = fold_records[0]["params"]
    record["features"] = features_record(features)
    return record


def _headline_coverage(record: dict[str, Any]) -> None:
    """The primary model's video-level coverage and mean set size at the top of a metrics record."""
    sets = record.get(record["primary"], {}).get("sets")
    if sets:
        record.update({"coverage": sets["video"]["coverage"], "mean_set_size": sets["video"]["mean_set_size"],
                       "target_coverage": sets["target_coverage"], "coverage_level": "video"})


def final_metrics(backbone: str, result: FoldResult, features: FeatureSet, params: FitParams,
                  pooled: Path) -> dict[str, Any]:
    """``metrics.json`` of the final model: what it was trained on, and where its expected accuracy is."""
    record: dict[str, Any] = {
        "backbone": backbone, "fold": "final", "held_out_test": False,
        "note": (f"trained on all {len(result.train_patients)} patients: no patient is held out, so there is no test "
                 "score of this model. Its expected accuracy, calibration and set coverage are those measured on the "
                 f"held-out folds of the same settings: {pooled}/metrics.json (lusfeat.fit --fold all)."),
        "expected_performance_from": str(pooled / "metrics.json"),
        "n_train_frames": result.n_train_frames, "train_patients": result.train_patients,
        "models": list(result.models), "primary": next(iter(result.models)), "warnings": list(result.notes),
    }
    if (pooled / "metrics.json").is_file():
        earlier = json.loads((pooled / "metrics.json").read_text())
        # compared as JSON holds them (tuples read back as lists)
        same = {key: earlier.get("params", {}).get(key) == value
                for key, value in json_ready(dataclasses.asdict(params)).items()}
        record["pooled_held_out"] = {
            "params_match": all(same.values()),
            **{model: {key: earlier.get(model, {}).get(key) for key in ("accuracy", "macro_f1", "qwk")}
               for model in result.models if model in earlier},
            **{key: earlier.get(key) for key in ("coverage", "mean_set_size", "target_coverage") if key in earlier}}
    else:
        record["warnings"].append(f"{pooled}/metrics.json not found: run lusfeat.fit --fold all with the same "
                                  "settings to measure what this model can be expected to do")
    for model in result.models:
        entry: dict[str, Any] = {"fit_seconds": result.seconds[model]}
        if model in result.posthoc:
            entry["calibration"], conformal = result.posthoc[model].to_records()
            entry["sets"] = {"target_coverage": params.coverage, "threshold": conformal["threshold"]}
        record[model] = entry
    if "video" in result.models:
        video = result.models["video"]
        record["video"].update({"C": video.C_, "inner_video_qwk": video.inner_qwk_, "train_videos": video.n_videos_})
    if result.distribution is not None:
        record["in_distribution"] = distribution_record(result)  # its threshold; no held-out video to flag
    record["params"] = {**dataclasses.asdict(params), "train_copies": features.config.copies}
    record["features"] = features_record(features)
    return record


def model_record(backbone: str, result: FoldResult, features: FeatureSet, params: FitParams) -> dict[str, Any]:
    """What ``predict`` needs to rebuild the feature extractor and refuse a mismatch, and each model's
    calibration (``calibration``) and conformal sets (``conformal``, with their calibration scores)."""
    calibration, conformal = {}, {}
    for name, fitted in result.posthoc.items():
        calibration[name], conformal[name] = fitted.to_records()
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
        **({"distribution": {"threshold": result.distribution.threshold_,
                             "quantile": result.distribution.quantile, "pooling": list(result.distribution.pooling),
                             "components": result.distribution.n_components_}}
           if result.distribution is not None else {}),
        "lusfeat_version": __version__,
        "params": dataclasses.asdict(params),
        "calibration": calibration,
        "conformal": conformal,
    }


def write_fold(folder: Path, result: FoldResult, predictions: Predictions | None, metrics: dict[str, Any],
               model: dict[str, Any]) -> None:
    """Write a fold (or the final model): predictions, metrics, every estimator as data and model.json last,
    recording each estimator file's sha256 (checked by :func:`load_saved_model`)."""
    make_folder(folder)
    if predictions is None:  # the final model: nothing held out
        (folder / "predictions.csv").unlink(missing_ok=True)
    else:
        predictions.write(folder / "predictions.csv")
    write_json(metrics, folder / "metrics.json")
    files: dict[str, str] = {}
    saved = {**result.models, **({DISTRIBUTION_FILE: result.distribution} if result.distribution is not None else {})}
    for name, estimator in saved.items():
        files.update(save_estimator(estimator, folder, name))
    # an earlier fit's files (the video model a paper refit drops, a format-1 folder's pickles) must not stay
    stale = {f"{name}{suffix}" for name in (*MODEL_FILES, DISTRIBUTION_FILE) for suffix in (".json", ".npz")}
    for name in (stale | set(FORMAT_1_FILES)) - set(files):
        (folder / name).unlink(missing_ok=True)
    write_json({**model, "model_format": MODEL_FORMAT, "files": files}, folder / "model.json")


def write_pooled(folder: Path, predictions: Predictions, metrics: dict[str, Any]) -> None:
    make_folder(folder)
    predictions.write(folder / "predictions.csv")
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
    models: dict[str, Any]  # name -> fitted estimator (SeverityHead, StandardisedLogisticRegression, VideoPoolingClassifier)
    primary: str
    posthoc: dict[str, PostHoc] = dataclasses.field(default_factory=dict)  # name -> calibration and score sets
    distribution: VideoDistribution | None = None  # None in folders fitted before lusfeat had it

    @property
    def head(self) -> object:
        return self.models["head"]


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


def _load_estimator(folder: Path, name: str, files: dict[str, str], extraction: ExtractionConfig):
    model = load_estimator(folder, name, files)
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
    unknown = [name for name in names if name not in MODEL_FILES]
    if unknown or not names:
        raise LusfeatError(f"{info_path}: unknown model(s) {', '.join(unknown) or '(none listed)'}; this lusfeat "
                           f"knows {', '.join(MODEL_FILES)}")
    files = info["files"]
    models = {name: _load_estimator(folder, name, files, extraction) for name in names}
    primary = str(info.get("primary", names[0]))
    if primary not in models:
        raise LusfeatError(f"{info_path}: primary model {primary!r} is not among its models {', '.join(names)}; "
                           "refit the fold with lusfeat.fit")
    posthoc = {}
    calibration, conformal = info.get("calibration") or {}, info.get("conformal") or {}
    for name in names:
        if name in calibration and name in conformal:
            try:
                posthoc[name] = PostHoc.from_records(calibration[name], conformal[name])
            except (KeyError, TypeError, ValueError) as error:
                raise LusfeatError(f"{info_path}: the {name} model's calibration or conformal record is broken "
                                   f"({error!r}); refit with lusfeat.fit") from error
    distribution = None
    if "distribution" in info:
        distribution = _load_estimator(folder, DISTRIBUTION_FILE, files, extraction)
    return SavedModel(folder, info, extraction, models, primary, posthoc, distribution)


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


def score_features(features: np.ndarray, frames: pd.DataFrame,
                   model: SavedModel) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per model of the folder: ``(probabilities (n, 4) per model, scores (n,) per model)`` of every frame."""
    probabilities, predicted = {}, {}
    for name, estimator in model.models.items():
        probabilities[name], predicted[name] = _score_model(name, estimator, features, frames)
    return probabilities, predicted


def apply_posthoc(model: SavedModel, frames: pd.DataFrame, probabilities: dict[str, np.ndarray],
                  coverage: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(calibrated probabilities, score sets per frame)`` of each calibrated model of the folder, for
    :func:`make_predictions`; the sets at ``coverage`` (default: the one each was fitted for)."""
    calibrated, sets = {}, {}
    for name in (name for name in probabilities if name in model.posthoc):
        calibrated[name] = model.posthoc[name].calibrate(probabilities[name])
        sets[name] = model.posthoc[name].frame_sets(frames, calibrated[name], coverage)
    return calibrated, sets


