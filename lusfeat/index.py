"""Which video, patient and stratum each frame belongs to: the one definition of "a video".

A **video** is a (patient, video id) pair, keyed ``"<patient_id>/<video_id>"``: two patients may
both have an ``L1.mp4``, and they stay two videos. Every module that groups frames into videos
(the video model, the distribution check, calibration per video, the metrics per video, the
aggregates) takes its keys from here. A patient's **stratum** (for stratified patient folds) is
its ``group`` from the manifest (COVID-BLUES: covid / negative), "" where it has none.

:class:`FrameIndex` is the ``index`` every estimator of :mod:`lusfeat.models` takes beside its
features (``fit(X, y, *, index)``, ``predict_proba(X, *, index)``): frame-level models ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SEPARATOR = "/"


def video_keys(frames: pd.DataFrame) -> np.ndarray:
    """One key per frame, ``"<patient_id>/<video_id>"``, unique across patients."""
    return (frames["patient_id"].astype(str) + SEPARATOR + frames["video_id"].astype(str)).to_numpy(dtype=object)


def split_key(key: str) -> tuple[str, str]:
    """``(patient_id, video_id)`` of a :func:`video_keys` key, split at the first separator."""
    patient, video = str(key).split(SEPARATOR, 1)
    return patient, video


def first_appearance(keys) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, inverse)``: the distinct keys in order of first appearance, and each frame's position in them."""
    codes, ids = pd.factorize(pd.Series(np.asarray(keys)).astype(str), sort=False)
    return np.asarray(ids, dtype=object), codes.astype(np.int64)


@dataclass(frozen=True)
class FrameIndex:
    """Per frame: its video key, its patient and its patient's stratum (all text arrays of one length)."""

    video: np.ndarray
    patient: np.ndarray
    stratum: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.video) == len(self.patient) == len(self.stratum):
            raise ValueError("video, patient and stratum must give one value per frame")

    @classmethod
    def of(cls, frames: pd.DataFrame) -> FrameIndex:
        """The index of a frame table (``patient_id``, ``video_id`` and, where known, ``group``)."""
        group = frames["group"] if "group" in frames.columns else pd.Series("", index=frames.index)
        return cls(video_keys(frames), frames["patient_id"].astype(str).to_numpy(dtype=object),
                   group.fillna("").astype(str).str.strip().to_numpy(dtype=object))

    @classmethod
    def of_videos(cls, videos, patients=None, strata=None) -> FrameIndex:
        """An index from arrays: video ids per frame, and where known patients and strata (default: one
        patient per video, no stratum)."""
        videos = np.asarray(videos).astype(str).astype(object)
        patients = videos if patients is None else np.asarray(patients).astype(str).astype(object)
        strata = np.full(len(videos), "", dtype=object) if strata is None else np.asarray(strata).astype(str).astype(object)
        return cls(videos, patients, strata)

    def __len__(self) -> int:
        return len(self.video)

    def take(self, rows) -> FrameIndex:
        """The index of these frames (positions or a boolean mask)."""
        return FrameIndex(self.video[rows], self.patient[rows], self.stratum[rows])

    def videos(self) -> tuple[np.ndarray, np.ndarray]:
        """``(video keys, inverse)`` in order of first appearance (:func:`first_appearance`)."""
        return first_appearance(self.video)

    def video_patients(self) -> np.ndarray:
        """The patient of each video of :meth:`videos`; a key shared by two patients is an error."""
        ids, inverse = self.videos()
        owners = pd.Series(self.patient).groupby(inverse).agg(lambda values: set(values))
        if (owners.map(len) > 1).any():
            raise ValueError("a video id is shared by several patients: give ids unique across patients")
        return owners.map(lambda values: next(iter(values))).to_numpy(dtype=object)

    def frame_table(self, scores) -> pd.DataFrame:
        """``patient_id, group, score`` per frame: what :func:`lusfeat.folds.patient_strata` reads."""
        return pd.DataFrame({"patient_id": self.patient.astype(str), "group": self.stratum.astype(str),
                             "score": np.asarray(scores)})
