"""Shared fixtures.

Real COVID-BLUES videos and real ImageNet weights from ../shared when present (tests using them are
marked ``realdata`` and skip without them), and, needing neither, synthetic feature files written
with the product's own writer (:func:`write_synthetic_features`), tiny made-up videos
(:func:`write_tiny_video`) and a seeded random MobileNet weights file (:func:`random_mobilenet_weights`)
for extracting, fitting and predicting end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One engine for every test that does not choose one, whatever the CPU (extract's default depends on
# it: lusfeat.engine_choice.default_choice); tests of that choice unset it.
os.environ.setdefault("LUSFEAT_ENGINE", "tensorflow:float32")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _dir(env: str, fallback: Path) -> Path:
    return Path(os.environ[env]) if os.environ.get(env) else fallback


DATA_ROOT = _dir("LUSFEAT_DATA_ROOT", SHARED / "data")
WEIGHTS_DIR = _dir("LUSFEAT_WEIGHTS_DIR", SHARED / "weights")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding COVID-BLUES/; skips where the dataset is absent."""
    if not (DATA_ROOT / "COVID-BLUES" / "lus_videos").is_dir():
        pytest.skip(f"COVID-BLUES not found under {DATA_ROOT} (set LUSFEAT_DATA_ROOT)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The folder holding the real ImageNet weight files; skips where absent."""
    if not (WEIGHTS_DIR / "mobilenet_0.25_224_imagenet_notop.h5").is_file():
        pytest.skip(f"ImageNet weights not found in {WEIGHTS_DIR} (set LUSFEAT_WEIGHTS_DIR)")
    return WEIGHTS_DIR


REAL_DATA_FIXTURES = {"data_root", "weights_dir"}
# Fixtures below that extract or fit (seconds to tens of seconds, once per session); other slow tests say so themselves.
SLOW_FIXTURES = {"synthetic_fit_run", "tiny_study", "tiny_study_run", "tiny_fit_run"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``realdata`` every test that needs COVID-BLUES or the real weights, and ``slow`` every test that
    uses an extracting or fitting fixture, through any of its fixtures, so that a new such test cannot be
    left unmarked: ``-m "not realdata"`` runs what needs neither."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & REAL_DATA_FIXTURES:
            item.add_marker(pytest.mark.realdata)
        if names & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def blues_manifest(data_root: Path) -> pd.DataFrame:
    """The project's COVID-BLUES manifest (one row per video)."""
    return pd.read_csv(REPO / "data_manifest.csv", dtype=str, keep_default_na=False)


def write_manifest(rows: pd.DataFrame, path: Path) -> Path:
    rows.to_csv(path, index=False)
    return path


@pytest.fixture
def two_patient_manifest(blues_manifest: pd.DataFrame, tmp_path: Path) -> Path:
    """Manifest of two COVID-BLUES patients (12 videos), one covid and one negative (13 videos)."""
    rows = blues_manifest[blues_manifest["patient_id"].isin(["1", "9"])]
    return write_manifest(rows, tmp_path / "two.csv")


# --------------------------------------------------------------------------- added for report / predict tests


def write_synthetic_run(run_dir: Path, *, backbone: str = "mobilenet", folds: int = 3, patients_per_fold: int = 2,
                        regions: tuple[str, ...] = ("L1", "L2", "L3", "R1", "R2", "R3"), frames_per_video: int = 4,
                        pooled: bool = True, seed: int = 0) -> Path:
    """A run folder as ``lusfeat.fit`` writes it (folds.csv, predictions.csv, metrics.json, model.json), with
    made-up patients and predictions: no data, no network. Head and logreg are right on most frames."""
    import json

    import numpy as np

    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patients = [str(i + 1) for i in range(folds * patients_per_fold)]
    fold_of = {p: i % folds + 1 for i, p in enumerate(patients)}
    pd.DataFrame({"patient_id": patients, "fold": [fold_of[p] for p in patients]}).to_csv(run_dir / "folds.csv", index=False)
    rows = []
    for patient in patients:
        for region in regions:
            truth = int(rng.integers(4))
            for index in range(frames_per_video):
                row = {"path": f"videos/patient_{patient}_{region}.mp4", "frame_index": index * 10,
                       "patient_id": patient, "region": region, "video_id": f"patient_{patient}_{region}",
                       "group": "covid" if int(patient) % 2 else "negative", "score": truth}
                for prefix, skill in (("head", 0.75), ("logreg", 0.6)):
                    pred = truth if rng.random() < skill else int(rng.integers(4))
                    proba = rng.dirichlet(np.ones(4)) * 0.4
                    proba[pred] += 0.6
                    row.update({f"{prefix}_p{k}": float(proba[k]) for k in range(4)})
                    row[f"{prefix}_pred"] = int(np.argmax(proba))
                row["fold"] = fold_of[patient]
                rows.append(row)
    table = pd.DataFrame(rows)
    extraction = {"backbone": backbone, "weights": "imagenet", "input_size": 224, "feature_dim": 256, "dtype": "float32",
                  "copies": 1, "aug_rotation": 10.0, "aug_shift": 0.1, "aug_zoom": 0.1, "aug_flip": True, "seed": 0,
                  "frame_step": 10, "manifest_sha256": "0" * 64, "pooling": "avg", "format_version": 1}
    for fold in range(1, folds + 1):
        folder = run_dir / backbone / f"fold{fold}"
        folder.mkdir(parents=True)
        test = table[table["fold"] == fold]
        test.to_csv(folder / "predictions.csv", index=False)
        metrics = {"backbone": backbone, "fold": fold, "agreement_kappa": 0.5, "warnings": [],
                   **{prefix: {"accuracy": float((test[f"{prefix}_pred"] == test["score"]).mean()), "fit_seconds": 1.0}
                      for prefix in ("head", "logreg")}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        model = {"backbone": backbone, "fold": fold, "extraction": extraction, "weights_source": "imagenet",
                 "feature_dim": 256, "classes": [0, 1, 2, 3],
                 "train_patients": [p for p in patients if fold_of[p] != fold], "lusfeat_version": "0.1.0"}
        (folder / "model.json").write_text(json.dumps(model))
    if pooled:
        (run_dir / backbone / "pooled").mkdir()
        table.to_csv(run_dir / backbone / "pooled" / "predictions.csv", index=False)
    return run_dir


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    """A made-up 3-fold, 6-patient, 6-region run folder of one backbone (see :func:`write_synthetic_run`)."""
    return write_synthetic_run(tmp_path / "run")


TINY_RUN_PATIENTS = ["3", "4", "6"]  # scores 0-3 between them; patient 9 stays unseen for predict tests


@pytest.fixture(scope="session")
def tiny_fit_run(blues_manifest: pd.DataFrame, data_root: Path, weights_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder from ``lusfeat.fit --fold all``: MobileNet features of 3 COVID-BLUES patients, every 30th
    frame, no augmented copies (~60 frames), 3 patient folds. Scores are poor (a few dozen training frames); the
    files are real."""
    from lusfeat.extract import main as extract
    from lusfeat.fit import main as fit

    folder = tmp_path_factory.mktemp("tiny_run")
    manifest = write_manifest(blues_manifest[blues_manifest["patient_id"].isin(TINY_RUN_PATIENTS)], folder / "three.csv")
    assert extract(["--manifest", str(manifest), "--data-root", str(data_root), "--backbone", "mobilenet",
                    "--weights", str(weights_dir), "--frame-step", "30", "--augment-copies", "0",
                    "--out", str(folder / "features"), "--no-progress"]) == 0
    assert fit(["--fold", "all", "--features", str(folder / "features" / "mobilenet.h5"), "--out", str(folder / "run")]) == 0
    return folder / "run"


# --------------------------------------------------------------------------- synthetic feature files (no data)

SYNTHETIC_REGIONS = ("L1", "L2", "L3", "R1", "R2", "R3")


def synthetic_frames(patients: int = 6, regions: tuple[str, ...] = SYNTHETIC_REGIONS, frames_per_video: int = 5,
                     seed: int = 0) -> pd.DataFrame:
    """The per-frame table of a made-up study, as ``lusfeat.embed.plan_frames`` makes one (without ``file``).

    Patients "1".."N", odd ones covid, even ones negative; one video per region, whose scores are the
    four scores 0-3 and random others in random order (so every patient, and every fold, holds all
    four); every third patient has a second R3 recording (``patient_<p>_R3_2``) of a score of its
    own, as patient 9 of COVID-BLUES. Frames 0, 10, 20, ... of each video.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(1, patients + 1):
        scores = [0, 1, 2, 3, *rng.integers(0, 4, max(0, len(regions) - 4))][:len(regions)]
        videos = [(region, f"patient_{patient}_{region}", int(score))
                  for region, score in zip(regions, rng.permutation(scores), strict=True)]
        if patient % 3 == 0:
            videos.append((regions[-1], f"patient_{patient}_{regions[-1]}_2", int(rng.integers(0, 4))))
        for region, video, score in videos:
            for index in range(frames_per_video):
                rows.append({"path": f"COVID-BLUES/lus_videos/{video}.mp4", "frame_index": index * 10,
                             "patient_id": str(patient), "region": region, "score": score, "video_id": video,
                             "group": "covid" if patient % 2 else "negative"})
    return pd.DataFrame(rows)


def synthetic_feature_values(frames: pd.DataFrame, feature_dim: int = 256, copies: int = 3, seed: int = 0):
    """``(copies, frames, dim)`` non-negative float32 features in which the score shows, noisily.

    32 of the dimensions rise with the frame's score; every video has an offset of its own (frames of
    one video are alike, as real ones are) and every frame noise; augmented copies are the frame's
    features plus a little noise. Models learn the score well, not perfectly.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    scores = frames["score"].to_numpy(float)
    direction = np.zeros(feature_dim)
    direction[:32] = rng.uniform(0.6, 1.0, 32)
    video = pd.factorize(frames["patient_id"].astype(str) + "/" + frames["video_id"].astype(str))[0]
    offsets = rng.normal(0.0, 0.5, (video.max() + 1, feature_dim))
    original = 1.0 + np.outer(scores, direction) + offsets[video] + rng.normal(0.0, 1.0, (len(frames), feature_dim))
    values = original[None] + rng.normal(0.0, 0.2, (copies, len(frames), feature_dim))
    values[0] = original
    return np.maximum(values, 0.0).astype(np.float32)


def write_synthetic_features(path: Path, frames: pd.DataFrame | None = None, *, feature_dim: int = 256,
                             copies: int = 3, seed: int = 0, **config) -> Path:
    """A complete feature file written by the product's own :class:`lusfeat.store.FeatureWriter`.

    By default the config of MobileNet at 224 px with random weights ("none"), 3 copies, every 10th frame:
    what ``lusfeat.extract --backbone mobilenet --weights none --frame-step 10`` records; ``config``
    overrides fields of :class:`lusfeat.store.ExtractionConfig`. ``frames``: :func:`synthetic_frames` by default.
    """
    from lusfeat.store import ExtractionConfig, FeatureWriter

    frames = synthetic_frames(seed=seed) if frames is None else frames
    fields = {"backbone": "mobilenet", "weights": "none", "input_size": 224, "feature_dim": feature_dim,
              "dtype": "float32", "copies": copies, "aug_rotation": 10.0, "aug_shift": 0.1, "aug_zoom": 0.1,
              "aug_flip": True, "seed": 0, "frame_step": 10, "manifest_sha256": "0" * 64, **config}
    values = synthetic_feature_values(frames, fields["feature_dim"], fields["copies"], seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FeatureWriter(path, ExtractionConfig(**fields), frames, weights_source="synthetic (tests/conftest.py)") as writer:
        writer.write(0, values)
        writer.finish()
    return path


@pytest.fixture(scope="session")
def synthetic_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mobilenet.h5`` of :func:`write_synthetic_features`: 6 patients (3 covid, 3 negative), 6 regions, 38
    videos of 5 frames, scores 0-3 in each patient, 3 copies, 256 dimensions. Do not modify it: copy it."""
    return write_synthetic_features(tmp_path_factory.mktemp("synthetic") / "features" / "mobilenet.h5")


@pytest.fixture(scope="session")
def synthetic_fit_run(synthetic_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lusfeat.fit --fold all`` (defaults: preset video, 3 folds, 3 epochs) on :func:`synthetic_features`.
    Shared by several test files: read it, do not write into it."""
    from lusfeat.fit import main as fit

    run = tmp_path_factory.mktemp("synthetic_fit") / "run"
    assert fit(["--fold", "all", "--features", str(synthetic_features), "--out", str(run)]) == 0
    return run


# --------------------------------------------------------------------------- tiny made-up videos (no data)


def tiny_frame(score: int, index: int, size: int = 64, seed: int = 0):
    """One ``(size, size, 3)`` uint8 frame that looks a little like lung ultrasound of ``score``: speckle,
    a bright pleural line a quarter down, and below it ``2 * score`` bright vertical B-lines that drift
    with ``index``. A frozen network's features tell the scores apart."""
    import numpy as np

    rng = np.random.default_rng([seed, score, index])
    image = rng.gamma(2.0, 12.0, (size, size))
    image[size // 4 - 1:size // 4 + 2] += 160
    for line in range(2 * score):
        column = (line * size // max(1, 2 * score) + 3 * index + int(rng.integers(0, 4))) % (size - 3)
        image[size // 4:, column:column + 3] += 120
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def write_tiny_video(path: Path, score: int, frames: int = 8, size: int = 64, seed: int = 0) -> Path:
    """An H.264 video of ``frames`` :func:`tiny_frame` frames, written with PyAV; a ``.png`` ``path`` gets one
    frame written with Pillow instead."""
    import av
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(tiny_frame(score, 0, size, seed)).save(path)
        return path
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"qp": "4"}  # nearly lossless: the lines stay sharp
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(tiny_frame(score, index, size, seed), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def random_mobilenet_weights(path: Path, images, seed: int = 0) -> Path:
    """A weights file of MobileNet (alpha 0.25, 224 px, no top) with seeded random weights, for ``--weights FILE``.

    Plain random initialisation makes the activations vanish layer by layer (pooled features about
    1e-16) and ``--weights none`` draws new weights at every build; here each batch norm is set to the
    statistics of its input over ``images`` ``(n, 224, 224, 3)`` uint8, so the features stay of order 1
    and carry what the images show, and the file gives the same network every time.
    """
    import keras
    import numpy as np

    from lusfeat.backbones import get_spec

    spec = get_spec("mobilenet")
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(224, 224, 3), **spec.kwargs)
    x = spec.preprocess()(np.asarray(images, dtype="float32"))
    for layer in model.layers[1:]:  # a chain: each layer takes the previous one's output
        if isinstance(layer, keras.layers.BatchNormalization):
            values = np.asarray(x)
            layer.moving_mean.assign(values.mean(axis=(0, 1, 2)))
            layer.moving_variance.assign(values.var(axis=(0, 1, 2)) + 1e-3)
        x = layer(x, training=False)
    model.save_weights(path)
    return path


TINY_REGIONS = ("L1", "L2", "R1", "R2")


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Made-up videos and their manifests, and a random MobileNet weights file (:func:`random_mobilenet_weights`).

    ``root``: the data root; ``manifest``: patients 1-6 (odd ones covid), a 64 px video of 8 frames per
    region L1, L2, R1, R2, whose scores are 0-3 in an order of each patient's own; ``held_out``: patient
    7, not in ``manifest``: L1 score 3 and R2 score 1; ``weights``: the weights file.
    """
    import numpy as np

    from lusfeat.frames import read_frames

    folder = tmp_path_factory.mktemp("tiny_study")
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(1, 8):
        scores = [3, 1] if patient == 7 else rng.permutation(4)
        regions = ("L1", "R2") if patient == 7 else TINY_REGIONS
        for region, score in zip(regions, scores, strict=True):
            video = f"patient_{patient}_{region}"
            write_tiny_video(folder / "videos" / f"{video}.mp4", int(score), seed=patient)
            rows.append({"path": f"videos/{video}.mp4", "patient_id": str(patient), "region": region,
                         "score": int(score), "group": "covid" if patient % 2 else "negative", "video_id": video})
    table = pd.DataFrame(rows)
    table[table["patient_id"] != "7"].to_csv(folder / "manifest.csv", index=False)
    table[table["patient_id"] == "7"].to_csv(folder / "held_out.csv", index=False)
    images = np.concatenate([read_frames(folder / path, step=4, size=224) for path in table["path"][::3]])
    weights = random_mobilenet_weights(folder / "mobilenet_random.weights.h5", images)
    return {"root": folder, "manifest": folder / "manifest.csv", "held_out": folder / "held_out.csv", "weights": weights}


@pytest.fixture(scope="session")
def tiny_study_run(tiny_study: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder made by the commands themselves from :func:`tiny_study`: ``lusfeat.extract`` (MobileNet with
    the random weights file, every 2nd frame, one augmented copy: 96 frames) then ``lusfeat.fit --fold all``."""
    from lusfeat.extract import main as extract
    from lusfeat.fit import main as fit

    folder = tmp_path_factory.mktemp("tiny_study_run")
    assert extract(["--manifest", str(tiny_study["manifest"]), "--data-root", str(tiny_study["root"]),
                    "--backbone", "mobilenet", "--weights", str(tiny_study["weights"]), "--frame-step", "2",
                    "--augment-copies", "1", "--out", str(folder / "features"), "--no-progress"]) == 0
    assert fit(["--fold", "all", "--features", str(folder / "features" / "mobilenet.h5"), "--out", str(folder / "run")]) == 0
    return folder / "run"


# --------------------------------------------------------------------------- media files the tests make themselves


def moving_frames(n: int, height: int = 64, width: int = 80, seed: int = 0) -> list:
    """``n`` RGB uint8 frames of a bright disc moving over a dark speckled field (video-like, compressible)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    field = (rng.random((height, width)) * 60).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    frames = []
    for i in range(n):
        cy, cx = height / 2 + height / 4 * np.sin(i / 5), width / 2 + width / 4 * np.cos(i / 7)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < (height / 6) ** 2
        frame = np.stack([field, field // 2, field // 3], axis=2).copy()
        frame[disc] = (200, 180 - i % 50, 40 + i % 100)
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list, codec: str = "libx264", rate: int = 25, pix_fmt: str = "yuv420p",
                options: dict | None = None, container_options: dict | None = None) -> Path:
    """Encode ``frames`` (RGB uint8) with PyAV; the container is chosen by ``path``'s suffix."""
    import av

    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_file(source: Path, target: Path, keep: float) -> Path:
    """``target``: the first ``keep`` fraction of ``source``'s bytes (a file cut short after its header)."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


SECRET_PATIENT = {"PatientName": "Doe^Jane", "PatientID": "SECRET-4711", "PatientBirthDate": "19700101",
                  "StudyDate": "20240229", "AccessionNumber": "ACC-98765", "InstitutionName": "St Nowhere"}


def leaked_identifiers(folder: Path) -> dict[str, list[str]]:
    """Which of :data:`SECRET_PATIENT`'s values (and their name parts) each file in ``folder`` holds.

    Embedded images (``data:...;base64,...``) are decoded and their bytes searched for the whole values
    instead of their base64 text for every part: three letters such as "Doe" turn up by chance in 100 KB
    of base64, while an image's metadata would carry the whole value.
    """
    import base64
    import re

    whole = list(SECRET_PATIENT.values())
    parts = [*whole, *(part for value in whole for part in re.split(r"[\^ ]", value) if len(part) >= 3)]
    payload = re.compile(r"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)")
    leaks = {}
    for path in sorted(folder.iterdir()):
        text = path.read_text(errors="replace")
        images = [base64.b64decode(found) for found in payload.findall(text)]
        found = [s for s in parts if s in payload.sub("data:", text)]
        found += [s for s in whole if any(s.encode() in image for image in images)]
        if found:
            leaks[path.name] = found
    return leaks


def dicom_dataset(frames, colour: str = "RGB", *, sop_class: str = "1.2.840.10008.5.1.4.1.1.3.1", bits: int = 8,
                  frame_time_ms: float | None = 40.0):
    """A pydicom data set of ``frames`` ((n, rows, cols[, 3]) pixel values as they are to be stored), uncompressed,
    explicit VR little endian, with made-up patient identifiers (:data:`SECRET_PATIENT`) that must never leak."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("made-by-test", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    for keyword, value in SECRET_PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = frames.shape[1], frames.shape[2]
    ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
    ds.PhotometricInterpretation = colour
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if len(frames) > 1 or frame_time_ms:
        ds.NumberOfFrames = len(frames)
        if frame_time_ms:
            ds.FrameTime = frame_time_ms
            ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = frames.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    return ds
