"""Putting pages together: the page of a ``predict`` run with its heat maps, and the fit report's heat maps of
held-out videos."""

from __future__ import annotations

import logging
import os
import re
import time
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.page.content import HeatMap, HeldOutMap, Page, from_predict, model_facts, read_json
from lusfeat.page.render import render
from lusfeat.page.thumbnails import video_heatmaps
from lusfeat.predictions import Predictions

log = logging.getLogger("lusfeat.page")
HEATMAPS_PER_SCORE = 2  # the fit report: held-out videos per true score and fold (one right, one wrong where there are)


def predict_heatmaps(model, scorer: str, frames: pd.DataFrame, features: np.ndarray, source,
                     count: int) -> dict[tuple[str, str], list[HeatMap]]:
    """Per ``(patient_id, video_id)`` of ``frames`` (the frames scored, aligned with ``features``), the ``count``
    frames that weigh most in the scorer's score, with their Grad-CAM overlays (TensorFlow float32 backbone)."""
    if count < 1:
        return {}
    from lusfeat.backbones import build_map_extractor, get_spec

    began = time.perf_counter()
    spec = get_spec(model.extraction.backbone)
    extractor = build_map_extractor(spec, source, model.extraction.input_size)
    out = {}
    keyed = frames.reset_index(drop=True).assign(patient_id=frames["patient_id"].astype(str).to_numpy())
    for (patient, video), rows in keyed.groupby(["patient_id", "video_id"], sort=False):
        thumbs, _ = video_heatmaps(extractor, model.models[scorer], rows.reset_index(drop=True),
                                   features[rows.index.to_numpy()], model.extraction.input_size, count)
        out[(patient, str(video))] = thumbs
    log.info("heat maps: %d per video of %d videos in %.1f s", count, len(out), time.perf_counter() - began)
    return out


def predict_page(result: dict, table: Predictions, model, scorer: str, frames: pd.DataFrame, features: np.ndarray,
                 source, order: list[str], heatmaps: int, coverage: float | None) -> str:
    """The HTML of ``OUT/report.html`` for one ``predict`` run (see :func:`lusfeat.page.content.from_predict`);
    ``frames``: the frame plan the ``features`` were made from (with each frame's ``file``), row for row."""
    chosen = coverage if coverage is not None else (result.get("uncertainty") or {}).get("coverage")
    facts = model_facts(Path(model.folder), model.info, model.extraction, scorer, chosen)
    try:
        maps, missing = predict_heatmaps(model, scorer, frames, features, source, heatmaps), ""
    except LusfeatError as error:  # e.g. a scorer without a Grad-CAM target: the scores stand without maps
        log.warning("no heat maps on the page: %s", error)
        maps, missing = {}, f"No heat maps: {error}"
    page: Page = from_predict(result, table, order, facts, maps, heatmaps if not missing else 0)
    page.notes += [missing] if missing else []
    return render(page)


# --------------------------------------------------------------------------- the fit report's held-out heat maps


def choose_held_out(videos: pd.DataFrame, per_score: int) -> pd.DataFrame:
    """Per true score, ``per_score`` videos taking turns between right and wrong scores (the first of each in
    patient and video order), so a reader sees what the model looks at when it is right and when it is wrong."""
    chosen = []
    for _, mine in videos.groupby("truth", sort=True):
        mine = mine.sort_values(["patient_id", "video_id"], key=lambda c: c.map(natural_key))
        right, wrong = mine[mine["score"] == mine["truth"]], mine[mine["score"] != mine["truth"]]
        turns = [row for pair in zip_longest(right.itertuples(index=False), wrong.itertuples(index=False))
                 for row in pair if row is not None]
        chosen += turns[:per_score]
    return pd.DataFrame(chosen, columns=videos.columns)


def natural_key(value) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(value)))


