"""Training time per fold: the paper's end-to-end Keras training against lusfeat's two stages.

    python -m benchmarks.training_time [--backbone xception,vgg16,mobilenet] [--patients 9]
        [--frame-step 30] [--folds 3] [--epochs 3] [--out FILE|DIR]

On the same COVID-BLUES frames (``--patients``, ``--frame-step``) and the same patient-level folds,
both timed warm (one discarded stage-two fit first: the process' one-time TensorFlow start-up):

(a) **paper**: per fold, one Keras model = frozen backbone (``training=False``, its own
    preprocessing) + Dropout(0.5) + Dense(4, softmax), trained with Adam 0.001, batch 32,
    ``--epochs`` epochs, on-the-fly augmentation: every training image, every epoch, is a fresh
    ``lusfeat.augment.augment_frame`` copy (same rotation / shift / zoom / flip ranges as stage
    one) served by a ``keras.utils.PyDataset``. Frames are decoded and resized once, up front
    (not charged to any fold; it is in the end-to-end time).
(b) **lusfeat**: stage one (``lusfeat.extract.extract_backbone``: decode, 1 + A copies, network,
    HDF5; ``--engine`` / ``--precision``, by default what ``lusfeat.extract`` chooses on this CPU)
    once, timed on its own and amortised over the folds; stage two per fold:
    ``SeverityHead.fit`` on the cached copies + ``predict_proba`` on the held-out frames.

Per fold time = model build + training + prediction of the held-out frames, for both. Accuracy
and macro-F1 are over frames, pooled over the held-out folds. The stage-two head is also fitted
with ``--head-seeds`` seeds to show its seed-to-seed spread (the noise against which the a-b
difference is judged). Optionally, stage two is timed at full COVID-BLUES size on synthetic
features and on real feature files (``--real-cache``).

On a 2-core CPU the paper's method on all 63 patients costs about a quarter of an hour per fold
(Xception, frame step 10), so two options keep a measured run within reach; both are recorded and
printed: ``--features H5`` takes stage one from a feature file ``lusfeat.extract`` already wrote
for exactly these frames (checked: same frames, frame step, seed, copies, backbone; stage one is
then not timed here), and ``--paper-folds K`` trains the paper's method on the first K folds only,
comparing time and accuracy with stage two on those same K folds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._common import (
    command_line,
    format_table,
    machine_info,
    patient_folds,
    publish,
    select_patients,
)
from lusfeat.engines import ALL_PRECISIONS, ENGINES
from lusfeat.errors import LusfeatError
from lusfeat.scores import CLASSES

REPO = Path(__file__).resolve().parents[1]
FULL_FRAMES = 31_746  # COVID-BLUES, every frame


def frame_scores(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Frame accuracy and macro-F1 of held-out probabilities, by ``lusfeat.metrics`` (argmax, ties to the higher)."""
    from lusfeat.metrics import classification_metrics

    metrics = classification_metrics(y_true, probabilities)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


# ---------------------------------------------------------------------------------------------
# (a) the paper's method: the frozen backbone inside every epoch


def augmented_dataset(images: np.ndarray, labels: np.ndarray, keys: np.ndarray, batch_size: int, seed: int):
    """A ``keras.utils.PyDataset`` serving shuffled batches, each image a fresh augmented copy per epoch."""
    import keras

    from lusfeat.augment import AugmentParams, augment_frame

    class AugmentedFrames(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(images))
            self.params = AugmentParams()

        def __len__(self) -> int:
            return math.ceil(len(images) / batch_size)

        def __getitem__(self, index: int):
            chosen = self.order[index * batch_size:(index + 1) * batch_size]
            # Copy numbers above any cached copy and new each epoch: a fresh random transform
            # every time, as ImageDataGenerator does; the seed differs from stage one's.
            batch = np.stack([augment_frame(images[i], int(keys[i]), 1000 + self.epoch, seed + 1, self.params)
                              for i in chosen])
            return batch, labels[chosen]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self.rng.permutation(len(images))

    return AugmentedFrames()


