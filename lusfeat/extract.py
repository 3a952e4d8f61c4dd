"""Stage one: run each frozen backbone once over every frame and its augmented copies -> HDF5.

    python -m lusfeat.extract [--manifest data_manifest.csv] [--backbone xception,vgg16]
        [--weights imagenet|none|FILE|DIR] [--augment-copies 2] [--frame-step 1] [--out features/]
        [--tap NAME]

With ``--tap NAME`` it stores the backbone's intermediate activation map NAME (float16 by
default) in ``OUT/<backbone>-<tap>.h5`` instead of pooled features, for ``lusfeat.finetune``.

Decoding and augmentation run in a background thread that stays a bounded number of blocks
ahead of the network, so memory is flat in the number of frames and the CPU cores stay busy.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lusfeat.augment import AugmentParams, augmented_copies, frame_key
from lusfeat.backbones import (
    BACKBONES,
    PRECISIONS,
    BackboneSpec,
    WeightsSource,
    build_feature_extractor,
    build_tap_extractor,
    fetch_weights,
    get_spec,
    get_tap,
    resolve_weights,
)
from lusfeat.errors import LusfeatError
from lusfeat.frames import count_frames, frame_indices, iter_frames
from lusfeat.manifest import file_sha256, read_manifest
from lusfeat.store import CHUNK_FRAMES, ExtractionConfig, FeatureWriter

log = logging.getLogger("lusfeat.extract")
DEFAULT_BACKBONES = ("xception", "resnet50", "vgg16")
QUEUE_BLOCKS = 2  # blocks decoded ahead of the network: bounds memory


def plan_frames(manifest: pd.DataFrame, frame_step: int = 1) -> pd.DataFrame:
    """The per-frame table: one row per frame to extract, in manifest order, with its labels and file."""
    rows = []
    for record in manifest.itertuples(index=False):
        n_frames = count_frames(record.file)
        indices = frame_indices(n_frames, frame_step, record.frame)
        if not indices:
            raise LusfeatError(f"{record.path}: frame {record.frame} asked for, but the file has {n_frames} frames")
        for index in indices:
            rows.append((record.path, index, record.patient_id, record.region, record.score,
                         record.video_id, record.group, record.file))
    columns = ["path", "frame_index", "patient_id", "region", "score", "video_id", "group", "file"]
    return pd.DataFrame(rows, columns=columns)


FrameTransform = Callable[[np.ndarray, int], np.ndarray]  # (full-size rgb, size) -> (size, size, 3) rgb


def iter_images(frames: pd.DataFrame, size: int, copies: int, seed: int, params: AugmentParams,
                transform: FrameTransform | None = None) -> Iterator[np.ndarray]:
    """``(copies, size, size, 3)`` uint8 per row of ``frames``, in order, each file decoded once.

    Without ``transform`` FFmpeg resizes the whole frame; with one (e.g. a crop) the full-size
    frame goes to ``transform(rgb, size)``. Augmented copies are made from the result.
    """
    for file, rows in frames.groupby("file", sort=False):
        wanted = rows["frame_index"].tolist()
        path = rows["path"].iloc[0]
        for index, rgb in iter_frames(file, wanted, None if transform else size):
            if transform is not None:
                rgb = transform(rgb, size)
            yield augmented_copies(rgb, frame_key(path, index), copies, seed, params)


def iter_blocks(frames: pd.DataFrame, start: int, block: int, size: int, copies: int, seed: int,
                params: AugmentParams, transform: FrameTransform | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images[n, copies, size, size, 3])`` blocks of consecutive frames from ``start``."""
    images = iter_images(frames.iloc[start:], size, copies, seed, params, transform)
    position = start
    while position < len(frames):
        n = min(block, len(frames) - position)
        batch = np.empty((n, copies, size, size, 3), np.uint8)
        for i in range(n):
            batch[i] = next(images)
        yield position, batch
        position += n


def _prefetch(blocks: Iterator, depth: int) -> Iterator:
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


