from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.folds import (
    assert_patients_disjoint,
    load_or_make_folds,
    make_folds,
    patient_strata,
    read_folds,
    split_frames,
)


def synthetic_frames(n_covid: int = 18, n_negative: int = 12, frames_each: int = 4, with_group: bool = True) -> pd.DataFrame:
    rows = []
    for number in range(n_covid + n_negative):
        group = ("covid" if number < n_covid else "negative") if with_group else ""
        for frame in range(frames_each):
            rows.append({"patient_id": str(number + 1), "group": group, "score": (number + frame) % 4,
                         "video_id": f"p{number}_v{frame % 2}"})
    return pd.DataFrame(rows)


def test_folds_cover_every_patient_once_balanced_by_group():
    frames = synthetic_frames()
    strata = patient_strata(frames)
    folds = make_folds(strata, n_folds=3, seed=0)
    assert sorted(folds["patient_id"], key=int) == [str(p) for p in range(1, 31)]
    assert sorted(folds["fold"].unique()) == [1, 2, 3]
    per_fold = folds.groupby("fold").size()
    assert per_fold.max() - per_fold.min() <= 1
    by_group = folds.assign(group=folds["patient_id"].map(strata)).groupby(["group", "fold"]).size().unstack()
    assert (by_group.max(axis=1) - by_group.min(axis=1)).max() <= 1
    assert by_group.loc["covid"].sum() == 18 and by_group.loc["negative"].sum() == 12


def test_folds_are_seeded():
    strata = patient_strata(synthetic_frames())
    first, again, other = make_folds(strata, 3, seed=0), make_folds(strata, 3, seed=0), make_folds(strata, 3, seed=1)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_strata_use_group_where_present_else_highest_score():
    frames = pd.DataFrame({
        "patient_id": ["a", "a", "b", "b", "c"],
        "group": ["covid", "covid", "", "", "negative"],
        "score": [0, 3, 1, 2, 0],
    })
    strata = patient_strata(frames)
    assert strata.to_dict() == {"a": "covid", "b": "max score 2", "c": "negative"}


def test_strata_without_group_spread_severe_patients():
    frames = synthetic_frames(with_group=False, frames_each=1)  # patient n has score (n - 1) % 4
    strata = patient_strata(frames)
    folds = make_folds(strata, 3, seed=0)
    counts = folds.assign(stratum=folds["patient_id"].map(strata)).groupby(["stratum", "fold"]).size().unstack(fill_value=0)
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1


def test_too_few_patients_is_a_user_error():
    with pytest.raises(LusfeatError, match="cannot fill"):
        make_folds(patient_strata(synthetic_frames(2, 0)), 3)


def test_folds_file_is_written_then_reused(tmp_path: Path):
    frames = synthetic_frames()
    folds, reused = load_or_make_folds(tmp_path, frames, 3, seed=0)
    assert not reused
    assert list(pd.read_csv(tmp_path / "folds.csv").columns) == ["patient_id", "fold"]
    again, reused = load_or_make_folds(tmp_path, frames, 3, seed=7)  # another seed: the file still wins
    assert reused
    pd.testing.assert_frame_equal(folds, again)


def test_folds_file_that_misses_patients_is_an_error(tmp_path: Path):
    load_or_make_folds(tmp_path, synthetic_frames(6, 6), 3)
    with pytest.raises(LusfeatError, match="does not cover 18 patient"):
        load_or_make_folds(tmp_path, synthetic_frames(18, 12), 3)


def test_folds_file_with_other_k_is_an_error(tmp_path: Path):
    load_or_make_folds(tmp_path, synthetic_frames(), 3)
    with pytest.raises(LusfeatError, match="has 3 folds but --folds 5"):
        load_or_make_folds(tmp_path, synthetic_frames(), 5)


@pytest.mark.parametrize("text", ["patient_id,fold\n1,1\n2,3\n", "patient_id,fold\n1,1\n1,2\n", "id,fold\n1,1\n2,2\n"])
def test_broken_folds_file_is_an_error(tmp_path: Path, text: str):
    (tmp_path / "folds.csv").write_text(text)
    with pytest.raises(LusfeatError):
        read_folds(tmp_path / "folds.csv")


def test_split_is_patient_disjoint_and_covers_all_frames():
    frames = synthetic_frames()
    folds = make_folds(patient_strata(frames), 3, seed=0)
    tested = []
    for fold in (1, 2, 3):
        train, test = split_frames(frames, folds, fold)
        assert set(frames["patient_id"].iloc[train]).isdisjoint(frames["patient_id"].iloc[test])
        assert len(train) + len(test) == len(frames)
        tested.extend(test)
    assert sorted(tested) == list(range(len(frames)))


def test_disjointness_check_names_the_shared_patient():
    assert_patients_disjoint(["1", "2"], ["3"])
    with pytest.raises(LusfeatError, match="patient.s. 2 found in both"):
        assert_patients_disjoint(np.array(["1", "2"]), ["2", "3"])