def paper_model(spec, source, learning_rate: float, dropout: float):
    """Frozen backbone (uint8 in, own preprocessing, ``training=False``) + Dropout + Dense(4, softmax)."""
    import keras

    from lusfeat.backbones import build_feature_extractor

    extractor = build_feature_extractor(spec, source)
    extractor.trainable = False
    inputs = keras.Input(extractor.input_shape[1:], dtype="uint8")
    x = extractor(inputs, training=False)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs, name=f"paper_{spec.name}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def run_paper_fold(spec, source, images: np.ndarray, labels: np.ndarray, keys: np.ndarray, train: np.ndarray,
                   test: np.ndarray, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    began = time.perf_counter()
    model = paper_model(spec, source, args.learning_rate, args.dropout)
    built = time.perf_counter()
    dataset = augmented_dataset(images[train], labels[train], keys[train], args.batch_size, seed)
    epoch_seconds: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epoch_seconds.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: epoch_seconds.__setitem__(-1, epoch_seconds[-1] + time.perf_counter()))
    model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[clock])
    trained = time.perf_counter()
    proba = model.predict(images[test], batch_size=args.batch_size, verbose=0)
    done = time.perf_counter()
    return {"seconds": done - began, "build_seconds": built - began, "train_seconds": trained - built,
            "predict_seconds": done - trained, "epoch_seconds": epoch_seconds, "n_train": int(train.sum()),
            "n_test": int(test.sum()), "probabilities": proba}


# ---------------------------------------------------------------------------------------------
# (b) lusfeat: stage one once, stage two per fold


def severity_head(args: argparse.Namespace, seed: int):
    from lusfeat.models.head import SeverityHead

    return SeverityHead(dropout=args.dropout, learning_rate=args.learning_rate, epochs=args.epochs,
                        batch_size=args.batch_size, random_state=seed)


def run_head_fold(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                  args: argparse.Namespace, seed: int, with_logistic: bool = False) -> dict[str, Any]:
    """Stage two on one fold: fit on every cached copy of the training frames, predict copy 0 of the test frames."""
    began = time.perf_counter()
    head = severity_head(args, seed).fit(features[:, train], labels[train])
    trained = time.perf_counter()
    proba = head.predict_proba(features[0, test])
    done = time.perf_counter()
    record = {"seconds": done - began, "train_seconds": trained - began, "predict_seconds": done - trained,
              "probabilities": proba}
    if with_logistic:
        record.update(logistic_fold(features, labels, train, test, seed))
    return record


def logistic_fold(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                  seed: int) -> dict[str, Any]:
    """lusfeat.fit's cross-check (StandardisedLogisticRegression) on the same fold: its seconds and probabilities."""
    import warnings

    from lusfeat.models.linear import StandardisedLogisticRegression

    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        check = StandardisedLogisticRegression(random_state=seed).fit(features[:, train], labels[train])
    proba = check.predict_proba(features[0, test])
    return {"logistic_seconds": time.perf_counter() - began, "logistic_probabilities": proba}


def extract_features(frames: pd.DataFrame, spec, source, args: argparse.Namespace, manifest_sha256: str,
                     out: Path) -> tuple[np.ndarray, float, float]:
    """Stage one on ``frames`` into ``out``: features ``(copies, n, dim)``, wall seconds, seconds after the build."""
    from lusfeat.augment import AugmentParams
    from lusfeat.embed import extract_backbone, make_config
    from lusfeat.store import load_features

    config = make_config(spec, source, input_size=None, dtype="float32", augment_copies=args.augment_copies,
                         params=AugmentParams(), seed=args.seed, frame_step=args.frame_step,
                         manifest_sha256=manifest_sha256, engine=args.engine, precision=args.precision, frames=frames)
    began = time.perf_counter()
    summary = extract_backbone(frames, spec, source, config, out, batch_size=args.batch_size, overwrite=True,
                               progress=False)
    seconds = time.perf_counter() - began
    return load_features(out).features, seconds, summary.seconds


