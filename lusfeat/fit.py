"""Stage two: train the scorers on cached features, per patient-level fold.

    python -m lusfeat.fit --fold 2|all [--preset video|paper] [--features features/xception.h5 ...]
        [--folds 3] [--epochs 3] [--batch-size 32] [--lr 0.001] [--dropout 0.5] [--seed 0] [--out runs/]

Models (column prefixes of ``predictions.csv``):

- ``head``: the paper's head, Dropout(0.5) + Dense(4, softmax), Adam, on frames;
- ``logreg``: a standardised logistic regression on the same frames, the head's cross-check;
- ``video`` (preset ``video``, the default): mean, std and max of each video's frame features,
  then balanced ordinal (cumulative-link) regression per video, its C chosen by an inner
  patient-level split of the training patients; each frame carries its video's score. It beat
  the paper's head on QWK and macro-F1 on each of six seeds in ``benchmarks/accuracy.py``.

``--preset paper`` trains ``head`` and ``logreg`` only, exactly the paper's stage two; preset
``video`` adds ``video`` and makes it the primary model (what ``lusfeat.predict`` scores with).

Folds are over patients, made once per run folder (``RUN/folds.csv``) and reused, so several
feature files (one per backbone) are scored on the same split. Writes, per backbone and fold,
``RUN/<backbone>/fold<k>/{predictions.csv, metrics.json, head.keras, logreg.joblib, [video.joblib], model.json}``,
with ``--fold all`` also ``RUN/<backbone>/pooled/{predictions.csv, metrics.json}``, and
``RUN/summary.csv``; the summary table is printed on stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lusfeat import __version__
from lusfeat.errors import LusfeatError
from lusfeat.folds import load_or_make_folds, split_frames
from lusfeat.head import LABELS, LogisticCheck, SeverityHead
from lusfeat.metrics import agreement_kappa, evaluate
from lusfeat.ordinal import OrdinalLogisticRegression
from lusfeat.store import ExtractionConfig, FeatureSet, load_features, read_config, read_frame_table
from lusfeat.video_head import VideoPoolingClassifier

log = logging.getLogger("lusfeat.fit")
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

    def logistic_check(self) -> LogisticCheck:
        return LogisticCheck(C=self.logreg_C, max_iter=self.logreg_max_iter, random_state=self.seed)


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
    def logreg(self) -> LogisticCheck:
        return self.models["logreg"]


def _patients(values: Any) -> list[str]:
    unique = sorted(set(map(str, values)))
    return sorted(unique, key=lambda p: (int(p), p) if p.isdigit() else (float("inf"), p))


def read_labelled_frames(path: Path) -> tuple[ExtractionConfig, pd.DataFrame]:
    """Config and frame table of a complete feature file whose every frame has a 0-3 score."""
    config, frames = read_frame_table(path)
    if config.tap:
        raise LusfeatError(f"{path} holds {config.backbone}'s {config.tap!r} activation maps (extract --tap), not pooled "
                           "features: they are for lusfeat.finetune; pass <backbone>.h5 files to lusfeat.fit")
    unlabelled = ~np.isin(frames["score"].to_numpy(), LABELS)
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
            predicted[name] = LABELS[np.argmax(probabilities[name], axis=1)]
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
                      folds: np.ndarray | int) -> pd.DataFrame:
    """One row per test frame: its labels, each model's probabilities and prediction, and its fold."""
    table = frames[FRAME_COLUMNS].reset_index(drop=True).copy()
    for model in (name for name in MODELS if name in probabilities):
        for label in LABELS:
            table[f"{model}_p{label}"] = probabilities[model][:, label]
        table[f"{model}_pred"] = predicted[model]
    table["fold"] = folds
    return table


def evaluate_model(frames: pd.DataFrame, predictions: pd.DataFrame, model: str) -> dict[str, Any]:
    """``lusfeat.metrics.evaluate`` of one model's columns (its own scores where it has a rule of its own)."""
    probabilities = predictions[[f"{model}_p{label}" for label in LABELS]].to_numpy(float)
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
        "classes": LABELS.tolist(),
        "train_patients": result.train_patients,
        "models": list(result.models),
        "primary": next(iter(result.models)),
        "files": {name: MODEL_FILES[name] for name in result.models},
        "lusfeat_version": __version__,
        "params": dataclasses.asdict(params),
    }


def _replace_into(path: Path, write) -> None:
    # Temporary name in the same folder, then rename: readers never see half a file. The
    # temporary name keeps the suffix, which Keras insists on.
    partial = path.with_name(f".partial-{path.name}")
    write(partial)
    os.replace(partial, path)


def _json_safe(value: Any) -> Any:
    # JSON has no NaN: an undefined number (a diverged loss, say) is written as null.
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(record: dict[str, Any], path: Path) -> None:
    text = json.dumps(_json_safe(record), indent=2, allow_nan=False) + "\n"
    _replace_into(path, lambda target: target.write_text(text))


def write_csv(table: pd.DataFrame, path: Path) -> None:
    _replace_into(path, lambda target: table.to_csv(target, index=False))


def write_fold(folder: Path, result: FoldResult, predictions: pd.DataFrame, metrics: dict[str, Any],
               model: dict[str, Any]) -> None:
    import joblib

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(predictions, folder / "predictions.csv")
    write_json(metrics, folder / "metrics.json")
    _replace_into(folder / MODEL_FILES["head"], result.head.model_.save)
    _replace_into(folder / MODEL_FILES["logreg"], lambda target: joblib.dump(result.logreg.pipeline_, target))
    if "video" in result.models:
        _replace_into(folder / MODEL_FILES["video"], lambda target: joblib.dump(result.models["video"], target))
    else:
        (folder / MODEL_FILES["video"]).unlink(missing_ok=True)  # a paper refit must not leave an older video model
    write_json(model, folder / "model.json")


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


