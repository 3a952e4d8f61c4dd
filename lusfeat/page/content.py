"""What the page shows, as plain data, and the adapter from what ``lusfeat.predict`` computes.

A :class:`Page` is a batch of patients in the order of the input. Each :class:`Patient` holds its
:class:`Region` s (the regions recorded: BLUE points L1-L3, R1-R3 or any other names), each region
its :class:`Video` s, and each video its score, probabilities, score set, frames used, warnings in
words and heat-map thumbnails (:class:`HeatMap`). Files that could not be scored are
:class:`NotScored`; :class:`ModelFacts` says which model scored and how well it did on held-out
patients. Nothing here reads DICOM metadata or file contents: a patient is named by the id of the
input (the manifest's ``patient_id`` or the folder's name), a file by its path as given.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lusfeat import runfolder
from lusfeat.predictions import Predictions
from lusfeat.scores import CLASSES

MEDIAN = "median"  # the ordinal video model: the score where the cumulative probability reaches 50%
MOST_FREQUENT = "most frequent"  # head / regression: the most frequent frame score (or argmax of the mean)


@dataclass
class HeatMap:
    """One frame of a video with its Grad-CAM overlay: ``image`` is a ``data:image/jpeg;base64,...`` URI."""

    frame_index: int
    weight: float  # the frame's share of what pushes its video's score up (gradient x features), 0-1 over the video
    image: str
    upward: bool = True  # False: no frame of the video pushes its score up, this one pulls it down least


@dataclass
class HeldOutMap:
    """A held-out video of a fold with the heat map of its heaviest frame (``lusfeat.report``)."""

    patient_id: str
    region: str
    video_id: str
    truth: int
    score: int
    score_set: str
    heat: HeatMap


@dataclass
class Video:
    video_id: str
    path: str  # as given in the input
    score: int
    probabilities: list[float]  # p0..p3, calibrated where ``calibrated``
    frames: int  # frames scored
    calibrated: bool = False
    score_set: list[int] | None = None
    rule: str = MEDIAN
    in_distribution: bool | None = None  # None: the model folder has no check
    distance: float | None = None
    warnings: list[str] = field(default_factory=list)  # in words
    heatmaps: list[HeatMap] = field(default_factory=list)
    true_score: int | None = None


@dataclass
class Region:
    name: str
    score: int
    videos: list[Video]
    score_set: list[int] | None = None
    true_score: int | None = None


@dataclass
class NotScored:
    path: str
    patient_id: str
    region: str
    reason: str


@dataclass
class Patient:
    patient_id: str
    regions: list[Region]
    not_scored: list[NotScored] = field(default_factory=list)
    true_global: int | None = None

    @property
    def global_score(self) -> int:
        return sum(region.score for region in self.regions)

    @property
    def global_max(self) -> int:
        return int(CLASSES.max()) * len(self.regions)

    @property
    def global_range(self) -> tuple[int, int] | None:
        """The global scores the regions' score sets allow: (sum of the smallest, sum of the largest members)."""
        if not self.regions or any(region.score_set is None for region in self.regions):
            return None
        return (sum(min(region.score_set) for region in self.regions),
                sum(max(region.score_set) for region in self.regions))


@dataclass
class ModelFacts:
    folder: str
    backbone: str
    engine: str
    precision: str
    fold: str  # "final" or "fold <k>"
    scorer: str
    fitted: str  # date the model was fitted (YYYY-MM-DD)
    train_patients: int
    qwk: float | None = None  # video-level QWK of the scorer on held-out patients
    qwk_source: str = ""  # where that was measured, in words
    coverage: float | None = None  # the sets' target coverage as used
    measured_coverage: float | None = None  # measured on held-out videos at the model's own target
    measured_target: float | None = None
    frame_step: int = 1


@dataclass
class Page:
    patients: list[Patient]
    model: ModelFacts
    files: list[str]  # every file read, by its path as given
    heatmaps_per_video: int = 0
    made: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))
    notes: list[str] = field(default_factory=list)  # batch-wide notes in words


# --------------------------------------------------------------------------- warnings in words


def short_stream_words(message: str) -> str:
    """``embed.short_stream_warning``'s message without its path (the card names the file)."""
    return "frames are missing: " + message.split(": ", 1)[-1]


def distribution_words(distance: float | None, threshold: float | None) -> str:
    beyond = f" (distance {distance:.2f}, threshold {threshold:.2f})" if distance is not None and threshold else ""
    return ("unlike the videos the model was trained on" + beyond + ": another probe, hospital, body part or no lung "
            "ultrasound at all? The model has never seen videos like it: do not trust this score.")


# --------------------------------------------------------------------------- model facts


def read_json(path: Path) -> dict:
    """A run folder's JSON record, ``{}`` where there is none; a damaged one is an error (runfolder's reader)."""
    return runfolder.read_json(path) or {}