def stage_one_engine(args: argparse.Namespace, names: list[str]) -> tuple[str, str, str]:
    """``(engine, precision, why)`` of stage one: those ``--features`` was made with, else what ``lusfeat.extract``
    chooses (``--engine`` / ``--precision``, ``$LUSFEAT_ENGINE``, the default for this CPU and backbones)."""
    from lusfeat.engine_choice import choose_engine
    from lusfeat.engines import check_engine
    from lusfeat.store import read_config

    if args.features:
        config = read_config(args.features)
        asked = (args.engine or config.engine, args.precision or config.precision)
        if asked != (config.engine, config.precision):
            raise LusfeatError(f"--features {args.features} was made with {config.engine} {config.precision}, not "
                               f"{' '.join(asked)}: drop --engine/--precision, or drop --features to extract here")
        return config.engine, config.precision, f"as {args.features} was made (not timed here)"
    engine, precision, why = choose_engine(args.engine, args.precision, names)
    check_engine(engine, precision)
    return engine, precision, why


def reuse_features(path: str, frames: pd.DataFrame, spec, args: argparse.Namespace) -> np.ndarray:
    """Stage one's features ``(copies, n, dim)`` from an existing file, refused unless it holds exactly ``frames``."""
    from lusfeat.store import load_features

    feature_set = load_features(path)
    config = feature_set.config
    wanted = {"backbone": spec.name, "frame_step": args.frame_step, "seed": args.seed, "copies": args.augment_copies + 1}
    differ = [f"{key}: {getattr(config, key)!r} in the file, {value!r} here" for key, value in wanted.items()
              if getattr(config, key) != value]
    held = feature_set.frames[["path", "frame_index"]].astype(str).to_numpy()
    asked = frames[["path", "frame_index"]].astype(str).to_numpy()
    if held.shape != asked.shape or (held != asked).any():
        differ.append(f"frames: the file holds {len(held)}, this run plans {len(asked)} (or other ones)")
    if differ:
        raise LusfeatError(f"--features {path} is not stage one of this run ({'; '.join(differ)}); "
                           "drop --features to extract here")
    return feature_set.features