def held_out_heatmaps(fold_dir: Path, predictions: Predictions, data_root: Path | None, weights: str,
                      per_score: int, extractors: dict | None = None) -> tuple[list[HeldOutMap], str]:
    """``(maps, note)``: the heaviest frame's heat map of ``per_score`` held-out videos per true score of one fold.

    ``predictions``: the fold's (``predictions.csv``); the pooled features come from the feature file its
    ``metrics.json`` names, the frames from the videos under ``data_root``. Where something is missing the
    maps are empty and ``note`` says what to pass.
    """
    from lusfeat.aggregate import video_scores
    from lusfeat.backbones import build_map_extractor, get_spec, resolve_weights
    from lusfeat.errors import LusfeatError
    from lusfeat.runfolder import check_compatible, load_saved_model
    from lusfeat.store import load_features

    try:
        model = load_saved_model(fold_dir)
    except LusfeatError as error:
        return [], f"no heat maps: {error}"
    name = model.primary
    features_path = Path(((read_json(fold_dir / "metrics.json").get("features")) or {}).get("path", ""))
    if not features_path.is_file():
        return [], f"no heat maps: the feature file of this fold ({features_path}) is not there"
    frames = predictions.frames.assign(patient_id=predictions.frames["patient_id"].astype(str))
    root = Path(data_root) if data_root else None
    frames["file"] = [str(path if Path(path).is_absolute() or root is None else root / path) for path in frames["path"]]
    if not all(Path(file).is_file() for file in frames["file"].drop_duplicates()):
        return [], "no heat maps: the videos are not found; pass --data-root (the folder that holds the manifest's paths)"
    spec = get_spec(model.extraction.backbone)
    try:
        source = resolve_weights(spec, weights)
        check_compatible(model, source.identity, source.description, model.extraction.input_size, spec.feature_dim)
    except LusfeatError as error:
        return [], f"no heat maps: {error}"
    extractors = {} if extractors is None else extractors
    key = (spec.name, source.identity, model.extraction.input_size)
    if key not in extractors:
        extractors[key] = build_map_extractor(spec, source, model.extraction.input_size)
    stored = load_features(features_path, copies=[0])
    position = {(str(p), int(i)): n for n, (p, i) in enumerate(zip(stored.frames["path"], stored.frames["frame_index"], strict=True))}
    videos = video_scores(predictions, name, calibrated=True).rename(columns={"pred": "score"})
    videos = videos.assign(patient_id=videos["patient_id"].astype(str),
                           score_set=videos["score_set"] if "score_set" in videos.columns else "")
    maps = []
    for row in choose_held_out(videos, per_score).itertuples(index=False):
        rows = frames[(frames["patient_id"] == row.patient_id) & (frames["video_id"] == row.video_id)]
        rows = rows.sort_values("frame_index").reset_index(drop=True)
        index = [position[(str(p), int(i))] for p, i in zip(rows["path"], rows["frame_index"], strict=True)]
        thumbs, _ = video_heatmaps(extractors[key], model.models[name], rows, stored.features[0][index],
                                   model.extraction.input_size, 1)
        maps += [HeldOutMap(row.patient_id, row.region, str(row.video_id), int(row.truth), int(row.score),
                            str(row.score_set), thumb) for thumb in thumbs]
    return maps, ""



def report_heatmaps(run, per_score: int, data_root: str | None, weights: str) -> dict[str, str]:
    """Per fold section of a ``lusfeat.report`` run (``run.sections``: backbone -> sections with ``name``
    "fold k", ``anchor`` and ``predictions``): section anchor -> the HTML of its held-out heat maps.
    ``data_root``: where the run's videos are (default: $LUSFEAT_DATA_ROOT)."""
    from lusfeat.manifest import DATA_ROOT_ENV
    from lusfeat.page.render import held_out_html

    data_root = data_root or os.environ.get(DATA_ROOT_ENV)
    found, extractors = {}, {}
    for backbone, sections in run.sections.items():
        for section in (s for s in sections if re.fullmatch(r"fold \d+", s.name)):
            maps, note = held_out_heatmaps(run.path / backbone / section.name.replace(" ", ""), section.predictions,
                                           data_root, weights, per_score, extractors)
            found[section.anchor] = held_out_html(maps, note)
    return found