def model_facts(folder: Path, info: dict, extraction: Any, scorer: str, coverage: float | None) -> ModelFacts:
    """What scored: from ``model.json`` (``info``), the extraction record, and the held-out metrics beside it.

    The QWK and coverage are the scorer's on held-out patients: the pooled folds
    (``<backbone>/pooled/metrics.json``, what a final model expects) or else the fold's own test patients.
    """
    folder = Path(folder)
    fold = info.get("fold")
    pooled = read_json(folder.parent / "pooled" / "metrics.json")
    own = read_json(folder / "metrics.json") if fold != "final" else {}
    source, metrics = ((f"{folder.parent.name} cross-validation, every patient held out once", pooled) if pooled.get(scorer)
                       else (f"the held-out patients of fold {fold}", own))
    block = metrics.get(scorer) or {}
    video = block.get("video") or {}
    sets = ((block.get("calibrated") and block.get("sets")) or block.get("sets") or {})
    fitted = info.get("fitted") or "not recorded"  # model.json records it from 2026-12-07
    return ModelFacts(
        folder=str(folder), backbone=extraction.backbone, engine=extraction.engine, precision=extraction.precision,
        fold="final" if fold == "final" else f"fold {fold}", scorer=scorer, fitted=str(fitted)[:10],
        train_patients=len(info.get("train_patients", [])),
        qwk=video.get("qwk", block.get("qwk")) if block else None, qwk_source=source if block else "",
        coverage=coverage, measured_coverage=(sets.get("video") or {}).get("coverage"),
        measured_target=sets.get("target_coverage"), frame_step=int(extraction.frame_step))


# --------------------------------------------------------------------------- from lusfeat.predict


def _set(entry: dict) -> list[int] | None:
    return list(entry["score_set"]) if entry.get("score_set") is not None else None


def from_predict(result: dict, table: Predictions, order: list[str], facts: ModelFacts,
                 heatmaps: dict[tuple[str, str], list[HeatMap]] | None = None, heatmaps_per_video: int = 0) -> Page:
    """The page of one ``predict`` run.

    ``table``: the :class:`~lusfeat.predictions.Predictions` of the frames scored: per video its frames,
    path, the scorer's calibrated probabilities (their mean over the video's frames; the video model gives
    each frame its video's) and boolean score set; ``result``: predict's ``predictions.json`` dict for
    what is aggregated or checked beyond the frames (scores of videos and regions by the rule, region
    sets, ``in_distribution``, ``not_scored``, ``warnings``, ``uncertainty``); ``order``: the patient ids
    in the order of the input; ``heatmaps``: per ``(patient_id, video_id)``.
    """
    heatmaps = heatmaps or {}
    answers = table[facts.scorer]
    calibrated = answers.calibrated is not None
    probabilities = answers.calibrated if calibrated else answers.probabilities
    threshold = (result.get("in_distribution") or {}).get("threshold")
    rule = MEDIAN if facts.scorer == "video" else MOST_FREQUENT
    frames = table.frames.assign(patient_id=table.frames["patient_id"].astype(str))
    rows_of = frames.groupby(["patient_id", "video_id"], sort=False).indices
    skipped = [NotScored(str(row["path"]), str(row["patient_id"]), str(row["region"]), str(row["reason"]))
               for row in result.get("not_scored", [])]
    scored = {str(entry["patient_id"]): entry for entry in result.get("patients", [])}
    patients = []
    for patient_id in order:
        entry = scored.get(patient_id) or {}
        regions = []
        for name, region in entry.get("regions", {}).items():
            videos = []
            for video_id, clip in region["videos"].items():
                rows = rows_of[(patient_id, video_id)]
                path = str(frames["path"].iloc[rows[0]])
                words = [short_stream_words(m) for m in result.get("warnings", []) if m.startswith(f"{path}: ")]
                if clip.get("in_distribution") is False:
                    words.insert(0, distribution_words(clip.get("distance"), threshold))
                score_set = ([int(k) for k in CLASSES if answers.sets[rows[0], k]] if answers.sets is not None
                             else None)
                truth = int(frames["score"].iloc[rows[0]])
                videos.append(Video(video_id, path, int(clip["score"]), probabilities[rows].mean(axis=0).tolist(),
                                    len(rows), calibrated, score_set, rule, clip.get("in_distribution"),
                                    clip.get("distance"), words, heatmaps.get((patient_id, video_id), []),
                                    None if truth < 0 else truth))
            regions.append(Region(name, int(region["score"]), videos, _set(region), region.get("true_score")))
        mine = [row for row in skipped if row.patient_id == patient_id]
        patients.append(Patient(patient_id, regions, mine, entry.get("true_global_score")))
    files = list(dict.fromkeys([*frames["path"].astype(str), *(row.path for row in skipped)]))
    notes = []
    check = result.get("in_distribution") or {}
    if check and not check.get("checked"):
        notes.append("This model folder has no check of whether a video is like the training videos (fitted by an "
                     "older lusfeat): videos unlike them are not flagged. Refit with lusfeat.fit to get it.")
    if not calibrated:
        notes.append("The probabilities are the model's own, not calibrated, and there are no score sets (a model "
                     "folder fitted before lusfeat had them): refit with lusfeat.fit.")
    return Page(patients, facts, files, heatmaps_per_video, notes=notes)


def finite(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
