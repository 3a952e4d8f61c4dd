"""Stage two's training: the registered models of a preset fitted on the training patients, scored on the rest.

:func:`fit_fold` trains every model of the preset (:data:`lusfeat.models.registry.PRESETS`) on
every fold but one (all cached copies), each with its calibration and score sets
(:class:`~lusfeat.models.calibrated.Calibrated`, learned on the training patients only), fits the
distribution check of the training videos, and scores the held-out fold (copy 0) into a
:class:`~lusfeat.predictions.Predictions`. :func:`fit_final` trains on every patient.
The public cross-validation harness: :func:`fit_fold` for the registered models (``lusfeat.fit``
runs it per fold), :func:`patient_splits` and :func:`held_out_predictions` for any estimator of
the one signature (what ``benchmarks/`` run). :func:`predict_all` is the one way a set of
fitted models scores frames, for fit, predict and explain alike.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.folds import assert_patients_disjoint, make_folds, patient_strata, split_frames
from lusfeat.index import FrameIndex, split_key
from lusfeat.models.distribution import VideoDistribution
from lusfeat.models.ordinal import decide
from lusfeat.models.registry import MODELS, FitParams, build
from lusfeat.predictions import FRAME_COLUMNS, Predictions
from lusfeat.scores import CLASSES
from lusfeat.store import ExtractionConfig, FeatureSet, read_config, read_frame_table

DEFAULT_FEATURES = "features/*.h5"


@dataclass
class FoldResult:
    """One backbone, one test fold (or ``"final"``): the fitted models, the test predictions."""

    fold: int | str  # 1..k, or "final"
    train_patients: list[str]
    test_patients: list[str]
    n_train_frames: int
    models: dict[str, Any]  # model -> fitted Calibrated estimator, in the preset's order
    predictions: Predictions  # the test frames (none for the final model)
    distribution: VideoDistribution | None = None  # fitted on the training videos
    test_videos: pd.DataFrame | None = None  # per test video: patient_id, video_id, distance, in_distribution

    @property
    def notes(self) -> list[str]:
        """The models left uncalibrated, and why."""
        return [f"{name}: no calibration or score sets: {model.note_}" for name, model in self.models.items()
                if not model.calibrated]

    @property
    def seconds(self) -> dict[str, float]:
        return {name: model.fit_seconds_ for name, model in self.models.items()}


def patient_order(values: Any) -> list[str]:
    """Patient ids, distinct, numbers in numeric order."""
    unique = sorted(set(map(str, values)))
    return sorted(unique, key=lambda p: (int(p), p) if p.isdigit() else (float("inf"), p))


def read_labelled_frames(path: Path) -> tuple[ExtractionConfig, pd.DataFrame]:
    """Config and frame table of a complete feature file whose every frame has a 0-3 score."""
    config, frames = read_frame_table(path)
    if config.source:
        raise LusfeatError(f"{path} holds {config.backbone}'s {config.source!r} maps (an experiment's), not pooled "
                           "features; pass <backbone>.h5 files to lusfeat.fit")
    unlabelled = ~np.isin(frames["score"].to_numpy(), CLASSES)
    if unlabelled.any():
        raise LusfeatError(f"{path}: {int(unlabelled.sum())} frame(s) have no 0-3 score (unlabelled rows of the "
                           "manifest); stage two trains and scores only labelled frames")
    return config, frames


def resolve_feature_paths(patterns: list[str] | None) -> list[Path]:
    """The feature files named (globs allowed), or every pooled ``features/*.h5``; one per backbone.

    The default leaves out files of an experiment's feature source (``source`` set: maps, not pooled features).
    """
    paths: list[Path] = []
    for pattern in patterns or [DEFAULT_FEATURES]:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not patterns:
            matches = [match for match in matches if not read_config(match).source]
        if not matches:
            raise LusfeatError(f"no feature files match {pattern}; make them with python -m lusfeat.extract "
                               "or name them with --features")
        paths.extend(Path(match) for match in matches)
    return list(dict.fromkeys(paths))


def fit_models(features: FeatureSet, train: np.ndarray, params: FitParams, where: str) -> dict[str, Any]:
    """The preset's models fitted (with calibration and score sets) on these frames, the primary one first."""
    frames = features.frames.iloc[train].reset_index(drop=True)
    y = frames["score"].to_numpy().astype(int)
    if len(np.unique(y)) < 2:
        raise LusfeatError(f"{where}: the training frames hold a single score ({y[0]}); nothing to learn")
    X, index = features.features[:, train], FrameIndex.of(frames)
    return {name: build(name, params).fit(X, y, index=index) for name in params.models}


def predict_all(models: dict[str, Any], X: np.ndarray, frames: pd.DataFrame, fold: int | None = None,
                coverage: float | None = None) -> Predictions:
    """Every model's answers for these frames (copy 0 of ``X``), in the column order of the registry."""
    table = frames[FRAME_COLUMNS].reset_index(drop=True).copy()
    if fold is not None:
        table["fold"] = fold
    index = FrameIndex.of(table)
    return Predictions(table, {name: models[name].answer(X, index=index, coverage=coverage)
                               for name in MODELS if name in models})


def fit_distribution(features: FeatureSet, train: np.ndarray, params: FitParams, X_test: np.ndarray,
                     test_frames: pd.DataFrame) -> tuple[VideoDistribution, pd.DataFrame]:
    """The distribution check of the training videos (copy 0), and its answer for each test video."""
    frames = features.frames.iloc[train]
    distribution = params.distribution().fit(features.features[:1, train], frames["score"].to_numpy().astype(int),
                                             index=FrameIndex.of(frames))
    return distribution, distribution_table(distribution, X_test, test_frames)


def distribution_table(distribution: VideoDistribution, features: np.ndarray, frames: pd.DataFrame) -> pd.DataFrame:
    """Per video of ``frames``: ``patient_id, video_id, distance, in_distribution`` (distance <= the threshold)."""
    if len(frames) == 0:  # the final model has no test videos
        return pd.DataFrame({"patient_id": [], "video_id": [], "distance": np.zeros(0), "in_distribution": np.zeros(0, bool)})
    keys, distances = distribution.video_distances(features, index=FrameIndex.of(frames))
    patient, video = zip(*(split_key(key) for key in keys), strict=True) if len(keys) else ((), ())
    return pd.DataFrame({"patient_id": list(patient), "video_id": list(video), "distance": distances,
                         "in_distribution": distances <= distribution.threshold_})


def fit_fold(features: FeatureSet, folds: pd.DataFrame, fold: int, params: FitParams) -> FoldResult:
    """Train the preset's models on every fold but ``fold`` (all cached copies); predict ``fold`` (copy 0)."""
    train, test = split_frames(features.frames, folds, fold)
    frames = features.frames
    models = fit_models(features, train, params, f"fold {fold}")
    test_patients = frames["patient_id"].iloc[test].astype(str)
    for model in models.values():  # calibration rows come from training patients only: checked, not assumed
        assert_patients_disjoint(model.inner_.get("inner_patients", []), test_patients)
    X_test, test_frames = features.features[0, test], frames.iloc[test].reset_index(drop=True)
    distribution, test_videos = fit_distribution(features, train, params, X_test, test_frames)
    return FoldResult(fold=fold, train_patients=patient_order(frames["patient_id"].iloc[train]),
                      test_patients=patient_order(test_patients), n_train_frames=len(train), models=models,
                      predictions=predict_all(models, X_test, test_frames, fold), distribution=distribution,
                      test_videos=test_videos)


def fit_final(features: FeatureSet, params: FitParams) -> FoldResult:
    """Train the preset's models on every patient of ``features`` (``lusfeat.fit --final``); nothing is held out."""
    frames = features.frames
    everything = np.arange(len(frames))
    models = fit_models(features, everything, params, "final model")
    no_test = frames.iloc[:0].reset_index(drop=True)
    distribution, test_videos = fit_distribution(features, everything, params, features.features[0, :0], no_test)
    return FoldResult(fold="final", train_patients=patient_order(frames["patient_id"]), test_patients=[],
                      n_train_frames=len(frames), models=models, predictions=Predictions(no_test[FRAME_COLUMNS]),
                      distribution=distribution, test_videos=test_videos)


def patient_splits(frames: pd.DataFrame, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` row positions of each outer patient-level fold: :func:`lusfeat.folds.make_folds` of the
    patients' strata with ``seed``, each split checked disjoint (what ``lusfeat.fit`` and every benchmark use)."""
    folds = make_folds(patient_strata(frames), n_folds, seed=seed)
    return [split_frames(frames, folds, fold) for fold in range(1, n_folds + 1)]


def held_out_predictions(make: Callable[[], Any], X: np.ndarray, frames: pd.DataFrame,
                         splits: list[tuple[np.ndarray, np.ndarray]],
                         decision: str = "model") -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """``(probabilities (n, 4), scores (n,), fitted models)``: each split's test frames scored (copy 0) by a fresh
    estimator of ``make()`` fitted on its training frames (``fit(X, y, *, index)``), pooled over the splits.

    ``decision``: ``"model"`` (the estimator's own ``predict``) or a rule of
    :func:`lusfeat.models.ordinal.decide` (``"argmax"``, ``"expected"``, ``"median"``) read from its probabilities.
    """
    y = frames["score"].to_numpy().astype(np.int32)
    probabilities, scores, models = np.zeros((len(frames), len(CLASSES))), np.zeros(len(frames), np.int64), []
    for train, test in splits:
        model = make().fit(X[:, train], y[train], index=FrameIndex.of(frames.iloc[train]))
        index = FrameIndex.of(frames.iloc[test])
        probabilities[test] = model.predict_proba(X[:1, test], index=index)
        scores[test] = (model.predict(X[:1, test], index=index) if decision == "model"
                        else decide(probabilities[test], decision))
        models.append(model)
    return probabilities, scores, models