def run_backbone(features: FeatureSet, folds: pd.DataFrame, fold_numbers: list[int], pooled: bool,
                 run_dir: Path, params: FitParams) -> list[dict[str, Any]]:
    """Fit and write every asked fold of one feature file; the metrics records written."""
    backbone = features.config.backbone
    records, tables = [], []
    for fold in fold_numbers:
        result = fit_fold(features, folds, fold, params)
        predictions = predictions_table(result.test_frames, result.probabilities, result.predicted, fold)
        metrics = fold_metrics(backbone, result, predictions, features, params)
        write_fold(run_dir / backbone / f"fold{fold}", result, predictions, metrics,
                   model_record(backbone, result, features, params))
        log.info("%s fold %d: %d train frames x %d copies (%d patients), %d test frames (%d patients) | "
                 "%s", backbone, fold, result.n_train_frames, features.config.copies, len(result.train_patients),
                 len(predictions), len(result.test_patients),
                 " | ".join(f"{name} {metrics[name]['fit_seconds']:.2f} s, acc {metrics[name]['accuracy']:.3f}, "
                            f"QWK {_fmt(metrics[name]['qwk'])}" for name in result.models))
        _report_warnings(backbone, f"fold {fold}", metrics["warnings"])
        records.append(metrics)
        tables.append(predictions)
    if pooled:
        predictions = pd.concat(tables, ignore_index=True)
        metrics = pooled_metrics(backbone, records, predictions, features, params)
        folder = run_dir / backbone / "pooled"
        folder.mkdir(parents=True, exist_ok=True)
        _report_warnings(backbone, "pooled", metrics["warnings"])
        metrics["warnings"] += [f"fold {entry['fold']}: {text}" for entry in records for text in entry["warnings"]]
        write_csv(predictions, folder / "predictions.csv")
        write_json(metrics, folder / "metrics.json")
        records.append(metrics)
    return records


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _report_warnings(backbone: str, where: str, messages: list[str]) -> None:
    for message in messages:
        print(f"warning: {backbone} {where}: {message}", file=sys.stderr)


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


def parse_fold(text: str) -> str | int:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes a fold number 1..k or 'all', not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", type=parse_fold, required=True, help="test fold 1..k, or 'all' (every fold, then pooled)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=FitParams.preset,
                        help="video: adds the video-level ordinal model and scores with it (QWK 0.23 vs 0.12 for the "
                        "paper's head on COVID-BLUES, benchmarks/accuracy.py); paper: the paper's head and the "
                        "logistic-regression check only (default: %(default)s)")
    parser.add_argument("--features", nargs="+", action="extend", default=None, metavar="H5",
                        help=f"feature files, one per backbone (default: {DEFAULT_FEATURES})")
    parser.add_argument("--folds", type=int, default=FitParams.folds, help="k, patient folds (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=FitParams.epochs, help="head epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=FitParams.batch_size, help="head batch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=FitParams.learning_rate, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=FitParams.dropout, help="dropout rate (default: %(default)s)")
    parser.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                        help="head loss weights per score: none (the paper's) or balanced (the rare score 3 "
                        "counts more; benchmarks/accuracy.py: QWK 0.18 vs 0.12, global-score MAE 4.3 vs 3.7) "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=FitParams.seed, help="seeds folds and training (default: %(default)s)")
    parser.add_argument("--out", default="runs", help="run folder (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        params = FitParams(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                           dropout=args.dropout, seed=args.seed, folds=args.folds, preset=args.preset,
                           class_weight=None if args.class_weight == "none" else args.class_weight)
        if params.epochs < 1 or params.batch_size < 1 or params.learning_rate <= 0 or not 0 <= params.dropout < 1:
            raise LusfeatError("--epochs and --batch-size must be >= 1, --lr > 0 and --dropout in [0, 1)")
        if args.fold != "all" and not 1 <= args.fold <= params.folds:
            raise LusfeatError(f"--fold {args.fold}: the folds are 1..{params.folds}, or 'all'")
        # Tables first (small); each file's features are loaded only when its turn comes.
        paths = resolve_feature_paths(args.features)
        tables = [read_labelled_frames(path) for path in paths]
        backbones = [config.backbone for config, _ in tables]
        if len(set(backbones)) < len(backbones):
            twice = sorted({name for name in backbones if backbones.count(name) > 1})
            raise LusfeatError(f"several feature files of backbone {', '.join(twice)}: their results would share "
                               "RUN/<backbone>; fit them into separate --out folders")
        run_dir = Path(args.out)
        all_frames = pd.concat([frames for _, frames in tables], ignore_index=True)
        folds, reused = load_or_make_folds(run_dir, all_frames, params.folds, params.seed)
        log.info("%s %s: %d patients in %d folds", "reusing" if reused else "made", run_dir / "folds.csv",
                 len(folds), params.folds)
        fold_numbers = list(range(1, params.folds + 1)) if args.fold == "all" else [args.fold]
        import keras  # noqa: F401  (loaded here, so that the first fold's fit time is the fit's alone)

        rows = []
        for path in paths:
            features = load_features(path)
            for record in run_backbone(features, folds, fold_numbers, args.fold == "all", run_dir, params):
                rows.extend(summary_rows(record))
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    update_summary(run_dir / "summary.csv", rows)
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}", na_rep="n/a"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
