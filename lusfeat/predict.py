"""Score new lung-ultrasound data with a saved model: frame, video, region and global scores.

    python -m lusfeat.predict --model RUN/<backbone>/fold<k> INPUT [--data-root DIR] [--scorer video|head|logreg]
        [--weights imagenet|none|FILE|DIR] [--frame-step K] [--rule mode|mean_proba] [--out DIR]

INPUT is either

- a manifest CSV (``path, patient_id, region`` and ``score``, which may be empty; see
  ``lusfeat.manifest``), or
- a folder of one patient's videos or images, the patient id being the folder's name, or a
  folder of such patient folders. Each file's region is read from its name: the **last**
  ``_``/``-``/space/``.``-separated token made of 1-3 letters then 1-2 digits, upper-cased
  (``L1.mp4`` -> L1, ``R2_2.mp4`` -> R2, ``patient_9_L1.mp4`` -> L1, ``rpl3-0007.png`` -> RPL3).
  A file without such a token is an error: rename it or write a manifest.

The model folder is one that ``lusfeat.fit`` wrote: ``model.json`` (backbone, weights identity,
input size, pooling, frame step of the features it was trained on; the models trained and the
primary one) and the models: ``head.keras`` (pooled features -> 4 probabilities),
``logreg.joblib``, and with fit's default preset ``video.joblib`` (the video-level ordinal
model, the primary one: each frame carries its video's score). Features are computed by stage one's own code
(``lusfeat.extract``, ``lusfeat.backbones``) from the weights you give; weights or an input size
other than the model's are refused, naming both, since they would give wrong scores silently.

Writes to OUT: ``frames.csv`` (per frame, for every model of the folder: class probabilities
``<model>_p0..p3`` and ``<model>_pred``), and by the scorer (``--scorer``, default the
folder's primary model): ``videos.csv``, ``regions.csv``, ``patients.csv`` (global score with
the number of regions scored) and ``predictions.json`` (all of it, nested per patient, with the
model's identity). Where the input carries true scores, the agreement is reported too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lusfeat.aggregate import (
    CLASSES,
    RULES,
    UNLABELLED,
    agreement,
    argmax_high,
    global_scores,
    region_scores,
    video_scores,
)
from lusfeat.errors import LusfeatError
from lusfeat.fit import MODEL_FILES, video_keys
from lusfeat.manifest import MEDIA_SUFFIXES, read_manifest
from lusfeat.store import FORMAT_VERSION, ExtractionConfig

log = logging.getLogger("lusfeat.predict")
REGION_TOKEN = re.compile(r"^[A-Za-z]{1,3}\d{1,2}$")
BLOCK_FRAMES = 64  # frames decoded, embedded and scored at a time: bounds memory


# --------------------------------------------------------------------------- input


def region_from_name(name: str) -> str | None:
    """The region token of a file name (see the module doc), upper-cased; None when there is none."""
    stem = Path(name).name
    for suffix in MEDIA_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    tokens = [token for token in re.split(r"[_\-\s.]+", stem) if token]
    matches = [token for token in tokens if REGION_TOKEN.match(token)]
    return matches[-1].upper() if matches else None


def _media_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)


def folder_manifest(folder: str | os.PathLike) -> pd.DataFrame:
    """Manifest rows (paths relative to ``folder``) for a patient folder or a folder of patient folders."""
    folder = Path(folder)
    files = _media_files(folder)
    if files:
        patients = [(folder.resolve().name, folder)]
    else:
        patients = [(sub.name, sub) for sub in sorted(folder.iterdir()) if sub.is_dir() and _media_files(sub)]
    if not patients:
        raise LusfeatError(f"{folder}: no image or video files ({', '.join(MEDIA_SUFFIXES)}) in it or in its sub-folders")
    rows, problems = [], []
    for patient, patient_dir in patients:
        for file in _media_files(patient_dir):
            region = region_from_name(file.name)
            if region is None:
                problems.append(file.name)
                continue
            rows.append({"path": file.relative_to(folder).as_posix(), "patient_id": patient, "region": region,
                         "score": "", "group": "", "video_id": file.stem})
    if problems:
        raise LusfeatError(
            f"{folder}: no region in the name of {', '.join(problems[:10])}{' ...' if len(problems) > 10 else ''}. "
            "Name each file by its region (1-3 letters then 1-2 digits, e.g. L1.mp4, R2_2.mp4, patient_9_L1.mp4), "
            "or pass a manifest CSV with a region column")
    return pd.DataFrame(rows)


def read_input(input_path: str | os.PathLike, data_root: str | os.PathLike | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(validated manifest, the manifest made of a folder or None)`` of INPUT, a CSV or a folder.

    A folder's manifest is validated from a temporary file; ``predict`` writes it to
    ``OUT/input_manifest.csv`` with its results only, so a run that stops early leaves OUT as it was.
    """
    path = Path(input_path)
    if path.is_dir():
        table = folder_manifest(path)
        with tempfile.TemporaryDirectory() as scratch:
            manifest_path = Path(scratch) / "input_manifest.csv"
            table.to_csv(manifest_path, index=False)
            try:
                return read_manifest(manifest_path, path, require_scores=False), table
            except LusfeatError as error:  # name the user's folder, not the scratch file
                raise LusfeatError(str(error).replace(str(manifest_path), f"{path} (read as a manifest)")) from None
    if path.is_file():
        return read_manifest(path, data_root, require_scores=False), None
    raise LusfeatError(f"input {path} not found: pass a manifest CSV or a folder of one patient's videos or images")


