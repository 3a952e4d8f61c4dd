"""Read and validate ``data_manifest.csv``; build the COVID-BLUES manifest.

One row per source file (image or video). Required columns: ``path``, ``patient_id``,
``region``, ``score``; optional: ``group``, ``video_id``, ``frame``. A video row stands for all
of its frames, each inheriting the row's score; a ``frame`` value selects a single frame.

Usage::

    python -m lusfeat.manifest covid-blues DATA_ROOT/COVID-BLUES [--out data_manifest.csv]
    python -m lusfeat.manifest check data_manifest.csv [--data-root DIR]

A folder of one patient's files named by region (or a folder of such patient folders) is read
as a manifest by :func:`folder_manifest` (``lusfeat.predict``'s folder input).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.files import write_csv

REQUIRED_COLUMNS = ("path", "patient_id", "region", "score")
OPTIONAL_COLUMNS = ("group", "video_id", "frame")
# Whether a file is read is decided by its content (lusfeat.frames.probe_media); these names only
# say which files of a folder to report when their content is not readable, and which suffix to
# take off a name before looking for its region.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".gif", ".mkv", ".webm", ".mpeg", ".mpg", ".m2v", ".ts", ".mts",
                  ".m2ts", ".wmv", ".asf", ".flv", ".ogv", ".3gp", ".mxf", ".nut", ".y4m")
DICOM_SUFFIXES = (".dcm", ".dicom")
MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES + DICOM_SUFFIXES
DATA_ROOT_ENV = "LUSFEAT_DATA_ROOT"
MAX_LISTED_PROBLEMS = 20
REGION_TOKEN = re.compile(r"^[A-Za-z]{1,3}\d{1,2}$")

GET_COVID_BLUES = (
    "COVID-BLUES is public: clone https://github.com/NinaWie/COVID-BLUES (CC BY-NC-ND 4.0) into "
    "a folder DIR so that DIR/COVID-BLUES/lus_videos exists, then pass --data-root DIR or set "
    f"{DATA_ROOT_ENV}=DIR."
)


def resolve_data_root(manifest_path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """Folder that manifest paths are relative to: ``data_root``, else $LUSFEAT_DATA_ROOT, else the manifest's folder."""
    if data_root is not None:
        return Path(data_root)
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV])
    return Path(manifest_path).resolve().parent


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _line(index: int) -> str:
    # Line numbers as a spreadsheet or editor shows them: the header is line 1.
    return f"line {index + 2}"


def _raise_problems(manifest_path: Path, problems: list[str]) -> None:
    if not problems:
        return
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    text = "\n  ".join(shown)
    tail = f"\n  ... and {more} more" if more else ""
    raise LusfeatError(f"{manifest_path}: {len(problems)} problem(s), fix them and run again:\n  {text}{tail}")


