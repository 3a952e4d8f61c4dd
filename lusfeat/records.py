"""What ``lusfeat.fit`` says of a fit: the metrics records (``metrics.json``), ``model.json``'s record, the summary.

Per fold (:func:`fold_metrics`), all folds pooled (:func:`pooled_metrics`), the final model
(:func:`final_metrics`), the model record (:func:`model_record`) and ``RUN/summary.csv``
(:func:`summary_rows`, :func:`update_summary`). Every number comes from a
:class:`~lusfeat.predictions.Predictions` and :mod:`lusfeat.metrics`; every model's own numbers
from its ``fit_record()``. ``docs/formats.md`` describes the fields.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lusfeat import __version__
from lusfeat.aggregate import REGION_KEYS, VIDEO_KEYS, group_sets
from lusfeat.files import json_ready, write_csv
from lusfeat.metrics import agreement_kappa, evaluate, set_metrics
from lusfeat.models.ordinal import decide
from lusfeat.models.registry import MODELS, FitParams, own_rule, spec
from lusfeat.predictions import Predictions
from lusfeat.scores import CLASSES, most_frequent
from lusfeat.store import FeatureSet
from lusfeat.training import FoldResult, patient_order

MIN_CALIBRATION_PATIENTS = 10  # fewer training patients: fit warns that the distribution check's threshold is unreliable
SUMMARY_COLUMNS = ["backbone", "fold", "model", "accuracy", "macro_f1", "qwk", "roc_auc", "seconds"]
ACCURACY_GAP_WARNING = 0.05  # a model may trail its cross-check by this much before we warn


def distribution_record(result: FoldResult) -> dict[str, Any]:
    """What metrics.json says of the fold's distribution check: its threshold and the held-out videos it flags."""
    distribution, videos = result.distribution, result.test_videos
    flagged = int((~videos["in_distribution"]).sum())
    return {"threshold": distribution.threshold_, "quantile": distribution.quantile,
            "components": distribution.n_components_, "train_videos": distribution.n_videos_,
            "test_videos": len(videos), "flagged": flagged, "flag_rate": flagged / len(videos) if len(videos) else None,
            "flagged_videos": [f"{p}/{v}" for p, v in videos.loc[~videos["in_distribution"], ["patient_id", "video_id"]]
                               .itertuples(index=False)]}


def evaluate_model(predictions: Predictions, model: str) -> dict[str, Any]:
    """``lusfeat.metrics.evaluate`` of one model (its own scores where it has a rule of its own)."""
    answers = predictions[model]
    return evaluate(predictions.frames, answers.probabilities, answers.scores if own_rule(model) else None)


def posthoc_metrics(predictions: Predictions, model: str, target: float) -> dict[str, Any]:
    """``calibrated`` (``evaluate`` of the calibrated probabilities, scores by the model's rule) and ``sets``
    (coverage and size of the score sets per video and per region) of a calibrated model."""
    calibrated = predictions[model].calibrated
    out: dict[str, Any] = {"calibrated": evaluate(predictions.frames, calibrated, decide(calibrated, spec(model).decision))}
    sets: dict[str, Any] = {"target_coverage": target}
    for level, keys in (("video", VIDEO_KEYS), ("region", REGION_KEYS)):
        groups, hulls = group_sets(predictions, model, keys)
        truth = np.array([most_frequent(predictions.truth[rows]) for rows in groups["rows"]])
        sets[level] = set_metrics(truth[truth != -1], hulls[truth != -1])
    out["sets"] = sets
    return out


def compare_models(metrics: dict[str, dict[str, Any]], predictions: Predictions) -> tuple[float | None, list[str]]:
    """Agreement (Cohen's kappa) of a model's scores with its cross-check's (the registry's ``cross_check``: the
    head's is the logistic regression), and a warning where it trails it."""
    kappa, warnings_found = None, []
    for name in predictions.names:
        other = MODELS[name].cross_check if name in MODELS else None
        if other is None or other not in predictions.models:
            continue
        mine, theirs = metrics[name]["accuracy"], metrics[other]["accuracy"]
        if mine < theirs - ACCURACY_GAP_WARNING:
            warnings_found.append(
                f"{name} accuracy {mine:.3f} is {theirs - mine:.3f} below its cross-check {other}'s {theirs:.3f} "
                f"(more than {ACCURACY_GAP_WARNING}): the {name} model may be undertrained (more --epochs?) or mis-set")
        kappa = agreement_kappa(predictions[name].scores, predictions[other].scores)
    return kappa, warnings_found


