"""Accuracy on real data: the paper-faithful head against candidates, on identical patient-level folds.

    python -m benchmarks.accuracy [--features /work/features] [--backbones xception,vgg16]
        [--seeds 0,1,2] [--folds 3] [--methods all|NAME,...] [--frame-step K] [--out FILE|DIR]

Reads cached feature files (``FEATURES/<backbone>.h5`` from ``python -m lusfeat.extract``;
``FEATURES/lus_signal.h5`` from ``python -m lusfeat.experiments.lus_signal`` for the ``lus_signal`` methods;
``FEATURES/lung_crop/<backbone>.h5`` from ``python -m lusfeat.experiments.lung_crop --out FEATURES/lung_crop``
for the ``-lung`` methods; all made with the same manifest and frame step, so their rows line up).

Protocol. For each seed ``s``: patient-level folds ``lusfeat.folds.make_folds(patient_strata,
k, seed=s)`` (stratified by covid / negative), the same for every method; every model gets
``random_state=s``. Each method is trained on the training folds' frames and scores the held-out
patients; the held-out predictions of all folds are pooled (each of the 63 patients scored once
per seed) and scored. Metrics per seed, then mean, sample standard deviation, min and max over
seeds:

- frame level: accuracy, macro-F1, quadratic weighted kappa (QWK), macro one-vs-rest ROC-AUC;
- video level: QWK of the video score (most frequent frame score, ties to the higher; a
  video-level method gives all its frames one score); a video is a (patient, video) pair;
- patient level: mean absolute error of the global score (region score = most frequent frame
  score, ties to the higher; global = sum over the patient's regions; ``lusfeat.aggregate``).

``<backbone>/fit-default`` runs ``lusfeat.fit``'s default model (``--preset video``) by its own
code, with its own inner choice of C: it must score what the ``video-ordinal+balanced`` row scores.

The ``*-leaky`` rows repeat a method with a frame-level random split (a patient's frames on both
sides): not a result, a warning of what a frame-level split fakes.

Metrics come from ``lusfeat.metrics.evaluate`` (frame and video level) and ``lusfeat.aggregate``
(region and patient level); classes and the tie rule from ``lusfeat.scores``.

Hyper-parameters: fixed in advance (the paper's head; C = 0.01 for the linear frame-level models,
StandardisedLogisticRegression's default from the earlier probes), except for the video-level models, whose L2
strength C is chosen by nested CV, ``lusfeat.models.video.VideoPoolingClassifier``'s own (``Cs``):
an inner patient-level 3-fold split of the *training* patients only, grid ``NESTED_C``, criterion
video-level QWK, a tie to the smaller C. The test fold is never used for a choice.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._common import command_line, format_table, machine_info, save_json
from lusfeat.errors import LusfeatError
from lusfeat.scores import CLASSES

LUNG_CROP_PREFIX = "lung_crop/"  # FEATURES/lung_crop/<backbone>.h5, from python -m lusfeat.experiments.lung_crop
NESTED_C = (0.001, 0.01, 0.1)
METRICS = ("accuracy", "macro_f1", "qwk", "roc_auc", "video_qwk", "global_mae")
METRIC_LABELS = {"accuracy": "frame acc", "macro_f1": "macro-F1", "qwk": "frame QWK", "roc_auc": "ROC-AUC",
                 "video_qwk": "video QWK", "global_mae": "global MAE"}


# --------------------------------------------------------------------------- data


@dataclass
class Data:
    """Aligned feature blocks ``(copies, n, dim)`` by name, and the per-frame table."""

    frames: pd.DataFrame
    blocks: dict[str, np.ndarray]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def features(self, names: tuple[str, ...]) -> np.ndarray:
        missing = [name for name in names if name not in self.blocks]
        if missing:
            raise LusfeatError(f"feature file(s) for {', '.join(missing)} not loaded")
        parts = [self.blocks[name] for name in names]
        copies = min(part.shape[0] for part in parts)
        return np.concatenate([part[:copies] for part in parts], axis=2)


PATIENT_CONTEXT = "@patient"  # "<name>@patient": each frame gets the mean of its patient's frames of <name>


def patient_means(X: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """``(copies, n, dim)``: for every frame, the mean features (same copy) of all frames of its patient.

    Only the patient's own frames enter, so it is as available for a new patient (all of whose
    videos are scored together) as for a training one; no other patient leaks in.
    """
    codes, _ = pd.factorize(pd.Series(patients).astype(str))
    counts = np.bincount(codes).astype(np.float64)
    sums = np.zeros((X.shape[0], len(counts), X.shape[2]))
    for copy in range(X.shape[0]):
        np.add.at(sums[copy], codes, X[copy].astype(np.float64))
    return (sums / counts[None, :, None])[:, codes].astype(np.float32)


def every_kth_frame(frames: pd.DataFrame, step: int, stored_step: int) -> np.ndarray:
    """Rows of ``frames`` (from a file made at ``stored_step``) that a run at frame step ``step`` would
    have extracted: frame numbers divisible by ``step``. Augmentation depends only on (seed, frame,
    copy), so these rows hold exactly the features such a run computes (same engine and calibration)."""
    if step < 1 or step % stored_step:
        raise LusfeatError(f"--frame-step {step}: the features were extracted every {stored_step} frame(s); "
                           f"give a multiple of {stored_step}")
    keep = frames["frame_index"].to_numpy() % step == 0
    lost = sorted(set(frames["path"]) - set(frames.loc[keep, "path"]))
    if lost:
        raise LusfeatError(f"--frame-step {step} leaves no frame of {len(lost)} file(s), e.g. {lost[0]} "
                           "(their manifest row names one frame); use a step that divides it, or 1")
    return np.flatnonzero(keep)


def load_data(folder: Path, names: list[str], frame_step: int = 1) -> Data:
    """The feature files ``names`` in ``folder``, aligned; with ``frame_step`` > 1 only every such frame
    (:func:`every_kth_frame`), to measure what a coarser extraction would have scored from one file."""
    from lusfeat.store import load_features

    derived = [name for name in names if name.endswith(PATIENT_CONTEXT)]
    names = list(dict.fromkeys(name.removesuffix(PATIENT_CONTEXT) for name in names))  # the files to read
    frames, blocks, sources = None, {}, {}
    for name in names:
        feature_set = load_features(folder / f"{name}.h5")
        table = feature_set.frames
        if frames is None:
            frames = table
        elif not (table[["path", "frame_index"]].to_numpy() == frames[["path", "frame_index"]].to_numpy()).all():
            raise LusfeatError(f"{name}.h5 does not list the same frames as {names[0]}.h5: extract both with the "
                               "same manifest and frame step")
        blocks[name] = feature_set.features
        sources[name] = {key: feature_set.attrs[key] for key in ("backbone", "weights", "input_size", "feature_dim",
                                                                  "copies", "frame_step", "manifest_sha256")}
        sources[name]["shape"] = list(feature_set.features.shape)
    if frame_step > 1:
        kept = every_kth_frame(frames, frame_step, int(sources[names[0]]["frame_step"]))
        frames = frames.iloc[kept]
        blocks = {name: block[:, kept] for name, block in blocks.items()}
        for source in sources.values():
            source["frames_kept_every"] = frame_step
    for name in derived:
        blocks[name] = patient_means(blocks[name.removesuffix(PATIENT_CONTEXT)], frames["patient_id"].to_numpy())
    return Data(frames.reset_index(drop=True), blocks, sources)


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One configuration: features, a model factory ``seed -> estimator``, how to read classes."""

    name: str
    description: str
    features: tuple[str, ...]
    make: Callable[[int], Any]
    # "frame": frame rows; "video" / "fit": a VideoPoolingClassifier; "attention": attention pooling (all take
    # fit(X, y, *, index), the frames' videos, patients and strata)
    level: str = "frame"
    decision: str = "argmax"  # "argmax" | "expected" | "median" | "model" (the estimator's predict)
    nested_c: tuple[float, ...] = ()  # the C grid the estimator chooses from (reported)
    leaky: bool = False
    group: str = "candidate"  # "baseline" | "leaky" | "candidate"
    copies: int | None = None  # train on the first N cached copies only (None: all)