def read_manifest(
    manifest_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    *,
    require_scores: bool = True,
    check_readable: bool = True,
    keep_unreadable: bool = False,
) -> pd.DataFrame:
    """Read and validate a manifest; return it with an absolute ``file`` column added.

    Every problem is collected and raised together in one :class:`LusfeatError` naming the
    line, the value and the fix, so that nothing runs on a half-valid manifest.
    ``require_scores=False`` admits empty scores (unlabelled prediction input); empty scores
    come back as -1. Whether a file is an image, a video or DICOM is read from its content
    (``check_readable``: its first frame must decode). ``keep_unreadable=True`` (``predict``)
    keeps the rows of unreadable files, with the reason in an ``unreadable`` column ("" for the
    others), instead of refusing the manifest.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise LusfeatError(
            f"manifest {manifest_path} not found. Write one (columns {', '.join(REQUIRED_COLUMNS)}) "
            f"or build the COVID-BLUES one with: python -m lusfeat.manifest covid-blues DIR/COVID-BLUES"
        )
    try:
        table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LusfeatError(f"{manifest_path}: not a readable CSV file ({error})") from error
    table.columns = [column.strip() for column in table.columns]
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise LusfeatError(
            f"{manifest_path}: missing column(s) {', '.join(missing)}; the header must have "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    if table.empty:
        raise LusfeatError(f"{manifest_path}: the manifest has a header but no rows; add one row per image or video")
    for column in OPTIONAL_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    table = table[list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)].apply(lambda column: column.str.strip())

    root = resolve_data_root(manifest_path, data_root)
    if not root.is_dir():
        raise LusfeatError(f"data root {root} does not exist. {GET_COVID_BLUES}")
    problems: list[str] = []
    scores: list[int] = []
    frames: list[int] = []
    for index, row in table.iterrows():
        where = _line(index)
        for column in ("path", "patient_id", "region"):
            if not row[column]:
                problems.append(f"{where}: empty {column}; every row needs a {column}")
        score = row["score"]
        if score == "" and not require_scores:
            scores.append(-1)
        else:
            try:
                value = float(score)
            except ValueError:
                value = float("nan")
            if value not in (0, 1, 2, 3):
                problems.append(f"{where}: score {score!r} is not an integer 0-3 (the 4-level lung ultrasound score)")
                value = -1
            scores.append(int(value))
        frame = row["frame"]
        if frame == "":
            frames.append(-1)
        elif frame.isdigit():
            frames.append(int(frame))
        else:
            problems.append(f"{where}: frame {frame!r} is not a frame number (0, 1, ...); leave it empty for all frames")
            frames.append(-1)
    table["score"] = scores
    table["frame"] = frames
    table["video_id"] = [
        video_id or Path(path).stem for video_id, path in zip(table["video_id"], table["path"], strict=True)
    ]

    # The same file (and frame) twice: with other labels it is a contradiction, with the same a
    # duplicate that would count its frames twice.
    seen: dict[tuple[str, int], int] = {}
    for index, (path, frame) in enumerate(zip(table["path"], table["frame"], strict=True)):
        key = (path, frame)
        if key in seen:
            first = seen[key]
            same = (table.iloc[first][["patient_id", "region", "score"]] == table.iloc[index][["patient_id", "region", "score"]]).all()
            kind = "a duplicate of" if same else "the same file as, with different labels from,"
            problems.append(f"{_line(index)}: {path!r} is {kind} {_line(first)}; keep one row per file")
        else:
            seen[key] = index

    files = [root / path for path in table["path"]]
    absent = 0
    unreadable = [""] * len(table)
    for index, (path, file) in enumerate(zip(table["path"], files, strict=True)):
        if not path:
            continue
        if not file.is_file():
            absent += 1
            kind = "a folder, not a file" if file.is_dir() else "not found"
            problems.append(f"{_line(index)}: file {path!r} {kind} under data root {root}")
        elif check_readable:
            from lusfeat.frames import probe_media  # late: frames needs PyAV, manifest reading mostly not

            reason = probe_media(file)
            if reason and keep_unreadable:
                unreadable[index] = reason
            elif reason:
                problems.append(f"{_line(index)}: {path!r} is not a readable image or video ({reason}); replace or remove the file")
    if absent and absent == len(table):
        problems.insert(0, f"none of the {absent} files exist under data root {root}. {GET_COVID_BLUES}")
    _raise_problems(manifest_path, problems)
    table["file"] = [str(file) for file in files]
    if keep_unreadable:
        table["unreadable"] = unreadable
    return table


# --------------------------------------------------------------------------- a folder as a manifest


def region_from_name(name: str) -> str | None:
    """The region token of a file name (see the module doc), upper-cased; None when there is none."""
    stem = Path(name).name
    if Path(stem).suffix.lower() in MEDIA_SUFFIXES:
        stem = stem[: -len(Path(stem).suffix)]
    tokens = [token for token in re.split(r"[_\-\s.]+", stem) if token]
    matches = [token for token in tokens if REGION_TOKEN.match(token)]
    return matches[-1].upper() if matches else None


def _is_media(file: Path) -> bool:
    """A file of a folder to read: an image, video or DICOM by its content, or named as one (then a
    broken one is reported, not skipped). Hidden files are skipped."""
    if file.name.startswith(".") or not file.is_file():
        return False
    if file.suffix.lower() in MEDIA_SUFFIXES:
        return True
    from lusfeat.frames import probe_media  # late: frames needs PyAV

    return not probe_media(file)


def _media_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_media(p))


def folder_manifest(folder: str | os.PathLike) -> pd.DataFrame:
    """Manifest rows (paths relative to ``folder``) for a patient folder or a folder of patient folders."""
    folder = Path(folder)
    files = _media_files(folder)
    if files:
        patients = [(folder.resolve().name, folder)]
    else:
        patients = [(sub.name, sub) for sub in sorted(folder.iterdir()) if sub.is_dir() and _media_files(sub)]
    if not patients:
        raise LusfeatError(f"{folder}: no image, video or DICOM files in it or in its sub-folders")
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


def read_input(input_path: str | os.PathLike, data_root: str | os.PathLike | None, *,
               keep_unreadable: bool = False) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(validated manifest, the manifest made of a folder or None)`` of INPUT, a CSV or a folder.

    A folder's manifest is validated from a temporary file; ``predict`` writes it to
    ``OUT/input_manifest.csv`` with its results only, so a run that stops early leaves OUT as it was.
    ``keep_unreadable``: as for :func:`read_manifest`.
    """
    path = Path(input_path)
    if path.is_dir():
        table = folder_manifest(path)
        with tempfile.TemporaryDirectory() as scratch:
            manifest_path = Path(scratch) / "input_manifest.csv"
            table.to_csv(manifest_path, index=False)
            try:
                return read_manifest(manifest_path, path, require_scores=False, keep_unreadable=keep_unreadable), table
            except LusfeatError as error:  # name the user's folder, not the scratch file
                raise LusfeatError(str(error).replace(str(manifest_path), f"{path} (read as a manifest)")) from None
    if path.is_file():
        return read_manifest(path, data_root, require_scores=False, keep_unreadable=keep_unreadable), None
    raise LusfeatError(f"input {path} not found: pass a manifest CSV or a folder of one patient's videos or images")



