from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from lusfeat.errors import LusfeatError
from lusfeat.manifest import build_covid_blues_manifest, main, read_manifest

VIDEO = "COVID-BLUES/lus_videos/patient_1_L1.mp4"


def _manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def _error(path: Path, root: Path, **kwargs) -> str:
    with pytest.raises(LusfeatError) as info:
        read_manifest(path, root, **kwargs)
    return str(info.value)


def test_reads_valid_rows_and_resolves_paths(tmp_path, data_root):
    path = _manifest(tmp_path, f"path,patient_id,region,score\n{VIDEO},1,L1,0\n")
    table = read_manifest(path, data_root)
    assert table.loc[0, "score"] == 0
    assert table.loc[0, "video_id"] == "patient_1_L1"  # defaulted from the file name
    assert table.loc[0, "frame"] == -1
    assert Path(table.loc[0, "file"]).is_file()


def test_data_root_from_environment(tmp_path, data_root, monkeypatch):
    path = _manifest(tmp_path, f"path,patient_id,region,score\n{VIDEO},1,L1,0\n")
    monkeypatch.setenv("LUSFEAT_DATA_ROOT", str(data_root))
    assert len(read_manifest(path)) == 1
    monkeypatch.delenv("LUSFEAT_DATA_ROOT")
    assert "not found under data root" in _error(path, None)


def test_missing_column_is_named(tmp_path):
    path = _manifest(tmp_path, "path,patient_id,score\nx.png,1,0\n")
    assert "missing column(s) region" in _error(path, tmp_path)


def test_empty_manifest(tmp_path):
    path = _manifest(tmp_path, "path,patient_id,region,score\n")
    assert "no rows" in _error(path, tmp_path)


def test_missing_manifest_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.csv", tmp_path)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (f"{VIDEO},1,L1,4", "line 2: score '4' is not an integer 0-3"),
        (f"{VIDEO},1,L1,1.5", "line 2: score '1.5' is not an integer 0-3"),
        (f"{VIDEO},1,L1,", "line 2: score '' is not an integer 0-3"),
        (f"{VIDEO},1,L1,high", "line 2: score 'high' is not an integer 0-3"),
        (f"{VIDEO},,L1,1", "line 2: empty patient_id"),
        (f"{VIDEO},1,,1", "line 2: empty region"),
        ("COVID-BLUES/lus_videos/nope.mp4,1,L1,1", "line 2: file 'COVID-BLUES/lus_videos/nope.mp4' not found"),
        ("COVID-BLUES/severity.csv,1,L1,1", "line 2: 'COVID-BLUES/severity.csv' is not a readable image or video "
                                            "(cannot open as image or video"),
        ("COVID-BLUES/lus_videos,1,L1,1", "line 2: file 'COVID-BLUES/lus_videos' a folder, not a file"),
    ],
)
def test_row_errors_name_line_and_value(tmp_path, data_root, row, expected):
    path = _manifest(tmp_path, f"path,patient_id,region,score\n{row}\n")
    assert expected in _error(path, data_root)


def test_unlabelled_rows_allowed_for_prediction(tmp_path, data_root):
    path = _manifest(tmp_path, f"path,patient_id,region,score\n{VIDEO},1,L1,\n")
    assert read_manifest(path, data_root, require_scores=False).loc[0, "score"] == -1


def test_duplicates_and_contradictions(tmp_path, data_root):
    path = _manifest(tmp_path, f"path,patient_id,region,score\n{VIDEO},1,L1,0\n{VIDEO},1,L1,0\n{VIDEO},1,L1,2\n")
    message = _error(path, data_root)
    assert "line 3: 'COVID-BLUES/lus_videos/patient_1_L1.mp4' is a duplicate of line 2" in message
    assert "line 4:" in message and "with different labels" in message