def _paper(seed: int, **kwargs: Any):
    from lusfeat.models.head import SeverityHead

    return SeverityHead(random_state=seed, **kwargs)


def _logreg(seed: int):
    from lusfeat.models.linear import StandardisedLogisticRegression

    return StandardisedLogisticRegression(C=0.01, random_state=seed)


def _ordinal(seed: int, **kwargs: Any):
    from lusfeat.models.ordinal import OrdinalLogisticRegression

    return OrdinalLogisticRegression(C=0.01, random_state=seed, **kwargs)


def _video(inner: Callable[..., Any], Cs: tuple[float, ...], **inner_kwargs: Any) -> Callable[[int], Any]:
    def make(seed: int):
        from lusfeat.models.video import VideoPoolingClassifier

        return VideoPoolingClassifier(estimator=inner(seed, **inner_kwargs), Cs=Cs, random_state=seed)

    return make


def _fit_default(seed: int):
    from lusfeat.models.registry import FitParams

    return FitParams(seed=seed).video_model()


def _attention(seed: int):
    from lusfeat.experiments.attention import AttentionVideoClassifier

    return AttentionVideoClassifier(random_state=seed)


def _head_takes_class_weight() -> bool:
    from lusfeat.models.head import SeverityHead

    return "class_weight" in SeverityHead().get_params()