class Embedder:
    """A compiled ``uint8 images -> features`` call on fixed-size batches (no retracing)."""

    def __init__(self, model, batch_size: int) -> None:
        import tensorflow as tf

        self.batch_size = batch_size
        self.model = model
        def forward(images):
            return model(images, training=False)

        # A compiled call: 1.2-1.5x faster than model.predict on this CPU (FINDINGS.md).
        self._call = tf.function(forward, autograph=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:  # pad: one input shape, one trace
                batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
            out.append(np.asarray(self._call(batch))[:n])
        return np.concatenate(out) if out else np.empty((0, self.model.output_shape[-1]), np.float32)


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
    make_embed: Callable[[], Callable[[np.ndarray], np.ndarray]],
    *,
    name: str,
    weights_source: str = "",
    transform: FrameTransform | None = None,
    block: int = CHUNK_FRAMES,
    overwrite: bool = False,
    progress: bool = True,
    item_shape: tuple[int, ...] | None = None,
) -> ExtractionSummary:
    """Write (or resume, or confirm) one feature file: frames -> images -> ``embed`` -> HDF5.

    ``make_embed()`` is called only when there is work to do; its result maps uint8 images
    ``(n, size, size, 3)`` to features ``(n, dim)`` (or, for a tap file, maps ``(n, *item_shape)``). Shared by backbones, lung crops and the
    hand-made LUS signal, so all get the same resume, prefetch and progress behaviour.
    """
    from tqdm.auto import tqdm

    params = AugmentParams(config.aug_rotation, config.aug_shift, config.aug_zoom, config.aug_flip)
    with FeatureWriter(out_path, config, frames, overwrite=overwrite, weights_source=weights_source,
                       item_shape=item_shape) as writer:
        start = writer.frames_done
        if writer.complete:
            return ExtractionSummary(name, out_path, len(frames), config.copies, 0.0, 0,
                                     out_path.stat().st_size / 1e6, "up to date")
        status = "resumed" if start else "written"
        embed = make_embed()
        began = time.perf_counter()
        blocks = _prefetch(iter_blocks(frames, start, block, config.input_size, config.copies,
                                       config.seed, params, transform), QUEUE_BLOCKS)
        with tqdm(total=len(frames), initial=start, unit="frame", desc=name, disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for position, images in blocks:
                n, copies = images.shape[:2]
                features = np.asarray(embed(images.reshape(n * copies, *images.shape[2:])))
                features = features.reshape(n, copies, *features.shape[1:]).swapaxes(0, 1)
                writer.write(position, features.astype(config.dtype, copy=False))
                bar.update(n)
        seconds = time.perf_counter() - began
        path = writer.finish()
    return ExtractionSummary(name, path, len(frames), config.copies, seconds, len(frames) - start,
                             path.stat().st_size / 1e6, status)


def extract_backbone(
    frames: pd.DataFrame,
    spec: BackboneSpec,
    source: WeightsSource,
    config: ExtractionConfig,
    out_path: Path,
    *,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    transform: FrameTransform | None = None,
) -> ExtractionSummary:
    """Write (or resume, or confirm) the feature file of one backbone (its tap maps if ``config.tap``)."""
    # Whole network batches per block, so that only the very last batch is padded.
    block = max(CHUNK_FRAMES, batch_size) if config.copies == 1 else CHUNK_FRAMES
    if config.tap:
        # Built now: the file's map shape comes from the network (a few seconds, against minutes of maps).
        model = build_tap_extractor(spec, source, config.tap, config.input_size, config.precision)
        return write_features(frames, config, out_path, lambda: Embedder(model, batch_size),
                              name=f"{spec.name}-{config.tap}", weights_source=source.description,
                              transform=transform, block=block, overwrite=overwrite, progress=progress,
                              item_shape=tuple(model.output_shape[1:]))

    def make_embed() -> Embedder:
        return Embedder(build_feature_extractor(spec, source, config.input_size, config.precision), batch_size)

    return write_features(frames, config, out_path, make_embed, name=spec.name, weights_source=source.description,
                          transform=transform, block=block, overwrite=overwrite, progress=progress)


def make_config(spec: BackboneSpec, source: WeightsSource, *, input_size: int | None, dtype: str,
                augment_copies: int, params: AugmentParams, seed: int, frame_step: int,
                manifest_sha256: str, precision: str = "float32", tap: str = "") -> ExtractionConfig:
    extra = {"tap": tap, "pooling": "none", "feature_dim": get_tap(spec, tap).channels} if tap else {}
    return ExtractionConfig(**{
        "backbone": spec.name, "weights": source.identity, "input_size": input_size or spec.input_size,
        "feature_dim": spec.feature_dim, "dtype": dtype, "copies": augment_copies + 1,
        "aug_rotation": params.rotation, "aug_shift": params.shift, "aug_zoom": params.zoom, "aug_flip": params.flip,
        "seed": seed, "frame_step": frame_step, "manifest_sha256": manifest_sha256, "precision": precision, **extra,
    })


def output_path(out: Path, spec: BackboneSpec, tap: str = "") -> Path:
    """``OUT/<backbone>.h5`` for pooled features, ``OUT/<backbone>-<tap>.h5`` for a tap's maps."""
    return out / (f"{spec.name}-{tap}.h5" if tap else f"{spec.name}.h5")


def add_frame_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose frames and copies; shared by every command that writes a feature file."""
    parser.add_argument("--manifest", default="data_manifest.csv", help="manifest CSV (default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="folder the manifest paths are relative to "
                        "(default: $LUSFEAT_DATA_ROOT, else the manifest's folder)")
    parser.add_argument("--frame-step", type=int, default=1, help="every K-th frame of a video (default: %(default)s)")
    parser.add_argument("--augment-copies", type=int, default=2, help="augmented copies per frame (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace feature files made with other settings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.extract", description=__doc__.split("\n\n")[0])
    add_frame_arguments(parser)
    parser.add_argument("--backbone", default=",".join(DEFAULT_BACKBONES),
                        help=f"comma-separated, from {', '.join(BACKBONES)} (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="imagenet (Keras download, or "
                        "$LUSFEAT_WEIGHTS_DIR/<file> when present), none (random), a weights FILE, or a DIR")
    parser.add_argument("--rotation", type=float, default=AugmentParams.rotation, help="degrees (default: %(default)s)")
    parser.add_argument("--shift", type=float, default=AugmentParams.shift, help="fraction (default: %(default)s)")
    parser.add_argument("--zoom", type=float, default=AugmentParams.zoom, help="fraction (default: %(default)s)")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--input-size", type=int, default=None, help="pixels, square (default: the backbone's native)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default=None,
                        help="stored type (default: float32 for pooled features, float16 for --tap maps)")
    parser.add_argument("--tap", default="", metavar="NAME",
                        help="store the intermediate activation map NAME instead of pooled features, in "
                        "OUT/<backbone>-<tap>.h5, for lusfeat.finetune (xception: middle = middle-flow output, "
                        "19x19x728 at 299 px; block13 = block13 output, 10x10x1024)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="backbone compute type; bfloat16 is 1.3-2x faster on CPUs with AVX-512 BF16, features "
                        "within cosine 0.999 of float32 for xception/vgg16 (default: %(default)s)")
    parser.add_argument("--out", default="features", help="output folder, one <backbone>.h5 each (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    failures: list[str] = []
    try:
        if args.augment_copies < 0 or args.batch_size < 1:
            raise LusfeatError("--augment-copies must be >= 0 and --batch-size >= 1")
        names = [name.strip() for name in args.backbone.split(",") if name.strip()]
        specs = [get_spec(name) for name in names]
        manifest = read_manifest(args.manifest, args.data_root)
        frames = plan_frames(manifest, args.frame_step)
        if frames.empty:
            raise LusfeatError(f"{args.manifest}: no frames to extract")
        params = AugmentParams(args.rotation, args.shift, args.zoom, not args.no_flip)
        manifest_sha = file_sha256(args.manifest)
        # Resolve every backbone's weights first: a missing file is said at once, not after hours.
        jobs = []
        dtype = args.dtype or ("float16" if args.tap else "float32")
        for spec in specs:
            try:
                if args.tap:
                    get_tap(spec, args.tap)
                source = resolve_weights(spec, args.weights)
                fetch_weights(spec, source, args.input_size)
            except LusfeatError as error:
                failures.append(str(error))
                print(f"error: {error}", file=sys.stderr)
                continue
            config = make_config(spec, source, input_size=args.input_size, dtype=dtype,
                                 augment_copies=args.augment_copies, params=params, seed=args.seed,
                                 frame_step=args.frame_step, manifest_sha256=manifest_sha, precision=args.precision,
                                 tap=args.tap)
            jobs.append((spec, source, config))
        log.info("%d frames from %d files of %d patients; %d copies each",
                 len(frames), len(manifest), manifest["patient_id"].nunique(), args.augment_copies + 1)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out = Path(args.out)
    for spec, source, config in jobs:
        try:
            summary = extract_backbone(frames, spec, source, config, output_path(out, spec, config.tap),
                                       batch_size=args.batch_size, overwrite=args.overwrite,
                                       progress=not args.no_progress)
            print(summary.line())
        except LusfeatError as error:
            failures.append(str(error))
            print(f"error: {error}", file=sys.stderr)
        except KeyboardInterrupt:
            print(f"interrupted: rerun the same command to resume {spec.name} where it stopped", file=sys.stderr)
            return 130
    if failures:
        print(f"{len(failures)} backbone(s) failed; see the errors above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