# --------------------------------------------------------------------------- the saved model


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


# --------------------------------------------------------------------------- scoring


def embed_frames(frames: pd.DataFrame, model: SavedModel, source, *, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """Pooled features ``(n_frames, dim)`` by stage one's own frames and backbone, as the feature file held them."""
    from tqdm.auto import tqdm

    from lusfeat.augment import AugmentParams
    from lusfeat.backbones import build_feature_extractor, get_spec
    from lusfeat.extract import Embedder, iter_images

    config = model.extraction
    spec = get_spec(config.backbone)
    embed = Embedder(build_feature_extractor(spec, source, config.input_size, config.precision), batch_size)
    params = AugmentParams(config.aug_rotation, config.aug_shift, config.aug_zoom, config.aug_flip)
    images = iter_images(frames, config.input_size, 1, config.seed, params)  # copy 0: the frame itself
    out = []
    with tqdm(total=len(frames), unit="frame", desc=spec.name, disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(frames), BLOCK_FRAMES):
            n = min(BLOCK_FRAMES, len(frames) - start)
            block = np.stack([next(images)[0] for _ in range(n)])
            # Round through the stored dtype: the models were trained on features as the file held them.
            out.append(embed(block).astype(config.dtype).astype("float32"))
            bar.update(n)
    return np.concatenate(out) if out else np.zeros((0, config.feature_dim), np.float32)


def score_features(features: np.ndarray, frames: pd.DataFrame, model: SavedModel) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model of the folder: ``(probabilities (n, 4), scores (n,))`` of every frame."""
    from lusfeat.head import pipeline_probabilities

    out = {}
    for name, estimator in model.models.items():
        if name == "head":
            proba = np.concatenate([np.asarray(estimator(features[i:i + 1024], training=False), dtype="float64")
                                    for i in range(0, len(features), 1024)])
            proba = proba / proba.sum(axis=1, keepdims=True)
            out[name] = (proba, argmax_high(proba))
        elif name == "logreg":
            proba = pipeline_probabilities(estimator, features)
            out[name] = (proba, argmax_high(proba))
        else:  # video: one answer per (patient, video), given to each of its frames
            keys = video_keys(frames)
            out[name] = (estimator.predict_proba(features, keys), estimator.predict(features, keys))
    return out


def frame_table(frames: pd.DataFrame, scored: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Per-frame predictions in ``lusfeat.fit``'s column layout (``score`` -1 where unlabelled)."""
    table = frames[["path", "frame_index", "patient_id", "region", "video_id", "group", "score"]].copy()
    for name, (proba, predicted) in scored.items():
        for k in CLASSES:
            table[f"{name}_p{k}"] = proba[:, k]
        table[f"{name}_pred"] = predicted
    return table


def _clean(value):
    """JSON-ready: numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _scores(row: pd.Series) -> dict:
    return {"score": int(row["pred"]), "probabilities": [round(float(row[f"p{k}"]), 6) for k in CLASSES],
            "frames": int(row["frames"]), "frames_per_score": [int(row[f"n_pred{k}"]) for k in CLASSES],
            "true_score": None if int(row["truth"]) == UNLABELLED else int(row["truth"])}


def nested_result(videos: pd.DataFrame, regions: pd.DataFrame, patients: pd.DataFrame) -> list[dict]:
    """Per patient: global score and regions scored, each region with its videos."""
    out = []
    for patient in patients.itertuples(index=False):
        mine = regions[regions["patient_id"] == patient.patient_id]
        entry = {"patient_id": patient.patient_id, "global_score": int(patient.pred),
                 "regions_scored": int(patient.regions), "global_max": int(patient.max_score),
                 "true_global_score": None if math.isnan(patient.truth) else int(patient.truth), "regions": {}}
        for _, region in mine.iterrows():
            clips = videos[(videos["patient_id"] == patient.patient_id) & (videos["region"] == region["region"])]
            entry["regions"][region["region"]] = {**_scores(region),
                                                  "videos": {row["video_id"]: _scores(row) for _, row in clips.iterrows()}}
        out.append(entry)
    return out


def _write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False,
                                     encoding="utf-8") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def predict(model_dir: str | os.PathLike, input_path: str | os.PathLike, *, out: str | os.PathLike = "predictions",
            data_root: str | os.PathLike | None = None, weights: str = "imagenet", frame_step: int | None = None,
            input_size: int | None = None, rule: str = "mode", scorer: str | None = None, batch_size: int = 32,
            progress: bool = True) -> dict:
    """Score INPUT with the model in ``model_dir``; write OUT/*.csv and predictions.json; return the JSON dict."""
    from lusfeat.backbones import BACKBONES, get_spec, resolve_weights
    from lusfeat.extract import plan_frames

    if rule not in RULES:
        raise LusfeatError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    out = Path(out)
    model = load_saved_model(model_dir)
    scorer = model.primary if scorer is None else scorer
    if scorer not in model.models:
        raise LusfeatError(f"--scorer {scorer}: {model_dir} holds the model(s) {', '.join(model.models)}; "
                           "the video model is fitted by lusfeat.fit's default preset (not --preset paper)")
    if model.extraction.backbone not in BACKBONES:
        raise LusfeatError(f"{model_dir}: trained on {model.extraction.backbone!r} features, which lusfeat.predict "
                           f"cannot compute; it rebuilds the features of the backbones {', '.join(BACKBONES)}")
    spec = get_spec(model.extraction.backbone)
    source = resolve_weights(spec, weights)
    check_compatible(model, source.identity, source.description,
                     model.extraction.input_size if input_size is None else input_size, spec.feature_dim)
    step = model.extraction.frame_step if frame_step is None else frame_step
    if step < 1:
        raise LusfeatError("--frame-step must be >= 1")
    manifest, made_manifest = read_input(input_path, data_root)
    frames = plan_frames(manifest, step)
    log.info("%d frames (every %d) from %d files of %d patient(s)", len(frames), step, len(manifest),
             manifest["patient_id"].nunique())
    began = time.perf_counter()
    features = embed_frames(frames, model, source, batch_size=batch_size, progress=progress)
    table = frame_table(frames, score_features(features, frames, model))
    seconds = time.perf_counter() - began
    videos = video_scores(table, scorer, rule)
    regions = region_scores(table, scorer, rule)
    patients = global_scores(regions)
    labelled = bool((table["score"] != UNLABELLED).any())
    result = {
        "model": {"folder": str(Path(model_dir).resolve()), "backbone": model.extraction.backbone,
                  "fold": model.info.get("fold"), "scorer": scorer, "models": list(model.models),
                  "weights": model.extraction.weights,
                  "input_size": model.extraction.input_size, "train_patients": len(model.info.get("train_patients", [])),
                  "lusfeat_version": model.info.get("lusfeat_version")},
        "input": str(Path(input_path).resolve()), "weights_source": source.description, "frame_step": step,
        "rule": rule, "frames": len(table), "seconds": round(seconds, 2),
        "agreement": agreement(regions, patients) if labelled else None,
        "patients": nested_result(videos, regions, patients),
    }
    out.mkdir(parents=True, exist_ok=True)
    if made_manifest is not None:
        _write(out / "input_manifest.csv", made_manifest.to_csv(index=False))
    for name, frame in (("frames", table), ("videos", videos), ("regions", regions), ("patients", patients)):
        _write(out / f"{name}.csv", frame.to_csv(index=False))
    _write(out / "predictions.json", json.dumps(_clean(result), indent=2) + "\n")
    return result


def summary_lines(result: dict) -> list[str]:
    lines = []
    for patient in result["patients"]:
        regions = ", ".join(f"{name} {entry['score']}" for name, entry in patient["regions"].items())
        truth = "" if patient["true_global_score"] is None else f" (true {patient['true_global_score']})"
        lines.append(f"patient {patient['patient_id']}: global score {patient['global_score']}{truth} over "
                     f"{patient['regions_scored']} regions (0-{patient['global_max']}): {regions}")
    if result["agreement"]:
        a = result["agreement"]
        lines.append(f"agreement: region accuracy {a['region_accuracy']:.3f} over {a['regions']} regions, "
                     f"global MAE {a['global_mae']:.2f} over {a['patients']} patient(s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:4]))
    parser.add_argument("input", help="a manifest CSV, or a folder of one patient's files named by region (or of patient folders)")
    parser.add_argument("--model", required=True, help="a lusfeat.fit model folder: RUN/<backbone>/fold<k>")
    parser.add_argument("--data-root", default=None, help="folder a manifest's paths are relative to "
                        "(default: $LUSFEAT_DATA_ROOT, else the manifest's folder)")
    parser.add_argument("--weights", default="imagenet", help="backbone weights, as for lusfeat.extract; must be "
                        "those the model was trained with (default: %(default)s)")
    parser.add_argument("--frame-step", type=int, default=None, help="every K-th frame (default: the model's)")
    parser.add_argument("--input-size", type=int, default=None, help="pixels (default and only accepted value: the model's)")
    parser.add_argument("--scorer", choices=tuple(MODEL_FILES), default=None,
                        help="the model whose scores make videos/regions/patients.csv (default: the folder's primary "
                        "model, video for lusfeat.fit's default preset, head for --preset paper)")
    parser.add_argument("--rule", choices=RULES, default="mode", help="region score: most frequent frame score "
                        "(ties to the higher) or argmax of the mean probabilities (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        result = predict(args.model, args.input, out=args.out, data_root=args.data_root, weights=args.weights,
                         frame_step=args.frame_step, input_size=args.input_size, rule=args.rule, scorer=args.scorer,
                         batch_size=args.batch_size, progress=not args.no_progress)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(result)))
    print(f"wrote {Path(args.out) / 'predictions.json'} and frames/videos/regions/patients.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
