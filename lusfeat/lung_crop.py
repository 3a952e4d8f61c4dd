"""Backbone features of the lung only: crop each frame below the pleural line, then extract.

    python -m lusfeat.lung_crop --backbone xception [--manifest data_manifest.csv] [--frame-step 10]
        [--augment-copies 2] [--weights imagenet] [--out features/lung_crop/]

writes ``OUT/<backbone>.h5`` (same format and per-frame table as ``lusfeat.extract``'s; ``pooling``
is recorded as ``avg:lung-crop-v1`` so it is never mistaken for whole-frame features). The default
folder is a subfolder, so that ``lusfeat.fit``'s default ``features/*.h5`` never sees two
files of one backbone.

Why: a whole LUS frame is mostly chest wall (skin, muscle, ribs) above the pleural line, whose look
depends on the patient's build more than on the lung; the severity signs (B-lines, white lung,
consolidations, a broken pleura) are at and below the pleura. Global average pooling over the whole
frame dilutes them. The crop box of a frame (:func:`lung_box`): rows from just above the pleural
line (:func:`lusfeat.lus_signal.pleura_row`, so the line itself stays in) to the sector's bottom;
columns where that band is lit. The crop is resized to the backbone's input size (aspect not kept:
the network sees the lung at a larger scale), and the augmented copies are made from the crop, with
the same deterministic augmentation as stage one.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lusfeat.errors import LusfeatError
from lusfeat.lus_signal import pleura_row, rgb_to_grey, sector_depth

log = logging.getLogger("lusfeat.lung_crop")
CROP_VERSION = 1
POOLING_TAG = f"avg:lung-crop-v{CROP_VERSION}"
ABOVE_PLEURA = 0.04  # fraction of the sector depth kept above the pleural row


def lung_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` pixel bounds (end exclusive) of the lung below the pleura."""
    grey = np.asarray(grey, dtype=np.float64)
    height, width = grey.shape
    depth = sector_depth(grey)
    top = max(0, pleura_row(grey, depth) - int(ABOVE_PLEURA * depth))
    bottom = max(depth, top + 8)
    lit_columns = np.flatnonzero((grey[top:bottom] > 0.02).mean(axis=0) > 0.5)
    if len(lit_columns) < 8:
        left, right = int(0.3 * width), int(0.7 * width)
    else:
        left, right = int(lit_columns[0]), int(lit_columns[-1]) + 1
    return top, min(bottom, height), left, right


def crop_lung(rgb: np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: the :func:`lung_box` of ``rgb`` resized (bilinear)."""
    top, bottom, left, right = lung_box(rgb_to_grey(rgb))
    crop = np.ascontiguousarray(rgb[top:bottom, left:right])
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def iter_crops(frames: pd.DataFrame, size: int, copies: int, seed: int, params) -> Iterator[np.ndarray]:
    """``(copies, size, size, 3)`` per row of ``frames``: the lung crop and its augmented copies."""
    from lusfeat.augment import augmented_copies, frame_key
    from lusfeat.frames import iter_frames

    for file, rows in frames.groupby("file", sort=False):
        path = rows["path"].iloc[0]
        for index, rgb in iter_frames(file, rows["frame_index"].tolist()):
            yield augmented_copies(crop_lung(rgb, size), frame_key(path, index), copies, seed, params)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.lung_crop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default="data_manifest.csv", help="manifest CSV (default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="folder the manifest paths are relative to")
    parser.add_argument("--backbone", default="xception", help="one backbone name (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="as for lusfeat.extract")
    parser.add_argument("--frame-step", type=int, default=1, help="every K-th frame of a video (default: %(default)s)")
    parser.add_argument("--augment-copies", type=int, default=2, help="augmented copies (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--out", default="features/lung_crop", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a file made with other settings")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lusfeat.augment import AugmentParams
    from lusfeat.backbones import build_feature_extractor, get_spec, resolve_weights
    from lusfeat.extract import Embedder, plan_frames
    from lusfeat.manifest import file_sha256, read_manifest
    from lusfeat.store import CHUNK_FRAMES, ExtractionConfig, FeatureWriter

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        spec = get_spec(args.backbone)
        source = resolve_weights(spec, args.weights)
        manifest = read_manifest(args.manifest, args.data_root)
        frames = plan_frames(manifest, args.frame_step)
        params = AugmentParams()
        copies = args.augment_copies + 1
        config = ExtractionConfig(
            backbone=spec.name, weights=source.identity, input_size=spec.input_size, feature_dim=spec.feature_dim,
            dtype="float32", copies=copies, aug_rotation=params.rotation, aug_shift=params.shift,
            aug_zoom=params.zoom, aug_flip=params.flip, seed=args.seed, frame_step=args.frame_step,
            manifest_sha256=file_sha256(args.manifest), pooling=POOLING_TAG,
        )
        out = Path(args.out) / f"{spec.name}.h5"
        began = time.perf_counter()
        with FeatureWriter(out, config, frames, overwrite=args.overwrite, weights_source=source.description) as writer:
            if writer.complete:
                print(f"{out}: up to date")
                return 0
            start = writer.frames_done
            embed = Embedder(build_feature_extractor(spec, source, spec.input_size), args.batch_size)
            images = iter_crops(frames.iloc[start:], spec.input_size, copies, args.seed, params)
            position = start
            while position < len(frames):
                n = min(CHUNK_FRAMES, len(frames) - position)
                batch = np.stack([next(images) for _ in range(n)])  # (n, copies, s, s, 3)
                features = embed(batch.reshape(n * copies, *batch.shape[2:])).reshape(n, copies, -1)
                writer.write(position, features.transpose(1, 0, 2).astype(np.float32))
                position += n
                log.info("%s: %d / %d frames, %.1f frames/s", out.name, position, len(frames),
                         (position - start) / (time.perf_counter() - began))
            writer.finish()
        print(f"{out}: {len(frames) - start} frames x {copies} copies in {time.perf_counter() - began:.1f} s")
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