def build_methods(backbones: list[str], signal: bool, nested_c: tuple[float, ...] = NESTED_C,
                  lung: bool = False) -> list[Method]:
    from lusfeat.models.registry import FitParams

    def video(name: str, description: str, features: tuple[str, ...], inner: Callable[..., Any],
              **inner_kwargs: Any) -> Method:
        return Method(name, description, features, _video(inner, nested_c, **inner_kwargs), level="video",
                      decision="model", nested_c=nested_c)

    methods: list[Method] = []
    for bb in backbones:
        feats = (bb,)
        methods += [
            Method(f"{bb}/paper", "paper head: Dropout 0.5 + Dense 4 softmax, Adam 1e-3, batch 32, 3 epochs, "
                   "one cached copy per frame per epoch; argmax", feats, _paper, group="baseline"),
            Method(f"{bb}/paper-leaky", "the same, frame-level random split (LEAKY)", feats, _paper,
                   leaky=True, group="leaky"),
            Method(f"{bb}/logreg", "stage two's cross-check: standardised logistic regression C=0.01, all copies",
                   feats, _logreg, group="baseline"),
            Method(f"{bb}/logreg-leaky", "the cross-check under a frame-level random split (LEAKY)", feats, _logreg,
                   leaky=True, group="leaky"),
            Method(f"{bb}/fit-default", "lusfeat.fit's default model (--preset video) itself: video-ordinal+balanced "
                   "with its own inner choice of C", feats, _fit_default, level="fit", decision="model",
                   nested_c=FitParams.video_Cs),
        ]
    bb = backbones[0]
    feats = (bb,)
    methods += [
        Method(f"{bb}/paper+expected", "(b) paper head, class read as the rounded expected score", feats, _paper,
               decision="expected"),
    ]
    if _head_takes_class_weight():
        methods.append(Method(f"{bb}/paper+balanced", "(d) paper head with balanced class weights in the loss",
                              feats, partial(_paper, class_weight="balanced")))
    # 30 x 3,323 frames at frame step 10 ~ 3 x 31,746 at step 1 (99,690 vs 95,238 frame visits): the
    # same gradient steps as the paper head over every frame, to tell more frames from more steps.
    methods.append(Method(f"{bb}/paper-30ep", "paper head trained 30 epochs instead of 3 (the gradient steps of "
                          "3 epochs over ten times the frames)", feats, partial(_paper, epochs=30)))
    methods += [
        Method(f"{bb}/ordinal", "(b) cumulative-link (proportional-odds) logistic regression, C=0.01, median",
               feats, _ordinal, decision="model"),
        Method(f"{bb}/ordinal+balanced", "(b)+(d) the same with balanced class weights", feats,
               partial(_ordinal, class_weight="balanced"), decision="model"),
        video(f"{bb}/video-logreg", "(a) video level: mean+std+max of frame features -> logistic regression, "
              "C nested", feats, _logreg),
        video(f"{bb}/video-ordinal", "(a)+(b) video level: mean+std+max -> ordinal regression, C nested", feats,
              _ordinal),
        video(f"{bb}/video-ordinal+balanced", "(a)+(b)+(d) the same with balanced class weights", feats,
              _ordinal, class_weight="balanced"),
        video(f"{bb}+patient/video-ordinal+balanced", "(a)+(b)+(d) with patient context: each video's pooled "
              "features beside the mean features of all its patient's frames, C nested", (bb, bb + PATIENT_CONTEXT),
              _ordinal, class_weight="balanced"),
        Method(f"{bb}/video-attention", "(a) video level: attention pooling over frames (hidden 64, attention 32, "
               "dropout 0.5, AdamW 1e-3 wd 1e-3, 40 epochs, batch 16, balanced), argmax", feats, _attention,
               level="attention"),
    ]
    if len(backbones) > 1:
        both = tuple(backbones[:2])
        methods.append(video(f"{'+'.join(both)}/video-ordinal+balanced", "(a)+(b)+(d) video level on the first two "
                             "backbones' features side by side, C nested", both, _ordinal, class_weight="balanced"))
    if signal:
        sig = ("lus_signal",)
        methods += [
            Method("lus_signal/ordinal", "(c) hand-made LUS signal alone (24 numbers), ordinal regression C=0.01",
                   sig, _ordinal, decision="model"),
            video("lus_signal/video-ordinal", "(c) signal alone, video level mean+std+max, ordinal, C nested", sig,
                  _ordinal),
            Method(f"{bb}+lus_signal/ordinal", "(c) backbone features + signal, ordinal regression C=0.01",
                   (bb, "lus_signal"), _ordinal, decision="model"),
            video(f"{bb}+lus_signal/video-ordinal", "(a)+(b)+(c) video level, backbone + signal, ordinal, C nested",
                  (bb, "lus_signal"), _ordinal),
        ]
    if lung:
        crop = (LUNG_CROP_PREFIX + bb,)
        methods += [
            Method(f"{bb}/paper-copy0", "reference for the lung crop: paper head, whole frame, original copy only "
                   "(no augmentation)", feats, _paper, copies=1),
            Method(f"{bb}-lung/paper", "lung crop (below the pleura) features, paper head, original copy only",
                   crop, _paper),
            Method(f"{bb}-lung/ordinal", "lung crop features, ordinal regression C=0.01", crop, _ordinal,
                   decision="model"),
            video(f"{bb}-lung/video-ordinal", "lung crop features, video level mean+std+max, ordinal, C nested",
                  crop, _ordinal),
        ]
    return methods


