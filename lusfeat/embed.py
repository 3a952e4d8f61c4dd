"""The stage-one engine: frames -> images -> backbone -> the HDF5 feature file, resumably.

- :func:`plan_frames` / :func:`plan_media`: the per-frame table of a manifest (one row per frame to
  embed), each file's frames counted by decoding it, so a stream that ends early is planned as it decodes;
- :func:`iter_images` / :func:`iter_spans`: each file decoded once, frames resized and augmented,
  in blocks, in a background thread (:func:`prefetch`) that stays a bounded number of blocks
  ahead of the network, so memory is flat in the number of frames and the cores stay busy;
- :func:`plan_spans`: which network batches compute a set of frames (a shard's) exactly as a
  run over the whole table does;
- :func:`set_tf_threads` / :func:`tf_threads`: TensorFlow's thread count, which a file records
  (it changes the last bits of the features);
- the network call itself comes from :mod:`lusfeat.engines` (TensorFlow's :class:`Embedder`, or OpenVINO),
  with :func:`calibration_set` choosing the frames an int8 model is calibrated on;
- :class:`FeatureSource`: stage one's one extension point, what runs over the images (a name, a shape
  and a call); :func:`backbone_source` is the product's (a backbone's pooled features), and
  ``lusfeat/experiments/`` bring their own (lung crops, fine-tuning maps, the hand-made signal);
- :func:`write_features`: the resumable write loop shared by every feature source; :func:`extract_backbone`
  for one backbone;
- :func:`embed_frames`: copy 0 of frames, as ``lusfeat.predict`` needs them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lusfeat.augment import AugmentParams, augmented_copies, frame_key
from lusfeat.backbones import BackboneSpec, WeightsSource, get_spec
from lusfeat.engines import CALIBRATION_FRAMES, Calibration, Embed, build_embed, engine_version
from lusfeat.errors import LusfeatError
from lusfeat.frames import MediaInfo, frame_indices, iter_frames, media_info
from lusfeat.store import CHUNK_FRAMES, ExtractionConfig, FeatureWriter

log = logging.getLogger("lusfeat.embed")
QUEUE_BLOCKS = 2  # blocks decoded ahead of the network: bounds memory
PREDICT_BLOCK_FRAMES = 64  # frames decoded and embedded at a time by embed_frames: bounds memory


@dataclass
class FramePlan:
    """What a manifest gives to embed: the frames, the files that decode short, the files that give none."""

    frames: pd.DataFrame  # one row per frame, see plan_frames
    warnings: list[str]  # one per file whose container announces more frames than decode
    not_scored: pd.DataFrame  # manifest rows (path, patient_id, region, video_id) of files with no frame, and reason


NOT_SCORED_COLUMNS = ["path", "patient_id", "region", "video_id", "reason"]
FRAME_PLAN_COLUMNS = ["path", "frame_index", "patient_id", "region", "score", "video_id", "group", "file"]


def short_stream_warning(path: str, info: MediaInfo) -> str:
    return (f"{path}: its container announces {info.announced} frames but {info.frames} decode (the stream ends "
            f"early); the {info.frames} that decode are used")


def plan_media(manifest: pd.DataFrame, frame_step: int = 1, *, skip_unreadable: bool = False) -> FramePlan:
    """The frames of a manifest, each file opened once to count them (:func:`lusfeat.frames.media_info`: from
    the container where it can be trusted, else by decoding them).

    A file that decodes fewer frames than its container announces gives the frames that decode, and a
    warning naming it and both counts. Files that give no frame raise one error naming them all, or with
    ``skip_unreadable`` are listed in ``not_scored`` with the reason.
    """
    rows, warnings, skipped = [], [], []
    for record in manifest.itertuples(index=False):
        try:
            info = media_info(record.file)
        except LusfeatError as error:
            reason = str(error).split(": ", 1)[-1].removesuffix("; replace or remove the file")
            skipped.append((record.path, record.patient_id, record.region, record.video_id, reason))
            continue
        if info.short:
            warnings.append(short_stream_warning(record.path, info))
        indices = frame_indices(info.frames, frame_step, record.frame)
        if not indices:
            counted = f"{info.frames} frames decode" + (f" (its container announces {info.announced})" if info.short else "")
            raise LusfeatError(f"{record.path}: frame {record.frame} asked for, but {counted}; fix the frame column")
        for index in indices:
            rows.append((record.path, index, record.patient_id, record.region, record.score,
                         record.video_id, record.group, record.file))
    if skipped and not skip_unreadable:
        raise LusfeatError("; ".join(f"{path!r} is not a readable image or video ({reason})"
                                     for path, *_, reason in skipped) + "; replace or remove the file(s)")
    return FramePlan(pd.DataFrame(rows, columns=FRAME_PLAN_COLUMNS), warnings,
                     pd.DataFrame(skipped, columns=NOT_SCORED_COLUMNS))


def plan_frames(manifest: pd.DataFrame, frame_step: int = 1) -> pd.DataFrame:
    """The per-frame table: one row per frame to extract, in manifest order, with its labels and file.

    Files that decode short are used with the frames that decode, with a logged warning (see :func:`plan_media`).
    """
    plan = plan_media(manifest, frame_step)
    for message in plan.warnings:
        log.warning("warning: %s", message)
    return plan.frames


Prepare = Callable[[np.ndarray, int], np.ndarray]  # (full-size rgb, size) -> (size, size, 3) rgb


@dataclass(frozen=True)
class FeatureSource:
    """What stage one runs over the images of every frame and copy: images in, arrays out.

    ``build()`` (called only when there is work) returns the call: uint8 images ``(n, size, size, 3)`` ->
    ``(n, *item_shape)``, batching ``batch_size`` images at a time from its input's start (as the engines do).
    ``name`` names it in the progress bar and the summary. ``prepare`` turns a full-size frame into the
    ``(size, size, 3)`` image the copies are made from (e.g. a crop); ``None``: FFmpeg resizes it while decoding.
    """

    name: str
    item_shape: tuple[int, ...]
    build: Callable[[], Embed]
    prepare: Prepare | None = None


def iter_images(frames: pd.DataFrame, size: int, copies: int, seed: int, params: AugmentParams,
                prepare: Prepare | None = None) -> Iterator[np.ndarray]:
    """``(copies, size, size, 3)`` uint8 per row of ``frames``, in order, each file decoded once.

    Without ``prepare`` FFmpeg resizes the whole frame; with one (a feature source's, e.g. a crop) the
    full-size frame goes to ``prepare(rgb, size)``. Augmented copies are made from the result.
    """
    # Runs of consecutive rows of one file, not groupby("file"): a file listed again further down
    # the table (single-frame rows, say) must come out where its rows stand.
    runs = (frames["file"] != frames["file"].shift()).cumsum().to_numpy()
    for _, rows in frames.groupby(runs, sort=False):
        file = rows["file"].iloc[0]
        wanted = rows["frame_index"].tolist()
        path = rows["path"].iloc[0]
        for index, rgb in iter_frames(file, wanted, None if prepare else size):
            if prepare is not None:
                rgb = prepare(rgb, size)
            yield augmented_copies(rgb, frame_key(path, index), copies, seed, params)


@dataclass(frozen=True)
class Span:
    """One step of the write loop: the images of one network block that hold the frames to write.

    Blocks are ``block`` consecutive frames of the whole table, counted from frame 0; a block's
    images (frame-major, ``copies`` per frame) go through the network in batches of
    ``batch_size`` from the block's first image, the last one padded. A span is the run of whole
    batches of one block that covers the wanted frames ``rows``: computing exactly those batches
    gives every frame the very bits it gets in a run over the whole table, whatever runs around it
    (a frame's output depends, in the last float bits, on its batch neighbours and place).
    """

    first: int  # first frame (row of the whole table) decoded
    stop: int  # one past the last frame decoded
    skip: int  # images of the decoded frames before the span's first batch
    images: int  # images in the span (whole batches, or to the block's end)
    rows: np.ndarray  # the wanted frames in the span (rows of the whole table), in order


def plan_spans(total: int, rows: np.ndarray, block: int, copies: int, batch_size: int) -> list[Span]:
    """The spans that compute ``rows`` (sorted rows of a ``total``-frame table) exactly as a whole run would."""
    spans = []
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows[0] < 0 or rows[-1] >= total or (np.diff(rows) <= 0).any()):
        raise ValueError("rows must be increasing rows of the table")
    blocks = rows // block
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    for wanted in np.split(rows, cuts) if len(rows) else []:
        start = int(wanted[0] // block) * block
        n_images = (min(start + block, total) - start) * copies
        first_batch = (int(wanted[0]) - start) * copies // batch_size
        last_batch = ((int(wanted[-1]) - start + 1) * copies - 1) // batch_size
        begin, end = first_batch * batch_size, min((last_batch + 1) * batch_size, n_images)
        first, stop = start + begin // copies, start + -(-end // copies)
        spans.append(Span(first, stop, begin - (first - start) * copies, end - begin, wanted))
    return spans


def iter_spans(frames: pd.DataFrame, spans: list[Span], size: int, copies: int, seed: int, params: AugmentParams,
               prepare: Prepare | None = None) -> Iterator[tuple[Span, np.ndarray]]:
    """``(span, images[span.images, size, size, 3])`` per span; each file decoded once, in table order."""
    needed = np.concatenate([np.arange(span.first, span.stop) for span in spans]) if spans else np.zeros(0, int)
    images = iter_images(frames.iloc[needed], size, copies, seed, params, prepare)
    for span in spans:
        decoded = np.empty(((span.stop - span.first) * copies, size, size, 3), np.uint8)
        for i in range(span.stop - span.first):
            decoded[i * copies:(i + 1) * copies] = next(images)
        yield span, decoded[span.skip:span.skip + span.images]


def prefetch(blocks: Iterator, depth: int) -> Iterator:
    """Run ``blocks`` in a daemon thread, ``depth`` items ahead; re-raise its errors here."""
    channel: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in blocks:
                while not stop.is_set():
                    try:
                        channel.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            channel.put(done)
        except BaseException as error:  # handed to the consumer, which raises it
            channel.put(error)

    thread = threading.Thread(target=produce, daemon=True, name="lusfeat-decode")
    thread.start()
    try:
        while True:
            item = channel.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class ExtractionSummary:
    backbone: str
    path: Path
    frames: int
    copies: int
    seconds: float
    computed_frames: int
    file_mb: float
    status: str  # "written", "resumed", "up to date"

    @property
    def frames_per_second(self) -> float:
        return self.computed_frames / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        return (f"{self.backbone}: {self.status} {self.path} | {self.frames} frames x {self.copies} copies | "
                f"{self.computed_frames} frames computed in {self.seconds:.1f} s "
                f"({self.frames_per_second:.1f} frames/s, {self.frames_per_second * self.copies:.1f} images/s) | "
                f"{self.file_mb:.1f} MB")


def write_features(
    frames: pd.DataFrame,
    config: ExtractionConfig,
    out_path: Path,
    source: FeatureSource,
    *,
    weights_source: str = "",
    block: int = CHUNK_FRAMES,
    overwrite: bool = False,
    progress: bool = True,
    rows: np.ndarray | None = None,
    batch_size: int = 1,
    record: dict[str, Any] | None = None,
    must_match: dict[str, Any] | None = None,
    extra_datasets: dict[str, np.ndarray] | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> ExtractionSummary:
    """Write (or resume, or confirm) one feature file: frames -> images -> ``source`` -> HDF5.

    The one loop of every :class:`FeatureSource` (a backbone's, or an experiment's), so all get the same
    resume, prefetch and progress behaviour; ``source.build()`` is called only when there is work to do.

    ``rows`` (increasing rows of ``frames``) writes only those frames, as a shard does; they are
    computed in the very batches of a run over all of ``frames`` (:func:`plan_spans`: the source
    must batch ``batch_size`` images at a time from its input's start, as the engines do).
    ``record`` and ``extra_datasets`` are stored in a new file; ``must_match`` attrs are checked
    against an existing one (see :class:`FeatureWriter`). ``on_block(frames_done, frames)`` is
    called when the file is opened and after each block is stored.
    """
    from tqdm.auto import tqdm

    params = AugmentParams(config.aug_rotation, config.aug_shift, config.aug_zoom, config.aug_flip)
    rows = np.arange(len(frames)) if rows is None else np.asarray(rows, dtype=np.int64)
    own = frames if len(rows) == len(frames) else frames.iloc[rows].reset_index(drop=True)
    with FeatureWriter(out_path, config, own, overwrite=overwrite, weights_source=weights_source,
                       item_shape=source.item_shape, record=record, must_match=must_match,
                       extra_datasets=extra_datasets) as writer:
        start = writer.frames_done
        if on_block is not None:
            on_block(start, len(own))
        if writer.complete:
            return ExtractionSummary(source.name, out_path, len(own), config.copies, 0.0, 0,
                                     out_path.stat().st_size / 1e6, "up to date")
        status = "resumed" if start else "written"
        embed = source.build()
        began = time.perf_counter()
        spans = plan_spans(len(frames), rows[start:], block, config.copies, batch_size)
        blocks = prefetch(iter_spans(frames, spans, config.input_size, config.copies, config.seed, params,
                                     source.prepare), QUEUE_BLOCKS)
        copies = config.copies
        with tqdm(total=len(own), initial=start, unit="frame", desc=source.name, disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            position = start
            for span, images in blocks:
                computed = np.asarray(embed(images))
                # Image i of the span is copy (skip + i) % copies of frame first + (skip + i) // copies.
                at = (span.rows - span.first) * copies - span.skip
                picked = computed[at[:, None] + np.arange(copies)]  # (frames, copies, *item)
                writer.write(position, picked.swapaxes(0, 1).astype(config.dtype, copy=False))
                position += len(span.rows)
                bar.update(len(span.rows))
                if on_block is not None:
                    on_block(position, len(own))
        seconds = time.perf_counter() - began
        path = writer.finish()
    return ExtractionSummary(source.name, path, len(own), config.copies, seconds, len(own) - start,
                             path.stat().st_size / 1e6, status)


def backbone_source(frames: pd.DataFrame, spec: BackboneSpec, source: WeightsSource, config: ExtractionConfig,
                    batch_size: int) -> FeatureSource:
    """The product's feature source: ``spec``'s pooled features on ``config``'s engine and precision (int8
    calibrated on ``frames``, :func:`calibration_set`)."""

    def build() -> Embed:
        return build_embed(config.engine, spec, source, config.input_size, config.precision, batch_size,
                           _calibration(frames, config))

    return FeatureSource(spec.name, (config.feature_dim,), build)


def block_frames(copies: int, batch_size: int) -> int:
    """Frames per stored block: whole network batches per block, so that only the very last batch is padded."""
    return max(CHUNK_FRAMES, batch_size) if copies == 1 else CHUNK_FRAMES


def extract_source(frames: pd.DataFrame, config: ExtractionConfig, out_path: Path, feature_source: FeatureSource,
                   weights: WeightsSource, *, batch_size: int = 32, overwrite: bool = False, progress: bool = True,
                   rows: np.ndarray | None = None, record: dict[str, Any] | None = None,
                   must_match: dict[str, Any] | None = None, extra_datasets: dict[str, np.ndarray] | None = None,
                   on_block: Callable[[int, int], None] | None = None) -> ExtractionSummary:
    """Write (or resume, or confirm) the feature file of ``feature_source`` run on a backbone of ``weights``, as stage
    one writes every backbone's: whole batches per block, and the file records ``batch_size`` and TensorFlow's thread
    count (:func:`compute_record`). With ``rows`` only those frames of ``frames`` (a shard), computed in the batches
    of a whole run."""
    return write_features(frames, config, out_path, feature_source, weights_source=weights.description,
                          block=block_frames(config.copies, batch_size), overwrite=overwrite, progress=progress,
                          rows=rows, batch_size=batch_size, record={**compute_record(batch_size), **(record or {})},
                          must_match=must_match, extra_datasets=extra_datasets, on_block=on_block)


def extract_backbone(frames: pd.DataFrame, spec: BackboneSpec, source: WeightsSource, config: ExtractionConfig,
                     out_path: Path, *, batch_size: int = 32, **options: Any) -> ExtractionSummary:
    """Write (or resume, or confirm) the feature file of one backbone: :func:`extract_source` of its
    :func:`backbone_source` (``options``: those of :func:`extract_source`)."""
    return extract_source(frames, config, out_path, backbone_source(frames, spec, source, config, batch_size), source,
                          batch_size=batch_size, **options)


TF_THREADS_ENV = "TF_NUM_INTRAOP_THREADS"


def set_tf_threads(threads: int) -> None:
    """Make TensorFlow compute with ``threads`` threads (intra- and inter-op); before it starts, or the same count.

    Set through TensorFlow's own environment variables, so that it holds however TensorFlow is
    first used in this process; once TensorFlow runs, another count is refused.
    """
    if threads < 1:
        raise LusfeatError(f"--threads {threads}: give 1 or more TensorFlow threads")
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        if tf_threads() != threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError as error:
                raise LusfeatError(f"TensorFlow already runs with {tf_threads()} threads in this process, not "
                                   f"{threads}: start a new process (or worker) for --threads {threads}") from error
    os.environ[TF_THREADS_ENV] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)


def tf_threads() -> int:
    """The intra-op thread count TensorFlow computes with in this process (its default: the usable cores)."""
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        configured = tf.config.threading.get_intra_op_parallelism_threads()
        if configured:
            return configured
    if os.environ.get(TF_THREADS_ENV, "").strip().isdigit() and int(os.environ[TF_THREADS_ENV]) > 0:
        return int(os.environ[TF_THREADS_ENV])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compute_record(batch_size: int) -> dict[str, int]:
    """What, besides the settings, fixes a feature's last bits: the network batch and TensorFlow's threads.

    Measured (docs/distributed.md): MobileNet features of one image differ by up to ~1e-6 with
    its place and neighbours in a batch, and between 1 and 2 threads. Stored as attrs of every
    new file; a merge checks its shards agree.
    """
    return {"batch_size": int(batch_size), "tf_threads": tf_threads()}


def calibration_set(frames: pd.DataFrame, seed: int, count: int = CALIBRATION_FRAMES) -> tuple[pd.DataFrame, str]:
    """The frames an int8 model is calibrated on: ``count`` of ``frames`` drawn with ``seed`` (in file
    order), and a sha256 naming them (recorded in the feature file as ``calibration``)."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(frames))[:count])
    subset = frames.iloc[chosen]
    names = "\n".join(f"{path}#{index}" for path, index in zip(subset["path"], subset["frame_index"], strict=True))
    return subset, hashlib.sha256(f"seed {seed}\n{names}".encode()).hexdigest()


def _calibration(frames: pd.DataFrame, config: ExtractionConfig) -> Calibration | None:
    """For an int8 config: its calibration frames, whole and unaugmented, decoded only if the cache misses."""
    if config.precision != "int8":
        return None
    subset, key = calibration_set(frames, config.seed)
    if key != config.calibration:
        raise LusfeatError(f"int8 calibration frames {key} differ from the config's {config.calibration}")

    def images() -> np.ndarray:
        params = AugmentParams(config.aug_rotation, config.aug_shift, config.aug_zoom, config.aug_flip)
        return np.stack([copies[0] for copies in iter_images(subset, config.input_size, 1, config.seed, params)])

    return Calibration(key, images)


def make_config(spec: BackboneSpec, source: WeightsSource, *, input_size: int | None, dtype: str,
                augment_copies: int, params: AugmentParams, seed: int, frame_step: int,
                manifest_sha256: str, precision: str = "float32", engine: str = "tensorflow",
                frames: pd.DataFrame | None = None) -> ExtractionConfig:
    """The config of one feature file; ``frames`` (the planned frames) is needed for int8, to name its calibration."""
    extra = {}
    if precision == "int8":
        if frames is None:
            raise LusfeatError("int8 features need the planned frames to choose their calibration frames")
        extra["calibration"] = calibration_set(frames, seed)[1]
    return ExtractionConfig(**{
        "engine": engine, "engine_version": engine_version(engine, precision),
        "backbone": spec.name, "weights": source.identity, "input_size": input_size or spec.input_size,
        "feature_dim": spec.feature_dim, "dtype": dtype, "copies": augment_copies + 1,
        "aug_rotation": params.rotation, "aug_shift": params.shift, "aug_zoom": params.zoom, "aug_flip": params.flip,
        "seed": seed, "frame_step": frame_step, "manifest_sha256": manifest_sha256, "precision": precision, **extra,
    })


def output_path(out: Path, spec: BackboneSpec) -> Path:
    """``OUT/<backbone>.h5``."""
    return out / f"{spec.name}.h5"


def embed_frames(frames: pd.DataFrame, config: ExtractionConfig, source: WeightsSource, *, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """Pooled features ``(n_frames, dim)`` of copy 0 (the frame itself), as a feature file of ``config`` holds them.

    Stage one's own frames, backbone, engine and precision; rounded through the file's stored dtype, since models are
    trained on features as the file held them.
    """
    from tqdm.auto import tqdm

    spec = get_spec(config.backbone)
    calibration = Calibration(config.calibration) if config.precision == "int8" else None  # from the cache only
    embed = build_embed(config.engine, spec, source, config.input_size, config.precision, batch_size, calibration)
    params = AugmentParams(config.aug_rotation, config.aug_shift, config.aug_zoom, config.aug_flip)
    images = iter_images(frames, config.input_size, 1, config.seed, params)
    out = []
    with tqdm(total=len(frames), unit="frame", desc=spec.name, disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(frames), PREDICT_BLOCK_FRAMES):
            n = min(PREDICT_BLOCK_FRAMES, len(frames) - start)
            block = np.stack([next(images)[0] for _ in range(n)])
            out.append(embed(block).astype(config.dtype).astype("float32"))
            bar.update(n)
    return np.concatenate(out) if out else np.zeros((0, config.feature_dim), np.float32)