def decode_frames(frames: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """All frames decoded and resized once, ``(n, size, size, 3)`` uint8, their augmentation keys, seconds."""
    from lusfeat.augment import AugmentParams, frame_key
    from lusfeat.embed import iter_images

    began = time.perf_counter()
    images = np.concatenate(list(iter_images(frames, size, 1, 0, AugmentParams())))
    keys = np.array([frame_key(path, index) for path, index in zip(frames["path"], frames["frame_index"], strict=True)],
                    np.int64)
    return images, keys, time.perf_counter() - began


# ---------------------------------------------------------------------------------------------
# stage two at full size


def time_head_at_size(features: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Stage-two fit (and predict of a third as many frames) on ``features (copies, n, dim)``."""
    n_test = max(1, features.shape[1] // 2)
    began = time.perf_counter()
    head = severity_head(args, args.seed).fit(features, labels)
    trained = time.perf_counter()
    head.predict_proba(features[0, :n_test])
    done = time.perf_counter()
    return {"copies": features.shape[0], "n_train": features.shape[1], "dim": features.shape[2],
            "fit_seconds": trained - began, "predict_seconds": done - trained, "n_predict": n_test}


def synthetic_full_size(n_train: int, dim: int, copies: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Stage two on random features of the full-size shape (timing only; the values do not matter)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n_train)
    centres = rng.normal(size=(len(CLASSES), dim)).astype(np.float32)
    features = rng.random((copies, n_train, dim), dtype=np.float32) + 0.1 * centres[labels]
    runs = [time_head_at_size(features, labels, args) for _ in range(max(1, args.synthetic_repeats))]
    fits = [run["fit_seconds"] for run in runs]
    return {"source": "synthetic", **runs[0], "fit_seconds": float(np.median(fits)), "fit_seconds_runs": fits,
            "predict_seconds": float(np.median([run["predict_seconds"] for run in runs]))}


def video_model_seconds(features: np.ndarray, frames: pd.DataFrame, train: np.ndarray, seed: int) -> float:
    """Seconds of ``lusfeat.fit``'s default video model fit (with its inner choice of C) on one fold.

    Its cost follows the number of videos (a row per video and copy), not of frames: pooling is
    a linear pass, so the time on a frame-stepped cache stands for the full-size one too.
    """
    from lusfeat.index import FrameIndex
    from lusfeat.models.registry import FitParams

    rows = frames.iloc[np.flatnonzero(train)]
    began = time.perf_counter()
    FitParams(seed=seed).video_model().fit(features[:, train], rows["score"].to_numpy(), index=FrameIndex.of(rows))
    return time.perf_counter() - began


def real_cache_folds(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Stage two per fold on an existing feature file, at its size and tiled to the full-size frame count."""
    from lusfeat.store import load_features

    feature_set = load_features(path)
    frames = feature_set.frames
    folds = patient_folds(frames, args.folds, args.seed)
    labels = frames["score"].to_numpy(np.int64)
    per_fold = []
    for fold in range(args.folds):
        train = folds != fold
        item = time_head_at_size(feature_set.features[:, train], labels[train], args)
        item["logistic_seconds"] = logistic_fold(feature_set.features, labels, train, folds == fold,
                                                 args.seed)["logistic_seconds"]
        item["video_seconds"] = video_model_seconds(feature_set.features, frames, train, args.seed)
        per_fold.append(item)
    fold_train = feature_set.features[:, folds != 0]
    target = args.real_cache_full_frames or round(FULL_FRAMES * (args.folds - 1) / args.folds)
    repeats = math.ceil(target / fold_train.shape[1])
    tiled = np.tile(fold_train, (1, repeats, 1))[:, :target]
    tiled_labels = np.tile(labels[folds != 0], repeats)[:target]
    return {"path": str(path), "backbone": feature_set.config.backbone, "frames": len(frames),
            "frame_step": feature_set.config.frame_step, "per_fold": per_fold,
            "tiled_to_full_size": {"source": f"{path}, fold-0 training frames tiled x{repeats}",
                                   **time_head_at_size(tiled, tiled_labels, args)}}


# ---------------------------------------------------------------------------------------------


def run_backbone(name: str, frames: pd.DataFrame, folds: np.ndarray, args: argparse.Namespace,
                 manifest_sha256: str, work: Path) -> dict[str, Any]:
    from lusfeat.backbones import get_spec, resolve_weights

    spec = get_spec(name)
    source = resolve_weights(spec, args.weights)
    labels = frames["score"].to_numpy(np.int64)
    n_folds = int(folds.max()) + 1

    if args.features:
        print(f"[{name}] stage one: reusing {args.features} (not timed here)", file=sys.stderr)
        features, extract_seconds, extract_loop_seconds = reuse_features(args.features, frames, spec, args), None, None
    else:
        print(f"[{name}] stage one: extracting {len(frames)} frames x {args.augment_copies + 1} copies", file=sys.stderr)
        features, extract_seconds, extract_loop_seconds = extract_features(frames, spec, source, args, manifest_sha256,
                                                                           work / f"{name}.h5")
        print(f"[{name}] stage one took {extract_seconds:.1f} s; stage two per fold", file=sys.stderr)
    held_out = (len(frames), len(CLASSES))
    # Both methods are timed warm: the process' first Keras fit pays TensorFlow's one-time start-up
    # (about 8 s against 0.5 s per fold here), which the paper's folds, run after these, never see.
    began = time.perf_counter()
    run_head_fold(features, labels, folds != 0, folds == 0, args, args.seed)
    warmup_seconds = time.perf_counter() - began
    lusfeat_folds, lusfeat_proba, logistic_proba = [], np.zeros(held_out), np.zeros(held_out)
    for fold in range(n_folds):
        result = run_head_fold(features, labels, folds != fold, folds == fold, args, args.seed + fold, True)
        lusfeat_proba[folds == fold] = result.pop("probabilities")
        logistic_proba[folds == fold] = result.pop("logistic_probabilities")
        lusfeat_folds.append(result)
    seed_scores = []
    for extra in range(args.head_seeds):
        probabilities = np.zeros(held_out)
        for fold in range(n_folds):
            result = run_head_fold(features, labels, folds != fold, folds == fold, args, 1000 * (extra + 1) + fold)
            probabilities[folds == fold] = result["probabilities"]
        seed_scores.append(frame_scores(labels, probabilities))

    print(f"[{name}] paper method: decoding {len(frames)} frames at {spec.input_size} px", file=sys.stderr)
    images, keys, decode_seconds = decode_frames(frames, spec.input_size)
    paper_folds, paper_proba = [], np.zeros(held_out)
    compared = list(range(min(args.paper_folds or n_folds, n_folds)))  # the folds both methods are compared on
    for fold in compared:
        print(f"[{name}] paper method: fold {fold + 1}/{n_folds}", file=sys.stderr)
        result = run_paper_fold(spec, source, images, labels, keys, folds != fold, folds == fold, args,
                                args.seed + fold)
        paper_proba[folds == fold] = result.pop("probabilities")
        paper_folds.append(result)
        print(f"[{name}]   {result['seconds']:.1f} s", file=sys.stderr)

    same = [lusfeat_folds[fold] for fold in compared]
    on_compared = np.isin(folds, compared)
    every_fold = len(compared) == n_folds
    paper_fold_seconds = float(np.mean([r["seconds"] for r in paper_folds]))
    lusfeat_fold_seconds = float(np.mean([r["seconds"] for r in same]))
    paper_scores = frame_scores(labels[on_compared], paper_proba[on_compared])
    lusfeat_scores = frame_scores(labels[on_compared], lusfeat_proba[on_compared])
    lusfeat_all_folds = frame_scores(labels, lusfeat_proba)
    seed_accuracy = [s["accuracy"] for s in seed_scores] + [lusfeat_all_folds["accuracy"]]
    seed_f1 = [s["macro_f1"] for s in seed_scores] + [lusfeat_all_folds["macro_f1"]]
    n_train_mean = float(np.mean([r["n_train"] for r in paper_folds]))
    n_test_mean = float(np.mean([r["n_test"] for r in paper_folds]))
    # Steady-state rate from epochs after the first (the first also traces the training step);
    # the first epoch's extra cost and the model build are fixed costs, added once per fold.
    steady = [r["epoch_seconds"][1:] or r["epoch_seconds"] for r in paper_folds]
    paper_train_rate = float(np.mean([np.mean(s) / r["n_train"] for s, r in zip(steady, paper_folds, strict=True)]))
    paper_fixed = float(np.mean([r["build_seconds"] + r["epoch_seconds"][0] - np.mean(s)
                                 for s, r in zip(steady, paper_folds, strict=True)]))
    paper_predict_rate = float(np.mean([r["predict_seconds"] / r["n_test"] for r in paper_folds]))
    full_train, full_test = FULL_FRAMES * (n_folds - 1) / n_folds, FULL_FRAMES / n_folds
    timed_extraction = extract_seconds is not None
    paper_end_to_end = decode_seconds + sum(r["seconds"] for r in paper_folds) if every_fold else None
    lusfeat_end_to_end = extract_seconds + sum(r["seconds"] for r in lusfeat_folds) if timed_extraction else None
    return {
        "input_size": spec.input_size, "feature_dim": spec.feature_dim, "weights": source.identity,
        "frames": len(frames), "copies": args.augment_copies + 1,
        "n_train_mean": n_train_mean, "n_test_mean": n_test_mean,
        "compared_folds": [fold + 1 for fold in compared], "compared_frames": int(on_compared.sum()),
        "stage_one": f"reused {args.features} (not timed)" if args.features else "extracted and timed in this run",
        "paper": {"per_fold": paper_folds, "fold_seconds_mean": paper_fold_seconds, "decode_seconds": decode_seconds,
                  "end_to_end_seconds": paper_end_to_end, **paper_scores},
        "lusfeat": {"per_fold": lusfeat_folds, "fold_seconds_mean": lusfeat_fold_seconds,
                    "extract_seconds": extract_seconds,
                    "extract_seconds_after_model_build": extract_loop_seconds,
                    "fold_seconds_with_amortised_extraction": lusfeat_fold_seconds + extract_seconds / n_folds
                    if timed_extraction else None,
                    "end_to_end_seconds": lusfeat_end_to_end, "all_folds": lusfeat_all_folds,
                    "warmup_seconds": warmup_seconds,
                    "seed_spread": {"seeds": args.head_seeds + 1, "accuracy_mean": float(np.mean(seed_accuracy)),
                                    "accuracy_sd": float(np.std(seed_accuracy, ddof=1)) if len(seed_accuracy) > 1 else None,
                                    "macro_f1_mean": float(np.mean(seed_f1)),
                                    "macro_f1_sd": float(np.std(seed_f1, ddof=1)) if len(seed_f1) > 1 else None},
                    "logistic_check": {"fold_seconds_mean": float(np.mean([r["logistic_seconds"] for r in lusfeat_folds])),
                                       **frame_scores(labels, logistic_proba)},
                    **lusfeat_scores},
        "ratio_per_fold": [a["seconds"] / b["seconds"] for a, b in zip(paper_folds, same, strict=True)],
        "ratio_fold_mean": paper_fold_seconds / lusfeat_fold_seconds,
        "ratio_fold_mean_with_amortised_extraction": paper_fold_seconds / (lusfeat_fold_seconds + extract_seconds / n_folds)
        if timed_extraction else None,
        "ratio_end_to_end": paper_end_to_end / lusfeat_end_to_end if paper_end_to_end and lusfeat_end_to_end else None,
        "accuracy_difference_a_minus_b": paper_scores["accuracy"] - lusfeat_scores["accuracy"],
        "macro_f1_difference_a_minus_b": paper_scores["macro_f1"] - lusfeat_scores["macro_f1"],
        "extrapolation_full_covid_blues": {
            "note": "EXTRAPOLATION, not measured: linear in frames from this run's per-frame rates, "
                    f"{FULL_FRAMES} frames (frame step 1), {n_folds} folds",
            "paper_train_seconds_per_frame_epoch": paper_train_rate,
            "paper_fold_seconds": paper_fixed + paper_train_rate * full_train * args.epochs
            + paper_predict_rate * full_test,
            "extract_seconds": (extract_seconds - extract_loop_seconds) + extract_loop_seconds / len(frames) * FULL_FRAMES
            if timed_extraction else None,
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=str(REPO / "data_manifest.csv"), help="manifest CSV")
    parser.add_argument("--data-root", default=None, help="folder holding COVID-BLUES/ (default: $LUSFEAT_DATA_ROOT)")
    parser.add_argument("--backbone", default="xception,vgg16,mobilenet", help="comma-separated (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="as lusfeat.extract --weights (default: %(default)s)")
    parser.add_argument("--patients", default="9", help="a count K (seeded, alternating covid / negative), "
                        "comma-separated ids, or all (default: %(default)s)")
    parser.add_argument("--frame-step", type=int, default=30, help="every K-th frame of each video (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="patient-level folds (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs, both methods (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch, both methods (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=0.5, help="head dropout (default: %(default)s)")
    parser.add_argument("--augment-copies", type=int, default=2, help="stage-one augmented copies (default: %(default)s)")
    parser.add_argument("--head-seeds", type=int, default=4, help="extra stage-two seeds for its spread (default: %(default)s)")
    parser.add_argument("--synthetic-train-frames", type=int, default=0, metavar="N",
                        help="also time stage two on random features of N training frames x 3 copies, 2048-dim and "
                        "each backbone's dim (full COVID-BLUES, 3 folds: 21164); 0 skips (default: %(default)s)")
    parser.add_argument("--synthetic-repeats", type=int, default=3, help="fits per synthetic shape; the table "
                        "shows the median (default: %(default)s)")
    parser.add_argument("--real-cache", action="append", default=[], metavar="H5",
                        help="also time stage two per fold on this feature file, and tiled to full size (repeatable)")
    parser.add_argument("--real-cache-full-frames", type=int, default=None, metavar="N",
                        help="training frames to tile a real cache to (default: 31746 x (folds-1)/folds)")
    parser.add_argument("--keep-features", default=None, metavar="DIR",
                        help="write stage one's feature files here and keep them (default: a temp dir)")
    parser.add_argument("--features", default=None, metavar="H5",
                        help="stage one from this lusfeat.extract file of exactly these frames (one backbone; not timed)")
    parser.add_argument("--paper-folds", type=int, default=None, metavar="K",
                        help="train the paper's method on the first K folds only; both methods are compared on "
                        "those folds (default: every fold)")
    parser.add_argument("--engine", choices=tuple(ENGINES), default=None,
                        help="stage one's engine, as lusfeat.extract (default: lusfeat.extract's default for this CPU)")
    parser.add_argument("--precision", choices=ALL_PRECISIONS, default=None,
                        help="stage one's precision, as lusfeat.extract (the paper's method stays Keras float32)")
    parser.add_argument("--seed", type=int, default=0, help="patients, folds, augmentation, initialisation")
    parser.add_argument("--work-dir", default=None, help="scratch folder for features (default: a temp dir)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from lusfeat.embed import plan_frames
        from lusfeat.manifest import file_sha256, read_manifest

        if args.folds < 2 or args.epochs < 1 or args.frame_step < 1:
            raise LusfeatError("--folds must be >= 2, --epochs and --frame-step >= 1")
        if args.paper_folds is not None and not 1 <= args.paper_folds <= args.folds:
            raise LusfeatError(f"--paper-folds {args.paper_folds}: give 1 to --folds ({args.folds})")
        if args.features and "," in args.backbone.strip(","):
            raise LusfeatError("--features is one backbone's file: give one --backbone")
        manifest = read_manifest(args.manifest, args.data_root)
        patients = select_patients(manifest, args.patients, args.seed)
        frames = plan_frames(manifest[manifest["patient_id"].astype(str).isin(patients)], args.frame_step)
        folds = patient_folds(frames, args.folds, args.seed)
        names = [name.strip() for name in args.backbone.split(",") if name.strip()]
        args.engine, args.precision, engine_why = stage_one_engine(args, names)
        print(f"stage one: {args.engine} {args.precision} ({engine_why})", file=sys.stderr)
        record: dict[str, Any] = {
            "benchmark": "training_time", "command": command_line("training_time.py", argv),
            "machine": machine_info(),
            "settings": {key: value for key, value in vars(args).items() if key not in ("out", "work_dir")},
            "stage_one_engine": {"engine": args.engine, "precision": args.precision, "why": engine_why},
            "patients": patients, "frames": len(frames),
            "frames_per_fold": [int((folds == f).sum()) for f in range(args.folds)],
            "scores_per_fold": [np.bincount(frames["score"].to_numpy(int)[folds == f], minlength=len(CLASSES)).tolist()
                                for f in range(args.folds)],
            "augmentation_a": "lusfeat.augment.augment_frame (Pillow affine, AugmentParams defaults) in a "
                              "keras.utils.PyDataset: a fresh random copy of every training image every epoch",
            "backbones": {},
        }
        with tempfile.TemporaryDirectory(prefix="lusfeat-bench-", dir=args.work_dir) as scratch:
            feature_dir = Path(args.keep_features or scratch)
            for name in names:
                record["backbones"][name] = run_backbone(name, frames, folds, args, file_sha256(args.manifest),
                                                         feature_dir)
        if args.synthetic_train_frames > 0:
            dims = sorted({2048, *(record["backbones"][name]["feature_dim"] for name in names)}, reverse=True)
            record["stage_two_full_size"] = [synthetic_full_size(args.synthetic_train_frames, dim, 3, args.seed, args)
                                             for dim in dims]
        record["stage_two_real_cache"] = [real_cache_folds(path, args) for path in args.real_cache]
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish(record, args.out, "training_time", render_tables)
    return 0


def render_tables(record: dict[str, Any]) -> str:
    settings = record["settings"]
    header = (f"{len(record['patients'])} patients, frame step {settings['frame_step']}: {record['frames']} frames, "
              f"{settings['folds']} patient folds, {settings['epochs']} epochs, batch {settings['batch_size']}, "
              f"stage one 1 + {settings['augment_copies']} copies")
    if engine := record.get("stage_one_engine"):
        header += f" in {engine['engine']} {engine['precision']} (the paper's method: Keras float32)"
    def ratio(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}x"

    def seconds(value: float | None) -> float | str:
        return "n/a" if value is None else value

    speed, quality, extrapolated = [], [], []
    for name, entry in record["backbones"].items():
        paper, lus = entry["paper"], entry["lusfeat"]
        folds = entry.get("compared_folds")
        header += f"\n{name}: stage one {entry.get('stage_one', 'extracted and timed in this run')}; " + (
            f"both methods timed and scored on fold(s) {', '.join(map(str, folds))} ({entry['compared_frames']} held-out frames)"
            if folds else "every fold")
        speed.append([name, entry["input_size"], f"{entry['n_train_mean']:.0f} / {entry['n_test_mean']:.0f}",
                      paper["fold_seconds_mean"], lus["fold_seconds_mean"], ratio(entry["ratio_fold_mean"], 0),
                      lus["logistic_check"]["fold_seconds_mean"],
                      seconds(lus["extract_seconds"]), ratio(entry["ratio_fold_mean_with_amortised_extraction"], 1),
                      seconds(paper["end_to_end_seconds"]), seconds(lus["end_to_end_seconds"]),
                      ratio(entry["ratio_end_to_end"], 1)])
        spread = lus["seed_spread"]
        quality.append([name, paper["accuracy"], lus["accuracy"], entry["accuracy_difference_a_minus_b"],
                        paper["macro_f1"], lus["macro_f1"], entry["macro_f1_difference_a_minus_b"],
                        f"{spread['accuracy_sd']:.3f} / {spread['macro_f1_sd']:.3f}" if spread["accuracy_sd"] is not None
                        else "n/a"])
        extra = entry["extrapolation_full_covid_blues"]
        extrapolated.append([name, extra["paper_fold_seconds"] / 60,
                             "n/a" if extra["extract_seconds"] is None else extra["extract_seconds"] / 60])
    parts = [header, format_table(
        ["backbone", "px", "train / test frames per fold", "(a) paper s/fold", "(b) stage two s/fold", "a/b per fold",
         "StandardisedLogisticRegression s/fold (info)", "(b) stage one s (once)", "a / (b + stage one/folds)", "(a) end to end s", "(b) end to end s",
         "end-to-end ratio"], speed),
        format_table(["backbone", "(a) accuracy", "(b) accuracy", "a-b", "(a) macro-F1", "(b) macro-F1", "a-b",
                      "(b) seed sd acc / F1"], quality),
        "EXTRAPOLATION to all 31,746 frames (linear in frames, not measured):\n" + format_table(
            ["backbone", "(a) paper min/fold", "(b) stage one min (once)"], extrapolated)]
    if not record["backbones"]:
        parts = []
    full = record.get("stage_two_full_size") or []
    real = record.get("stage_two_real_cache") or []
    if full or real:
        rows = [[f"synthetic, median of {len(item['fit_seconds_runs'])} (runs: "
                 + ", ".join(f"{value:.2f}" for value in item["fit_seconds_runs"]) + " s)",
                 f"{item['copies']} x {item['n_train']:,} x {item['dim']}", item["fit_seconds"],
                 item["predict_seconds"], "-", "-"] for item in full]
        for cache in real:
            for fold, item in enumerate(cache["per_fold"]):
                rows.append([f"{cache['path']} fold {fold}", f"{item['copies']} x {item['n_train']:,} x {item['dim']}",
                             item["fit_seconds"], item["predict_seconds"], item["logistic_seconds"],
                             item.get("video_seconds", "-")])
            item = cache["tiled_to_full_size"]
            rows.append([item["source"], f"{item['copies']} x {item['n_train']:,} x {item['dim']}",
                         item["fit_seconds"], item["predict_seconds"], "-", "-"])
        parts.append("Stage two at full size (target: fit <= 3 s per fold):\n"
                     + format_table(["features", "copies x train frames x dim", "SeverityHead fit s", "predict s",
                                   "StandardisedLogisticRegression fit+predict s (info)", "video model fit s (fit's default)"], rows))
    return "\n\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
