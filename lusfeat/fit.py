"""Stage two: train the scorers on cached features, per patient-level fold.

    python -m lusfeat.fit --fold 2|all [--final] [--preset video|paper] [--features features/xception.h5 ...]
        [--folds 3] [--epochs 3] [--batch-size 32] [--lr 0.001] [--dropout 0.5] [--coverage 0.9] [--seed 0] [--out runs/]

Models (column prefixes of ``predictions.csv``):

- ``head``: the paper's head, Dropout(0.5) + Dense(4, softmax), Adam, on frames;
- ``logreg``: a standardised logistic regression on the same frames, the head's cross-check;
- ``video`` (preset ``video``, the default): mean, std and max of each video's frame features,
  then balanced ordinal (cumulative-link) regression per video, its C chosen by an inner
  patient-level split of the training patients; each frame carries its video's score. It beat
  the paper's head on QWK and macro-F1 on each of six seeds in ``benchmarks/accuracy.py``.

``--preset paper`` trains ``head`` and ``logreg`` only, exactly the paper's stage two; preset
``video`` adds ``video`` and makes it the primary model (what ``lusfeat.predict`` scores with).

Every preset also fits, per fold, a distribution check of the training videos
(``lusfeat.models.distribution.VideoDistribution``, ``distribution.json``/``.npz``): ``lusfeat.predict``
tells with it which new videos are unlike anything the model was trained on. Its threshold is
calibrated on held-out training patients so that about 5% of new COVID-BLUES-like videos are
flagged; the held-out fold's flag rate goes to ``metrics.json`` (``in_distribution``).

Folds are over patients, made once per run folder (``RUN/folds.csv``) and reused, so several
feature files (one per backbone) are scored on the same split. The files of one run, and the
models already in ``RUN``, must come from one inference engine at one precision (``extract
--engine/--precision``): a mix is refused, naming the differing fields. Writes, per backbone and fold,
``RUN/<backbone>/fold<k>/{predictions.csv, metrics.json, model.json}`` and the models saved as data
(``head``, ``logreg``, [``video``], ``distribution``: ``.json`` + ``.npz`` each, ``docs/formats.md``),
with ``--fold all`` also ``RUN/<backbone>/pooled/{predictions.csv, metrics.json}``, and
``RUN/summary.csv``; the summary table is printed on stdout, progress goes to stderr.

Every model is also calibrated (one temperature) and given conformal score sets per video
(``--coverage``, default 0.9), both learned on inner patient-level folds of its training patients
only; ``predictions.csv`` adds ``<model>_cal_p0..p3`` and ``<model>_set``, ``metrics.json`` the
Brier score, ECE, coverage and set size before/after (``docs/uncertainty.md``).

``--final`` trains every model of the preset on **all** patients (the video model's C chosen by
the same inner patient-level split) into ``RUN/<backbone>/final``, the model to score new patients
with (``lusfeat.predict --model RUN/<backbone>/final``). It has no held-out test: its
``metrics.json`` says so and points at ``RUN/<backbone>/pooled``, the folds' results, for what to
expect of it. ``--final`` alone fits only the final model; with ``--fold all`` the folds come first.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from lusfeat.cli import add_verbose_argument, start
from lusfeat.errors import LusfeatError
from lusfeat.folds import load_or_make_folds
from lusfeat.models.registry import PRESETS, FitParams
from lusfeat.predictions import Predictions
from lusfeat.records import (
    SUMMARY_COLUMNS,
    final_metrics,
    fold_metrics,
    model_record,
    pooled_metrics,
    summary_rows,
    update_summary,
)
from lusfeat.runfolder import check_one_engine, earlier_extractions, write_fold, write_pooled
from lusfeat.store import FeatureSet, load_features
from lusfeat.training import DEFAULT_FEATURES, fit_final, fit_fold, read_labelled_frames, resolve_feature_paths

log = logging.getLogger("lusfeat.fit")


def run_backbone(features: FeatureSet, folds: pd.DataFrame, fold_numbers: list[int], pooled: bool,
                 run_dir: Path, params: FitParams) -> list[dict[str, Any]]:
    """Fit and write every asked fold of one feature file; the metrics records written."""
    backbone = features.config.backbone
    records, tables = [], []
    for fold in fold_numbers:
        result = fit_fold(features, folds, fold, params)
        predictions = result.predictions
        metrics = fold_metrics(backbone, result, features, params)
        write_fold(run_dir / backbone / f"fold{fold}", result, metrics, model_record(backbone, result, features, params))
        log.info("%s fold %d: %d train frames x %d copies (%d patients), %d test frames (%d patients) | "
                 "%s", backbone, fold, result.n_train_frames, features.config.copies, len(result.train_patients),
                 len(predictions), len(result.test_patients),
                 " | ".join(f"{name} {metrics[name]['fit_seconds']:.2f} s, acc {metrics[name]['accuracy']:.3f}, "
                            f"QWK {_fmt(metrics[name]['qwk'])}" for name in result.models))
        if "in_distribution" in metrics:
            check = metrics["in_distribution"]
            log.info("%s fold %d: distribution check, threshold %.2f: %d of %d held-out videos flagged as unlike the "
                     "training videos (%.1f%%)", backbone, fold, check["threshold"], check["flagged"],
                     check["test_videos"], 100 * check["flag_rate"])
        _report_warnings(backbone, f"fold {fold}", metrics["warnings"])
        records.append(metrics)
        tables.append(predictions)
    if pooled:
        predictions = Predictions.concat(tables)
        metrics = pooled_metrics(backbone, records, predictions, features, params)
        _report_warnings(backbone, "pooled", metrics["warnings"])
        metrics["warnings"] += [f"fold {entry['fold']}: {text}" for entry in records for text in entry["warnings"]]
        write_pooled(run_dir / backbone / "pooled", predictions, metrics)
        records.append(metrics)
    return records


def run_final(features: FeatureSet, run_dir: Path, params: FitParams) -> dict[str, Any]:
    """Fit every model on all patients into ``RUN/<backbone>/final``; its metrics record (no test score)."""
    backbone = features.config.backbone
    result = fit_final(features, params)
    folder = run_dir / backbone / "final"
    metrics = final_metrics(backbone, result, features, params, run_dir / backbone / "pooled")
    write_fold(folder, result, metrics, model_record(backbone, result, features, params))
    log.info("%s final: %d frames x %d copies of %d patients | %s", backbone, result.n_train_frames,
             features.config.copies, len(result.train_patients),
             " | ".join(f"{name} {metrics[name]['fit_seconds']:.2f} s" for name in result.models))
    _report_warnings(backbone, "final", metrics["warnings"])
    print(f"{backbone}: final model in {folder} (all {len(result.train_patients)} patients; no held-out test: "
          f"expect what {run_dir / backbone / 'pooled' / 'metrics.json'} measured)")
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _report_warnings(backbone: str, where: str, messages: list[str]) -> None:
    for message in messages:
        print(f"warning: {backbone} {where}: {message}", file=sys.stderr)


def parse_fold(text: str) -> str | int:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes a fold number 1..k or 'all', not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", type=parse_fold, default=None,
                        help="test fold 1..k, or 'all' (every fold, then pooled); needed unless --final")
    parser.add_argument("--final", action="store_true",
                        help="also (or, without --fold, only) train every model on all patients into "
                        "RUN/<backbone>/final: the model to score new patients with; no held-out test")
    parser.add_argument("--coverage", type=float, default=FitParams.coverage,
                        help="conformal score sets per video hold the true score this often (default: %(default)s)")
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
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start(args.verbose)
    try:
        params = FitParams(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                           dropout=args.dropout, seed=args.seed, folds=args.folds, preset=args.preset,
                           class_weight=None if args.class_weight == "none" else args.class_weight,
                           coverage=args.coverage)
        if args.fold is None and not args.final:
            raise LusfeatError("give --fold K|all (patient folds with a held-out test), --final (one model on all "
                               "patients, for new patients), or both")
        if not 0.5 <= params.coverage < 1:
            raise LusfeatError(f"--coverage {params.coverage}: give the share of videos whose set should hold the "
                               "true score, at least 0.5 and below 1 (e.g. 0.9)")
        if params.epochs < 1 or params.batch_size < 1 or params.learning_rate <= 0 or not 0 <= params.dropout < 1:
            raise LusfeatError("--epochs and --batch-size must be >= 1, --lr > 0 and --dropout in [0, 1)")
        if args.fold not in ("all", None) and not 1 <= args.fold <= params.folds:
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
        fold_numbers = [] if args.fold is None else list(range(1, params.folds + 1)) if args.fold == "all" else [args.fold]
        replaced = {(name, f"fold{fold}") for name in backbones for fold in fold_numbers}
        replaced |= {(name, "final") for name in backbones} if args.final else set()
        check_one_engine([(path, config) for path, (config, _) in zip(paths, tables, strict=True)]
                         + earlier_extractions(run_dir, replaced))
        if args.fold is not None:
            all_frames = pd.concat([frames for _, frames in tables], ignore_index=True)
            folds, reused = load_or_make_folds(run_dir, all_frames, params.folds, params.seed)
            log.info("%s %s: %d patients in %d folds", "reusing" if reused else "made", run_dir / "folds.csv",
                     len(folds), params.folds)
        import keras  # noqa: F401  (loaded here, so that the first fold's fit time is the fit's alone)

        rows = []
        for path in paths:
            features = load_features(path)
            if fold_numbers:
                for record in run_backbone(features, folds, fold_numbers, args.fold == "all", run_dir, params):
                    rows.extend(summary_rows(record))
            if args.final:
                run_final(features, run_dir, params)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not rows:
        return 0
    try:
        update_summary(run_dir / "summary.csv", rows)
    except LusfeatError as error:  # a full disk, say: the fold folders are written, the summary is not
        print(f"error: {error}", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}", na_rep="n/a"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
