"""Partial fine-tuning on cached maps against the paper head, on the folds of benchmarks/accuracy.py.

    python -m benchmarks.finetune --maps features/xception-middle.h5 [--pooled features/xception.h5]
        [--seeds 0,1,2] [--folds 3] [--epochs 3] [--lr 0.001] [--block-lr 0.0001] [--class-weight balanced]
        [--copies N] [--probe N] [--out FILE|DIR]

``--maps`` comes from ``python -m lusfeat.experiments.finetune --backbone xception --tap middle`` (or ``block13``).
Protocol, as in benchmarks/accuracy.py: for each seed ``s``, patient-level folds
``lusfeat.folds.make_folds(patient_strata(frames), k, seed=s)``; ``TopBlockFineTuner(random_state=s)``
(lusfeat.experiments.finetune: the Xception block(s) after the tap, with ImageNet weights, + average pooling +
Dropout 0.5 + Dense 4 softmax; Adam, head 1e-3, block 1e-4, batch 32, 3 epochs, one cached copy
per frame per epoch, batch norm in inference mode) is trained on the training patients' maps and
scores the held-out patients from copy 0; the held-out predictions of all folds are pooled and
scored with ``benchmarks.accuracy.score`` (frame accuracy, macro-F1, QWK, ROC-AUC, video QWK,
global-score MAE). Hyper-parameters were fixed before any result on COVID-BLUES was seen; none is
tuned on test folds. With ``--pooled`` the paper head (``xception/paper`` of accuracy.py) runs on
the same frames and folds, as the baseline of the per-seed comparison.

``--probe N`` only times one training epoch on N maps of the first fold, and extrapolates the
cost of the full run, to decide before spending it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, format_table, machine_info, publish, save_json
from benchmarks.accuracy import METRIC_LABELS, METRICS, score, summarise, wins_over
from lusfeat.errors import LusfeatError
from lusfeat.scores import CLASSES, argmax_high


def make_model(args: argparse.Namespace, tap: str, seed: int, epochs: int | None = None):
    from lusfeat.experiments.finetune import TopBlockFineTuner

    return TopBlockFineTuner(tap=tap, weights=args.weights, epochs=epochs or args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, block_learning_rate=args.block_lr,
                             class_weight=args.class_weight, random_state=seed)


def splits_for(frames, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from lusfeat.training import patient_splits

    return patient_splits(frames, n_folds, seed)


def consistency(args: argparse.Namespace, X: np.ndarray, pooled: np.ndarray, tap: str, frames: int = 64) -> dict[str, Any]:
    """The untrained ImageNet block on the first cached maps against the pooled file: the maps are the right ones."""
    from lusfeat.experiments.finetune import pooled_top_features

    ours = pooled_top_features(make_model(args, tap, 0).build_block(), X[0, :frames], args.batch_size)
    difference = np.abs(ours - pooled[0, :frames])
    print(f"  frozen block on {frames} cached maps vs pooled features: max |diff| {difference.max():.2e}",
          file=sys.stderr, flush=True)
    return {"frames": frames, "max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean()),
            "feature_mean_abs": float(np.abs(pooled[0, :frames]).mean())}


def probe(args: argparse.Namespace, X: np.ndarray, y: np.ndarray, frames, tap: str) -> dict[str, Any]:
    """Seconds of one epoch on ``args.probe`` training maps, and the full run extrapolated from it."""
    train, test = splits_for(frames, args.folds, 0)[0]
    rows = train[:args.probe]
    model = make_model(args, tap, 0, epochs=1)
    began = time.perf_counter()
    model.fit(X[:, rows], y[rows])
    fit_seconds = time.perf_counter() - began
    began = time.perf_counter()
    model.predict_proba(X[:1, rows])
    predict_seconds = time.perf_counter() - began
    per_frame = fit_seconds / len(rows)  # includes building the block and the trace: pessimistic
    train_frames = len(frames) * (args.folds - 1) / args.folds
    fold = per_frame * train_frames * args.epochs + predict_seconds / len(rows) * len(frames) / args.folds
    return {"probe_frames": len(rows), "epoch_seconds": fit_seconds, "predict_seconds": predict_seconds,
            "train_frames_per_second": len(rows) / fit_seconds, "predict_frames_per_second": len(rows) / predict_seconds,
            "extrapolated_seconds_per_fold": fold,
            "extrapolated_total_seconds": fold * args.folds * len(args.seed_list)}


def run(args: argparse.Namespace, X: np.ndarray, y: np.ndarray, frames, tap: str, record: dict[str, Any],
        out: Path) -> dict[str, Any]:
    """Fine-tune on every fold of every seed; pooled held-out scores per seed. Saves ``record`` after each fold."""
    name = f"{record['maps']['backbone']}-{tap}/finetune" + ("+balanced" if args.class_weight else "")
    result: dict[str, Any] = {"name": name, "group": "candidate", "level": "frame", "split": "patient-level",
                              "features": [Path(args.maps).stem], "per_seed": [], "folds": []}
    record["results"].append(result)
    for seed in args.seed_list:
        probabilities = np.zeros((len(y), len(CLASSES)))
        predicted = np.zeros(len(y), np.int64)
        for fold, (train, test) in enumerate(splits_for(frames, args.folds, seed), start=1):
            began = time.perf_counter()
            model = make_model(args, tap, seed).fit(X[:, train], y[train])
            fit_seconds = time.perf_counter() - began
            began = time.perf_counter()
            probabilities[test] = model.predict_proba(X[:1, test])
            predict_seconds = time.perf_counter() - began
            predicted[test] = CLASSES[argmax_high(probabilities[test])]
            result["folds"].append({"seed": seed, "fold": fold, "train_frames": len(train), "test_frames": len(test),
                                    "fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
                                    "history": model.history_})
            print(f"  {name} seed {seed} fold {fold}: fit {fit_seconds:.0f} s, predict {predict_seconds:.0f} s, "
                  f"train loss {model.history_['loss']}", file=sys.stderr, flush=True)
            save_json(record, out, "finetune")  # a run stopped half-way keeps its finished folds
        result["per_seed"].append({"seed": seed, **score(frames, probabilities, predicted)})
        save_json(record, out, "finetune")
        print(f"  {name} seed {seed}: " + ", ".join(f"{k} {result['per_seed'][-1][k]:.3f}" for k in METRICS),
              file=sys.stderr, flush=True)
    result["summary"] = summarise(result["per_seed"])
    seconds = np.array([row["fit_seconds"] for row in result["folds"]])
    result["fit_seconds_per_fold"] = {"mean": float(seconds.mean()), "min": float(seconds.min()),
                                      "max": float(seconds.max())}
    return result


def render(record: dict[str, Any]) -> str:
    if "probe" in record:
        probe_ = record["probe"]
        return format_table(["probe frames", "1 epoch s", "train frames/s", "predict frames/s", "s/fold (extrap.)",
                             "total s (extrap.)"],
                            [[probe_["probe_frames"], probe_["epoch_seconds"], probe_["train_frames_per_second"],
                              probe_["predict_frames_per_second"], probe_["extrapolated_seconds_per_fold"],
                              probe_["extrapolated_total_seconds"]]])
    headers = ["method", *[METRIC_LABELS[m] for m in METRICS], "fit s/fold"]
    rows = []
    for result in record["results"]:
        if "summary" not in result:
            continue
        cells = [f"{result['summary'][m]['mean']:.3f} ± {result['summary'][m]['std']:.3f}" for m in METRICS]
        fit = result.get("fit_seconds_per_fold", {}).get("mean", float("nan"))
        rows.append([result["name"], *cells, fit])
    text = format_table(headers, rows)
    for result in record["results"]:
        versus = result.get("versus_paper")
        if versus:
            baseline = next(r for r in record["results"] if r["name"] == versus["baseline"])
            lines = [[row["seed"], f"{theirs['qwk']:.3f} / {mine['qwk']:.3f}",
                      f"{theirs['video_qwk']:.3f} / {mine['video_qwk']:.3f}",
                      f"{theirs['macro_f1']:.3f} / {mine['macro_f1']:.3f}",
                      "yes" if (row["qwk"] or row["video_qwk"]) and row["macro_f1"] else "no"]
                     for row, mine, theirs in zip(versus["per_seed"], result["per_seed"], baseline["per_seed"],
                                                  strict=True)]
            text += (f"\n\n{result['name']} vs {versus['baseline']} per seed (baseline / candidate); "
                     f"wins every seed: {versus['wins_every_seed']}, on all three: {versus['wins_every_seed_all_three']}\n")
            text += format_table(["seed", "frame QWK", "video QWK", "macro-F1", "beats"], lines)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", default="features/xception-middle.h5", help="tap file (default: %(default)s)")
    parser.add_argument("--pooled", default=None, help="pooled feature file of the same frames for the paper-head "
                        "baseline (default: <backbone>.h5 beside --maps, if present; 'none' to skip)")
    parser.add_argument("--weights", default="imagenet", help="weights the maps were made with (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="patient-level folds (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="head learning rate (default: %(default)s)")
    parser.add_argument("--block-lr", type=float, default=1e-4, help="block learning rate (default: %(default)s)")
    parser.add_argument("--class-weight", choices=("balanced",), default=None, help="balanced class weights")
    parser.add_argument("--copies", type=int, default=None, help="use the first N cached copies (default: all)")
    parser.add_argument("--probe", type=int, default=0, metavar="N", help="only time one epoch on N maps")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lusfeat.index import video_keys
    from lusfeat.store import load_maps

    args = build_parser().parse_args(argv)
    try:
        args.seed_list = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        maps_path = Path(args.maps)
        began = time.perf_counter()
        maps = load_maps(maps_path, copies=list(range(args.copies)) if args.copies else None)
        load_seconds = time.perf_counter() - began
        config = maps.config
        pooled = Path(args.pooled) if args.pooled not in (None, "none") else maps_path.with_name(f"{config.backbone}.h5")
        use_pooled = args.pooled != "none" and pooled.is_file()
        if args.pooled not in (None, "none") and not use_pooled:
            raise LusfeatError(f"--pooled {args.pooled}: not found")
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    frames = maps.frames.reset_index(drop=True)
    X, y = maps.maps, frames["score"].to_numpy().astype(np.int32)
    out = Path(args.out) if args.out and args.out.endswith(".json") else \
        Path(args.out or Path(__file__).resolve().parent / "results") / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record: dict[str, Any] = {
        "benchmark": "finetune",
        "commands": [command_line("finetune.py", argv)],
        "protocol": __doc__.split("\n\n", 2)[2].strip(),
        "maps": {"path": str(maps_path), "source": maps.config.source,
                 **{key: maps.attrs[key] for key in ("backbone", "weights", "input_size",
                                                                          "copies", "dtype", "precision", "frame_step",
                                                                          "manifest_sha256")},
                 "shape": list(X.shape), "gigabytes_in_memory": X.nbytes / 1e9, "load_seconds": load_seconds,
                 "file_gigabytes": maps_path.stat().st_size / 1e9},
        "data": {"frames": len(frames), "patients": int(frames["patient_id"].nunique()),
                 "videos": len(set(video_keys(frames))),
                 "score_counts": np.bincount(y, minlength=len(CLASSES)).tolist()},
        "params": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                   "block_learning_rate": args.block_lr, "dropout": 0.5, "class_weight": args.class_weight,
                   "copies_used": int(X.shape[0]), "chosen": "fixed in advance (not tuned on COVID-BLUES)"},
        "seeds": args.seed_list, "folds": args.folds, "machine": machine_info(), "results": [],
    }
    print(f"{maps_path}: {X.shape} {X.dtype} ({X.nbytes / 1e9:.2f} GB) read in {load_seconds:.0f} s",
          file=sys.stderr, flush=True)
    if args.probe:
        record["probe"] = probe(args, X, y, frames, config.source)
        publish(record, out, "finetune", render)
        return 0
    baseline = None
    if use_pooled:
        from benchmarks.accuracy import build_methods, load_data, run_method

        data = load_data(pooled.parent, [pooled.stem])
        if not (data.frames[["path", "frame_index"]].to_numpy() == frames[["path", "frame_index"]].to_numpy()).all():
            print(f"error: {pooled} does not list the same frames as {maps_path}", file=sys.stderr)
            return 1
        method = next(m for m in build_methods([pooled.stem], False) if m.name == f"{pooled.stem}/paper")
        print(f"{method.name} ...", file=sys.stderr, flush=True)
        baseline = run_method(method, data, args.seed_list, args.folds)
        record["results"].append(baseline)
        record["pooled"] = {"path": str(pooled), **data.sources[pooled.stem],
                            "check": consistency(args, X, data.blocks[pooled.stem], config.source)}
    result = run(args, X, y, frames, config.source, record, out)
    if baseline is not None:
        result["versus_paper"] = wins_over(result, baseline)
    publish(record, out, "finetune", render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