def build_covid_blues_manifest(dataset_dir: str | os.PathLike) -> pd.DataFrame:
    """The manifest of a COVID-BLUES copy: one row per video, paths relative to its parent folder."""
    dataset_dir = Path(dataset_dir)
    videos_dir = dataset_dir / "lus_videos"
    severity_csv = dataset_dir / "severity.csv"
    clinical_csv = dataset_dir / "clinical_variables.csv"
    for needed in (videos_dir, severity_csv, clinical_csv):
        if not needed.exists():
            raise LusfeatError(f"{needed} not found: {dataset_dir} is not a COVID-BLUES copy. {GET_COVID_BLUES}")
    severity = pd.read_csv(severity_csv).set_index("video_file")["Severity Score"]
    cov_test = pd.read_csv(clinical_csv, dtype={"patient_id": str}).set_index("patient_id")["cov_test"]
    rows = []
    for video in sorted(videos_dir.glob("patient_*.mp4")):
        # patient_<ID>_<POINT>[_2].mp4; a second recording keeps its BLUE point.
        parts = video.stem.split("_")
        patient, region = parts[1], parts[2]
        if video.stem not in severity.index:
            raise LusfeatError(f"{video.name} has no row in {severity_csv}")
        test = cov_test.get(patient)
        group = {1: "covid", 0: "negative"}.get(int(test)) if pd.notna(test) else ""
        rows.append(
            {
                "path": f"{dataset_dir.name}/lus_videos/{video.name}",
                "patient_id": patient,
                "region": region,
                "score": int(severity[video.stem]),
                "group": group,
                "video_id": video.stem,
            }
        )
    if not rows:
        raise LusfeatError(f"no patient_*.mp4 videos in {videos_dir}")
    table = pd.DataFrame(rows)
    order = table["patient_id"].astype(int)
    return table.assign(_order=order).sort_values(["_order", "video_id"]).drop(columns="_order").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.manifest", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    blues = commands.add_parser("covid-blues", help="write the manifest of a COVID-BLUES copy")
    blues.add_argument("dataset_dir", help="the COVID-BLUES folder (holding lus_videos/ and severity.csv)")
    blues.add_argument("--out", default="data_manifest.csv", help="manifest to write (default: %(default)s)")
    check = commands.add_parser("check", help="validate a manifest and summarise it")
    check.add_argument("manifest")
    check.add_argument("--data-root", default=None)
    check.add_argument("--unlabelled", action="store_true", help="allow empty scores")
    args = parser.parse_args(argv)
    try:
        if args.command == "covid-blues":
            table = build_covid_blues_manifest(args.dataset_dir)
            write_csv(table, args.out)
            print(f"wrote {args.out}: {len(table)} videos, {table['patient_id'].nunique()} patients")
        else:
            table = read_manifest(args.manifest, args.data_root, require_scores=not args.unlabelled)
            counts = table["score"].value_counts().sort_index().to_dict()
            print(f"{args.manifest}: {len(table)} rows, {table['patient_id'].nunique()} patients, "
                  f"{table['region'].nunique()} regions, rows per score {counts}: OK")
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
