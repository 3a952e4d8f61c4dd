"""Score new lung-ultrasound data with a saved model: frame, video, region and global scores.

    python -m lusfeat.predict --model RUN/<backbone>/final|fold<k> INPUT [--data-root DIR] [--scorer video|head|logreg]
        [--weights imagenet|none|FILE|DIR] [--frame-step K] [--rule mode|mean_proba] [--coverage 0.9] [--out DIR]
        [--strict]

INPUT is either

- a manifest CSV (``path, patient_id, region`` and ``score``, which may be empty; see
  ``lusfeat.manifest``), or
- a folder of one patient's videos or images, the patient id being the folder's name, or a
  folder of such patient folders. Each file's region is read from its name: the **last**
  ``_``/``-``/space/``.``-separated token made of 1-3 letters then 1-2 digits, upper-cased
  (``L1.mp4`` -> L1, ``R2_2.mp4`` -> R2, ``patient_9_L1.mp4`` -> L1, ``rpl3-0007.png`` -> RPL3).
  A file without such a token is an error: rename it or write a manifest. Files are taken by
  their content: any image or video FFmpeg decodes, and DICOM files (``.dcm`` or no suffix).

A file that cannot be read at all (no video stream, nothing decodes, a DICOM object without
pixel data, ...) is listed as not scored, with the reason, in ``not_scored.csv``,
``predictions.json`` and the summary, and every other file is scored; the command fails only
when no file could be scored, or, with ``--strict``, when any file cannot be read (before any
work). A video whose container announces more frames than decode is scored on the frames that
decode, with a warning naming it and both counts.

The model folder is one that ``lusfeat.fit`` wrote: ``model.json`` (backbone, weights identity,
input size, pooling, frame step of the features it was trained on; the models trained and the
primary one, each model file's sha256) and the models saved as data (``<model>.json`` +
``<model>.npz``, ``docs/formats.md``; a folder holding a pickle is refused): ``head`` (pooled features
-> 4 probabilities), ``logreg``, and with fit's default preset ``video`` (the video-level ordinal
model, the primary one: each frame carries its video's score). Features are computed by stage one's own code
(``lusfeat.embed``, ``lusfeat.backbones``) from the weights you give; weights or an input size
other than the model's are refused, naming both, since they would give wrong scores silently; so
are an inference engine or precision other than the model's (``--engine``, ``--precision``:
features are embedded as the model's features were, e.g. OpenVINO int8 from its cached model).

Writes to OUT: ``frames.csv`` (per frame, for every model of the folder: class probabilities
``<model>_p0..p3`` and ``<model>_pred``), and by the scorer (``--scorer``, default the
folder's primary model): ``videos.csv``, ``regions.csv``, ``patients.csv`` (global score with
the number of regions scored) and ``predictions.json`` (all of it, nested per patient, with the
model's identity), and ``not_scored.csv``. Where the input carries true scores, the agreement is
reported too.

For new patients use the final model (``lusfeat.fit --final``: trained on every patient); a fold
model (``fold<k>``) was trained on two thirds of them. Where the folder has them (lusfeat.fit
since calibration), probabilities are calibrated (``<model>_cal_p0..p3`` in ``frames.csv``; the
``p0..p3`` of ``videos.csv`` and ``regions.csv``), and every video and region gets a **score set**
(``score_set``, e.g. ``{1,2}``, and ``set_size``): the scores that, at the chosen ``--coverage``
(default: the model's, 90%), hold the true score for that share of videos (measured on held-out
patients; ``docs/uncertainty.md``). A wide set means the model cannot tell those scores apart.

``videos.csv`` also tells, per video, whether it looks like the videos the model was trained on:
``distance`` (to the training patients' pooled video features, ``lusfeat.models.distribution``)
and ``in_distribution`` (False beyond the model's threshold, which flags about 5% of new
COVID-BLUES videos). Scores of a video flagged False are of a kind the model has never seen
(another probe, hospital, body part, or no lung ultrasound at all): do not trust them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd

from lusfeat.aggregate import RULES, agreement, global_scores, region_scores, video_scores
from lusfeat.backbones import BACKBONES, get_spec, resolve_weights
from lusfeat.cli import add_verbose_argument, start
from lusfeat.embed import NOT_SCORED_COLUMNS, embed_frames, plan_media
from lusfeat.engines import ALL_PRECISIONS, ENGINES, check_engine, engine_version
from lusfeat.errors import LusfeatError
from lusfeat.files import make_folder, write_json, write_text
from lusfeat.manifest import read_input
from lusfeat.models.registry import MODELS
from lusfeat.page.build import predict_page
from lusfeat.runfolder import check_compatible, load_saved_model
from lusfeat.scores import CLASSES, UNLABELLED
from lusfeat.training import distribution_table

log = logging.getLogger("lusfeat.predict")
HEATMAPS = 1  # frames per video with a heat map on report.html (docs/cli.md: its cost)


def _scores(row: pd.Series) -> dict:
    out = {"score": int(row["pred"]), "probabilities": [round(float(row[f"p{k}"]), 6) for k in CLASSES],
           "frames": int(row["frames"]), "frames_per_score": [int(row[f"n_pred{k}"]) for k in CLASSES],
           "true_score": None if int(row["truth"]) == UNLABELLED else int(row["truth"])}
    if "score_set" in row.index:
        out["score_set"] = [int(k) for k in str(row["score_set"]).strip("{}").split(",") if k]
    if "in_distribution" in row.index:  # a video's row
        known = not pd.isna(row["in_distribution"])
        out["distance"] = round(float(row["distance"]), 4) if known else None
        out["in_distribution"] = bool(row["in_distribution"]) if known else None
    return out


def add_distribution(videos: pd.DataFrame, features, frames: pd.DataFrame, model) -> pd.DataFrame:
    """``videos`` with ``distance`` and ``in_distribution`` per video (empty where the model folder has no check)."""
    if model.distribution is None:
        return videos.assign(distance=float("nan"), in_distribution=pd.NA)
    checked = distribution_table(model.distribution, features, frames)
    checked["patient_id"] = checked["patient_id"].astype(str)
    merged = videos.assign(patient_id=videos["patient_id"].astype(str)).merge(
        checked, on=["patient_id", "video_id"], how="left", validate="many_to_one")
    return merged.assign(in_distribution=merged["in_distribution"].astype(bool))


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


def predict(model_dir: str | os.PathLike, input_path: str | os.PathLike, *, out: str | os.PathLike = "predictions",
            data_root: str | os.PathLike | None = None, weights: str = "imagenet", frame_step: int | None = None,
            input_size: int | None = None, rule: str = "mode", scorer: str | None = None, batch_size: int = 32,
            coverage: float | None = None, progress: bool = True, strict: bool = False, engine: str | None = None,
            precision: str | None = None, heatmaps: int = HEATMAPS) -> dict:
    """Score INPUT with the model in ``model_dir``; write OUT/*.csv and predictions.json; return the JSON dict.

    Files that cannot be read are left out and listed (``not_scored``); with ``strict`` they are refused
    before any work. Raises :class:`LusfeatError` when no file can be scored. ``engine`` / ``precision``:
    only the model's are accepted (``None``: the model's). ``heatmaps``: frames per video with a heat map on
    ``OUT/report.html`` (0: none).
    """
    if rule not in RULES:
        raise LusfeatError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    if coverage is not None and not 0 < coverage < 1:
        raise LusfeatError(f"--coverage {coverage}: give a share between 0 and 1, e.g. 0.9")
    if heatmaps < 0:
        raise LusfeatError(f"--heatmaps {heatmaps}: give a number of frames per video, 0 for none")
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
                     model.extraction.input_size if input_size is None else input_size, spec.feature_dim,
                     engine, precision)
    check_engine(model.extraction.engine, model.extraction.precision)
    installed = engine_version(model.extraction.engine, model.extraction.precision)
    if model.extraction.engine_version and model.extraction.engine_version != installed:
        log.warning("the model's features were made with %s %s, this is %s: expect tiny differences",
                    model.extraction.engine, model.extraction.engine_version, installed)
    step = model.extraction.frame_step if frame_step is None else frame_step
    if step < 1:
        raise LusfeatError("--frame-step must be >= 1")
    manifest, made_manifest = read_input(input_path, data_root, keep_unreadable=not strict)
    unreadable = manifest[manifest["unreadable"] != ""] if not strict else manifest.iloc[:0]
    refused = unreadable.assign(reason=unreadable.get("unreadable", pd.Series(dtype=str)))[NOT_SCORED_COLUMNS]
    plan = plan_media(manifest.drop(unreadable.index), step, skip_unreadable=not strict)
    not_scored = pd.concat([refused, plan.not_scored], ignore_index=True)
    for message in plan.warnings:
        log.warning("warning: %s", message)
    for row in not_scored.itertuples(index=False):
        log.warning("not scored: %s: %s", row.path, row.reason)
    frames = plan.frames
    if frames.empty:
        listed = "; ".join(f"{row.path} ({row.reason})" for row in not_scored.itertuples(index=False))
        raise LusfeatError(f"{input_path}: nothing could be scored, no file of it can be read: {listed}")
    log.info("%d frames (every %d) from %d files of %d patient(s)", len(frames), step, frames["path"].nunique(),
             frames["patient_id"].nunique())
    began = time.perf_counter()
    features = embed_frames(frames, model.extraction, source, batch_size=batch_size, progress=progress)
    table = model.predictions(features, frames, coverage)
    seconds = time.perf_counter() - began
    # videos and regions by the scorer's calibrated probabilities, where it has them
    videos = add_distribution(video_scores(table, scorer, rule, calibrated=True), features, frames, model)
    regions = region_scores(table, scorer, rule, calibrated=True)
    patients = global_scores(regions)
    labelled = bool((table.truth != UNLABELLED).any())
    result = {
        "model": {"folder": str(Path(model_dir).resolve()), "backbone": model.extraction.backbone,
                  "fold": model.info.get("fold"), "scorer": scorer, "models": list(model.models),
                  "weights": model.extraction.weights, "engine": model.extraction.engine,
                  "precision": model.extraction.precision,
                  "input_size": model.extraction.input_size, "train_patients": len(model.info.get("train_patients", [])),
                  "lusfeat_version": model.info.get("lusfeat_version")},
        "uncertainty": uncertainty_record(model, scorer, coverage),
        "input": str(Path(input_path).resolve()), "weights_source": source.description, "frame_step": step,
        "rule": rule, "frames": len(table), "seconds": round(seconds, 2),
        "agreement": agreement(regions, patients) if labelled else None,
        "patients": nested_result(videos, regions, patients),
        "not_scored": not_scored.to_dict(orient="records"),
        "warnings": list(plan.warnings),
        "in_distribution": distribution_summary(videos, model),
    }
    order = manifest["patient_id"].astype(str).drop_duplicates().tolist()
    page = predict_page(result, table, model, scorer, frames, features, source, order, heatmaps, coverage)
    make_folder(out)
    write_text(page, out / "report.html")
    if made_manifest is not None:
        write_text(made_manifest.to_csv(index=False), out / "input_manifest.csv")
    table.write(out / "frames.csv")
    for name, frame in (("videos", videos), ("regions", regions), ("patients", patients), ("not_scored", not_scored)):
        write_text(frame.to_csv(index=False), out / f"{name}.csv")
    write_json(result, out / "predictions.json")
    return result


def uncertainty_record(model, scorer: str, coverage: float | None) -> dict:
    """What the probabilities and sets of ``predictions.json`` are, in words a reader can check."""
    fitted = model.models[scorer]
    if not fitted.calibrated:
        return {"calibrated": False, "score_sets": False,
                "note": f"{model.folder} has no calibration for {scorer} (fitted before lusfeat had it): probabilities "
                        "are the model's own, and there are no score sets; refit with lusfeat.fit"}
    calibrator, conformal = fitted.calibrator_, fitted.conformal_
    chosen = conformal.coverage if coverage is None else coverage
    return {"calibrated": True, "temperature": calibrator.temperature_, "link": calibrator.link,
            "score_sets": True, "coverage": chosen, "method": conformal.method,
            "calibration_videos": conformal.n_calibration_,
            "note": (f"probabilities are calibrated (temperature {calibrator.temperature_:.2f}); each video's "
                     f"score_set holds its true score for about {chosen:.0%} of videos of new patients drawn like the "
                     "training ones (conformal prediction, calibrated on training patients only). It is a promise "
                     "on average over videos, not for each one; a region's set spans its videos' sets.")}


def distribution_summary(videos: pd.DataFrame, model) -> dict:
    """The videos flagged as unlike the training videos, and the threshold; ``checked`` False for older folders."""
    if model.distribution is None:
        return {"checked": False, "videos": len(videos), "flagged": [], "threshold": None}
    flagged = videos.loc[~videos["in_distribution"].astype(bool)]
    return {"checked": True, "videos": len(videos), "threshold": float(model.distribution.threshold_),
            "flagged": [{"patient_id": row.patient_id, "video_id": row.video_id, "distance": round(float(row.distance), 4)}
                        for row in flagged.itertuples(index=False)]}


def summary_lines(result: dict) -> list[str]:
    lines = []
    for patient in result["patients"]:
        regions = ", ".join(f"{name} {entry['score']}" + (" " + "{" + ",".join(map(str, entry["score_set"])) + "}"
                                                          if "score_set" in entry else "")
                            for name, entry in patient["regions"].items())
        truth = "" if patient["true_global_score"] is None else f" (true {patient['true_global_score']})"
        lines.append(f"patient {patient['patient_id']}: global score {patient['global_score']}{truth} over "
                     f"{patient['regions_scored']} regions (0-{patient['global_max']}): {regions}")
    if result["agreement"]:
        a = result["agreement"]
        lines.append(f"agreement: region accuracy {a['region_accuracy']:.3f} over {a['regions']} regions, "
                     f"global MAE {a['global_mae']:.2f} over {a['patients']} patient(s)")
    if result.get("uncertainty", {}).get("score_sets"):
        lines.append(f"{{...}}: score sets at {result['uncertainty']['coverage']:.0%} coverage (see predictions.json)")
    check = result.get("in_distribution") or {}
    if check.get("flagged"):
        names = ", ".join(f"{v['patient_id']}/{v['video_id']} ({v['distance']:.2f})" for v in check["flagged"])
        lines.append(f"warning: {len(check['flagged'])} of {check['videos']} videos look unlike the videos the model "
                     f"was trained on (distance above {check['threshold']:.2f}): {names}; their scores are of a kind "
                     "the model has never seen (another probe, hospital or body part?): do not trust them")
    elif check and not check.get("checked"):
        lines.append("note: this model folder has no distribution check (fitted by an older lusfeat): videos unlike "
                     "the training data are not flagged; refit with lusfeat.fit to get it")
    for message in result.get("warnings", []):
        lines.append(f"warning: {message}")
    for row in result.get("not_scored", []):
        lines.append(f"not scored: {row['path']} (patient {row['patient_id']}, region {row['region']}): {row['reason']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:4]))
    parser.add_argument("input", help="a manifest CSV, or a folder of one patient's files named by region (or of patient folders)")
    parser.add_argument("--model", required=True, help="a lusfeat.fit model folder: RUN/<backbone>/final (fit --final: "
                        "trained on all patients, recommended for new patients) or RUN/<backbone>/fold<k>")
    parser.add_argument("--coverage", type=float, default=None, help="score sets hold the true score for this share "
                        "of videos (default: the model's, 0.9 unless fit --coverage said otherwise)")
    parser.add_argument("--data-root", default=None, help="folder a manifest's paths are relative to "
                        "(default: $LUSFEAT_DATA_ROOT, else the manifest's folder)")
    parser.add_argument("--weights", default="imagenet", help="backbone weights, as for lusfeat.extract; must be "
                        "those the model was trained with (default: %(default)s)")
    parser.add_argument("--frame-step", type=int, default=None, help="every K-th frame (default: the model's)")
    parser.add_argument("--input-size", type=int, default=None, help="pixels (default and only accepted value: the model's)")
    parser.add_argument("--scorer", choices=tuple(MODELS), default=None,
                        help="the model whose scores make videos/regions/patients.csv (default: the folder's primary "
                        "model, video for lusfeat.fit's default preset, head for --preset paper)")
    parser.add_argument("--rule", choices=RULES, default="mode", help="region score: most frequent frame score "
                        "(ties to the higher) or argmax of the mean probabilities (default: %(default)s)")
    parser.add_argument("--engine", choices=tuple(ENGINES), default=None,
                        help="inference engine; only the model's is accepted (default: the model's, from model.json)")
    parser.add_argument("--precision", choices=ALL_PRECISIONS, default=None,
                        help="backbone compute type; only the model's is accepted (default: the model's)")
    parser.add_argument("--heatmaps", type=int, default=HEATMAPS, help="frames per video shown with their heat map "
                        "on report.html, those that weigh most in its score (0: none; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--strict", action="store_true", help="refuse the input, before any work, if any file "
                        "cannot be read (default: score the others and list it as not scored)")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    start(args.verbose)
    try:
        result = predict(args.model, args.input, out=args.out, data_root=args.data_root, weights=args.weights,
                         frame_step=args.frame_step, input_size=args.input_size, rule=args.rule, scorer=args.scorer,
                         batch_size=args.batch_size, coverage=args.coverage, progress=not args.no_progress,
                         strict=args.strict, engine=args.engine, precision=args.precision,
                         heatmaps=args.heatmaps)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(result)))
    print(f"wrote {Path(args.out) / 'report.html'}, predictions.json and frames/videos/regions/patients/not_scored.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