def test_unreadable_media_is_refused(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    shutil.copy(Path(__file__), tmp_path / "fake.png")
    path = _manifest(tmp_path, "path,patient_id,region,score\nbroken.mp4,1,L1,0\nfake.png,1,L2,0\n")
    message = _error(path, tmp_path)
    assert "line 2: 'broken.mp4' is not a readable image or video" in message
    assert "line 3: 'fake.png' is not a readable image or video" in message


def test_all_files_absent_says_how_to_get_covid_blues(tmp_path):
    path = _manifest(tmp_path, "path,patient_id,region,score\na.mp4,1,L1,0\n")
    assert "github.com/NinaWie/COVID-BLUES" in _error(path, tmp_path)


def test_covid_blues_manifest_matches_the_committed_one(data_root):
    built = build_covid_blues_manifest(data_root / "COVID-BLUES")
    committed = pd.read_csv(Path(__file__).parents[1] / "data_manifest.csv", dtype=str, keep_default_na=False)
    assert len(built) == 362 and built["patient_id"].nunique() == 63
    assert set(built["region"]) == {"L1", "L2", "L3", "R1", "R2", "R3"}
    assert built["score"].value_counts().sort_index().tolist() == [120, 111, 83, 48]
    assert built.groupby("group")["patient_id"].nunique().to_dict() == {"covid": 33, "negative": 30}
    assert built.astype(str).equals(committed)


@pytest.mark.slow
def test_check_command(capsys, data_root, tmp_path):
    manifest = Path(__file__).parents[1] / "data_manifest.csv"
    assert main(["check", str(manifest), "--data-root", str(data_root)]) == 0
    assert "362 rows, 63 patients, 6 regions" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "nope.csv")]) == 1
    assert "not found" in capsys.readouterr().err


def test_readability_is_read_from_content_not_suffix(tmp_path):
    from conftest import moving_frames, write_video

    frames = moving_frames(12)
    write_video(tmp_path / "a.mpeg", frames, "mpeg1video")
    write_video(tmp_path / "b.mkv", frames, "libx264")
    write_video(tmp_path / "c.webm", frames, "libvpx")
    write_video(tmp_path / "d.mp4", frames, "libx264").rename(tmp_path / "d_without_suffix")
    write_video(tmp_path / "e.mp4", frames, "libx264").rename(tmp_path / "e.bin")
    rows = "".join(f"{name},1,L{i + 1},0\n" for i, name in enumerate(["a.mpeg", "b.mkv", "c.webm", "d_without_suffix", "e.bin"]))
    table = read_manifest(_manifest(tmp_path, "path,patient_id,region,score\n" + rows), tmp_path)
    assert len(table) == 5 and "unreadable" not in table


def test_each_unreadable_file_is_named_with_its_line_and_reason(tmp_path):
    import av
    import numpy as np

    (tmp_path / "notes.mp4").write_text("not a video\n" * 30)
    (tmp_path / "readme.txt").write_text("the patient was seen on Monday\n" * 20)
    with av.open(str(tmp_path / "sound.mkv"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    path = _manifest(tmp_path, "path,patient_id,region,score\nnotes.mp4,1,L1,0\nreadme.txt,1,L2,0\nsound.mkv,1,L3,0\n")
    message = _error(path, tmp_path)
    assert "line 2: 'notes.mp4' is not a readable image or video (cannot open" in message
    assert "line 3: 'readme.txt' is not a readable image or video (a text file" in message
    assert "line 4: 'sound.mkv' is not a readable image or video (no video stream (audio stream(s) only))" in message
    kept = read_manifest(path, tmp_path, keep_unreadable=True)
    assert kept["unreadable"].str.len().gt(0).all() and len(kept) == 3


def test_dicom_files_with_and_without_suffix(tmp_path):
    pytest.importorskip("pydicom", reason="DICOM support is an optional extra: pip install 'lusfeat[dicom]'")
    from conftest import dicom_dataset, moving_frames

    dicom_dataset(moving_frames(3)).save_as(tmp_path / "loop.dcm", enforce_file_format=True)
    dicom_dataset(moving_frames(3)).save_as(tmp_path / "IM0002", enforce_file_format=True)
    path = _manifest(tmp_path, "path,patient_id,region,score\nloop.dcm,1,L1,0\nIM0002,1,L2,1\n")
    assert read_manifest(path, tmp_path)["path"].tolist() == ["loop.dcm", "IM0002"]