# --------------------------------------------------------------------------- evaluation


def score(frames: pd.DataFrame, probabilities: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Every metric of the module docstring, on held-out predictions of all frames.

    An undefined kappa (None in ``lusfeat.metrics``) is NaN here, so that it can be averaged over seeds.
    """
    from lusfeat.aggregate import aggregate
    from lusfeat.metrics import evaluate
    from lusfeat.predictions import FRAME_COLUMNS, ModelPredictions, Predictions

    metrics = evaluate(frames, probabilities, predicted)
    table = Predictions(frames[FRAME_COLUMNS], {"model": ModelPredictions(np.asarray(probabilities), np.asarray(predicted))})
    patients = aggregate(table, "model", rule="mode").agreement
    values = {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "qwk": metrics["qwk"],
        "roc_auc": metrics["roc_auc_macro"],
        "video_qwk": metrics["video"]["qwk"],
        "region_qwk": patients["region_qwk"],
        "global_mae": patients["global_mae"],
    }
    return {**{key: math.nan if value is None else value for key, value in values.items()},
            "predicted_counts": np.asarray(metrics["confusion_matrix"]).sum(axis=0).tolist()}


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max over seeds of every metric."""
    summary = {}
    for metric in (*METRICS, "region_qwk"):
        values = np.array([row[metric] for row in per_seed])
        summary[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                           "min": float(values.min()), "max": float(values.max())}
    return summary


def run_method(method: Method, data: Data, seeds: list[int], n_folds: int) -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold

    from lusfeat.training import held_out_predictions, patient_splits

    X = data.features(method.features)
    if method.copies is not None:
        X = X[:method.copies]
    frames = data.frames
    y = frames["score"].to_numpy().astype(np.int32)
    per_seed, chosen, began = [], [], time.perf_counter()
    for seed in seeds:
        if method.leaky:  # deliberately not the library's split: what a frame-level split fakes
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            splits = list(splitter.split(np.zeros(len(y)), y))
        else:
            splits = patient_splits(frames, n_folds, seed)
        probabilities, predicted, models = held_out_predictions(partial(method.make, seed), X, frames, splits,
                                                                method.decision)
        for fold, model in enumerate(models, start=1):
            if hasattr(model, "C_"):
                chosen.append({"seed": seed, "fold": fold, "C": model.C_, "inner_video_qwk": model.inner_qwk_})
        per_seed.append({"seed": seed, **score(frames, probabilities, predicted)})
        print(f"  {method.name} seed {seed}: " + ", ".join(f"{k} {per_seed[-1][k]:.3f}" for k in METRICS),
              file=sys.stderr, flush=True)
    return {"name": method.name, "description": method.description, "group": method.group,
            "features": list(method.features), "level": method.level, "decision": method.decision,
            "split": "frame-level random (LEAKY)" if method.leaky else "patient-level",
            "nested_c_grid": list(method.nested_c), "chosen_c": chosen, "per_seed": per_seed,
            "summary": summarise(per_seed), "seconds": time.perf_counter() - began}


def wins_over(candidate: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per seed, does the candidate beat the baseline on frame-or-video QWK and on macro-F1?"""
    rows = []
    for mine, theirs in zip(candidate["per_seed"], baseline["per_seed"], strict=True):
        rows.append({"seed": mine["seed"], "qwk": mine["qwk"] > theirs["qwk"],
                     "video_qwk": mine["video_qwk"] > theirs["video_qwk"], "macro_f1": mine["macro_f1"] > theirs["macro_f1"]})
    every_seed = all((row["qwk"] or row["video_qwk"]) and row["macro_f1"] for row in rows)
    strict = all(row["qwk"] and row["video_qwk"] and row["macro_f1"] for row in rows)
    return {"baseline": baseline["name"], "per_seed": rows, "wins_every_seed": every_seed,
            "wins_every_seed_all_three": strict}


def table(results: list[dict[str, Any]]) -> str:
    headers = ["method", "level", "split", *[METRIC_LABELS[m] for m in METRICS]]
    rows = []
    for result in results:
        cells = [f"{result['summary'][m]['mean']:.3f} ± {result['summary'][m]['std']:.3f}" for m in METRICS]
        rows.append([result["name"], result["level"], "LEAKY frame split" if "LEAKY" in result["split"] else "patient",
                     *cells])
    return format_table(headers, rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="features", help="folder of <backbone>.h5 and lus_signal.h5")
    parser.add_argument("--backbones", default="xception", help="comma-separated; the first gets the candidates")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="patient-level folds (default: %(default)s)")
    parser.add_argument("--methods", default="all", help="all, or comma-separated method names or shell patterns ('xception/*')")
    parser.add_argument("--nested-c", default=",".join(map(str, NESTED_C)),
                        help="C grid of the nested CV of the video-level models (default: %(default)s)")
    parser.add_argument("--no-signal", action="store_true", help="skip the lus_signal methods")
    parser.add_argument("--frame-step", type=int, default=1, metavar="K",
                        help="score only every K-th frame of the files (frame numbers divisible by K): what an "
                        "extraction at --frame-step K would give, on the same folds (default: all stored frames)")
    parser.add_argument("--append", default=None, metavar="JSON",
                        help="keep the results of this earlier run (same seeds and folds) beside the methods run now")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder = Path(args.features)
        backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        signal = not args.no_signal and (folder / "lus_signal.h5").is_file()
        grid = tuple(float(c) for c in args.nested_c.split(",") if c.strip())
        if not grid or min(grid) <= 0:
            raise LusfeatError("--nested-c must list positive values")
        lung = (folder / f"{LUNG_CROP_PREFIX}{backbones[0]}.h5").is_file() if backbones else False
        methods = build_methods(backbones, signal, grid, lung)
        if args.methods != "all":
            wanted = [name.strip() for name in args.methods.split(",") if name.strip()]
            methods = [m for m in methods if any(fnmatch.fnmatchcase(m.name, w) for w in wanted)]
            if not methods:
                raise LusfeatError(f"--methods {args.methods}: no method matches")
        needed = list(dict.fromkeys(name for method in methods for name in method.features))
        data = load_data(folder, needed, args.frame_step)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    results, commands = [], [command_line("accuracy.py", argv)]
    if args.append:
        # Results of an earlier run on the same seeds and folds; methods run now replace theirs.
        earlier = json.loads(Path(args.append).read_text())
        if earlier.get("seeds") != seeds or earlier.get("folds") != args.folds:
            print(f"error: {args.append} used seeds {earlier.get('seeds')} and {earlier.get('folds')} folds; "
                  "append only to a run with the same ones", file=sys.stderr)
            return 1
        fresh = {method.name for method in methods}
        results = [result for result in earlier["results"] if result["name"] not in fresh]
        commands = [*earlier.get("commands", [earlier.get("command", "")]), *commands]
    for method in methods:
        print(f"{method.name} ...", file=sys.stderr, flush=True)
        results.append(run_method(method, data, seeds, args.folds))
    # Each candidate against the paper head on its own backbone's features, else the first backbone's.
    baselines = {result["features"][0]: result for result in results if result["name"].endswith("/paper")}
    for result in results:
        reference = baselines.get(result["features"][0], baselines.get(backbones[0]))
        if result["group"] == "candidate" and reference is not None:
            result["versus_paper"] = wins_over(result, reference)
    from lusfeat.index import video_keys

    frames = data.frames
    record = {
        "benchmark": "accuracy",
        "commands": commands,
        "protocol": __doc__.split("\n\n", 2)[2].strip(),
        "data": {"frames": len(frames), "patients": int(frames["patient_id"].nunique()),
                 "videos": len(set(video_keys(frames))),
                 "score_counts": np.bincount(frames["score"].astype(int), minlength=len(CLASSES)).tolist()},
        "feature_files": {**(json.loads(Path(args.append).read_text()).get("feature_files", {}) if args.append else {}),
                          **data.sources},
        "seeds": seeds,
        "folds": args.folds,
        "nested_c_grid": list(grid),
        "machine": machine_info(),
        "results": results,
    }
    path = save_json(record, args.out, "accuracy")
    print(table(results))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