def features_record(features: FeatureSet) -> dict[str, Any]:
    return {"path": str(features.path), **dataclasses.asdict(features.config),
            "weights_source": features.attrs.get("weights_source", "")}


def model_metrics(result: FoldResult, params: FitParams) -> tuple[dict[str, Any], list[str]]:
    """Per model of a fold: its metrics on the test frames, calibration, score sets and own fit record; and
    the warnings they raise."""
    predictions, record, warnings_found = result.predictions, {}, []
    for model, fitted in result.models.items():
        record[model] = {**evaluate_model(predictions, model), "fit_seconds": fitted.fit_seconds_}
        if fitted.calibrated:
            calibration, conformal = fitted.records()
            record[model]["calibration"] = calibration
            record[model].update(posthoc_metrics(predictions, model, params.coverage))
            record[model]["sets"]["threshold"] = conformal["threshold"]
        record[model].update(fitted.estimator_.fit_record())
        if record[model].get("converged") is False:
            warnings_found.append(f"the {model} model stopped at its max_iter before converging")
    return record, warnings_found


def fold_metrics(backbone: str, result: FoldResult, features: FeatureSet, params: FitParams) -> dict[str, Any]:
    predictions = result.predictions
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
    models, not_converged = model_metrics(result, params)
    record.update(models)
    _headline_coverage(record)
    if result.distribution is not None:
        record["in_distribution"] = distribution_record(result)
    record["agreement_kappa"], record["warnings"] = compare_models(record, predictions)
    record["warnings"].extend(result.notes)
    if result.distribution is not None and len(result.train_patients) < MIN_CALIBRATION_PATIENTS:
        record["warnings"].append(
            f"the distribution check's threshold is calibrated on only {len(result.train_patients)} training patients "
            f"(fewer than {MIN_CALIBRATION_PATIENTS}): which new videos it flags is unreliable")
    record["warnings"].extend(not_converged)
    record["params"] = {**dataclasses.asdict(params), "train_copies": features.config.copies, "eval_copy": 0}
    record["features"] = features_record(features)
    return record


def pooled_metrics(backbone: str, fold_records: list[dict[str, Any]], predictions: Predictions,
                   features: FeatureSet, params: FitParams) -> dict[str, Any]:
    """Metrics of all test folds' predictions together, with the per-fold values beside them."""
    record: dict[str, Any] = {
        "backbone": backbone,
        "fold": "pooled",
        "folds": [entry["fold"] for entry in fold_records],
        "n_test_frames": len(predictions),
        "test_patients": patient_order(predictions.frames["patient_id"]),
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
    for model, fitted in result.models.items():
        entry: dict[str, Any] = {"fit_seconds": fitted.fit_seconds_, **fitted.estimator_.fit_record()}
        if fitted.calibrated:
            entry["calibration"], conformal = fitted.records()
            entry["sets"] = {"target_coverage": params.coverage, "threshold": conformal["threshold"]}
        record[model] = entry
    if result.distribution is not None:
        record["in_distribution"] = distribution_record(result)  # its threshold; no held-out video to flag
    record["params"] = {**dataclasses.asdict(params), "train_copies": features.config.copies}
    record["features"] = features_record(features)
    return record


def model_record(backbone: str, result: FoldResult, features: FeatureSet, params: FitParams) -> dict[str, Any]:
    """What ``predict`` needs to rebuild the feature extractor and refuse a mismatch, and each model's
    calibration (``calibration``) and conformal sets (``conformal``), for a reader: loading reads the model files."""
    calibration, conformal = {}, {}
    for name, fitted in result.models.items():
        if fitted.calibrated:
            calibration[name], conformal[name] = fitted.records()
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


