"""Backbone features of the lung only: crop each frame below the pleural line, then extract.

    python -m lusfeat.experiments.lung_crop --backbone xception [--manifest data_manifest.csv] [--frame-step 10]
        [--augment-copies 2] [--weights imagenet] [--out features/lung_crop/]

writes ``OUT/<backbone>.h5`` (same format and per-frame table as ``lusfeat.extract``'s; ``pooling``
is recorded as ``avg:lung-crop-v1`` so it is never mistaken for whole-frame features). The default
folder is a subfolder, so that ``lusfeat.fit``'s default ``features/*.h5`` never sees two
files of one backbone.

Why: a whole LUS frame is mostly chest wall (skin, muscle, ribs) above the pleural line, whose look
depends on the patient's build more than on the lung; the severity signs (B-lines, white lung,
consolidations, a broken pleura) are at and below the pleura. Global average pooling over the whole
frame dilutes them. The crop box of a frame (:func:`lung_box`): rows from just above the pleural
line (:func:`lusfeat.experiments.lus_signal.pleura_row`, so the line itself stays in) to the sector's bottom;
columns where that band is lit. The crop is resized to the backbone's input size (aspect not kept:
the network sees the lung at a larger scale), and the augmented copies are made from the crop, with
the same deterministic augmentation as stage one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lusfeat.errors import LusfeatError
from lusfeat.experiments.lus_signal import pleura_row, rgb_to_grey, sector_depth

log = logging.getLogger("lusfeat.experiments.lung_crop")
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


def build_parser() -> argparse.ArgumentParser:
    from lusfeat.cli import add_frame_arguments

    parser = argparse.ArgumentParser(prog="python -m lusfeat.experiments.lung_crop", description=__doc__.split("\n\n")[0])
    add_frame_arguments(parser)
    parser.add_argument("--backbone", default="xception", help="one backbone name (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="as for lusfeat.extract")
    parser.add_argument("--batch-size", type=int, default=32, help="network batch (default: %(default)s)")
    parser.add_argument("--out", default="features/lung_crop", help="output folder (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lusfeat.augment import AugmentParams
    from lusfeat.backbones import get_spec, resolve_weights
    from lusfeat.embed import backbone_source, extract_source, make_config, plan_frames
    from lusfeat.manifest import file_sha256, read_manifest

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        spec = get_spec(args.backbone)
        source = resolve_weights(spec, args.weights)
        manifest = read_manifest(args.manifest, args.data_root)
        frames = plan_frames(manifest, args.frame_step)
        whole_frame = make_config(spec, source, input_size=None, dtype="float32",
                                  augment_copies=args.augment_copies, params=AugmentParams(), seed=args.seed,
                                  frame_step=args.frame_step, manifest_sha256=file_sha256(args.manifest))
        config = dataclasses.replace(whole_frame, pooling=POOLING_TAG)
        # The backbone's own feature source, fed the crop instead of the whole frame.
        cropped = dataclasses.replace(backbone_source(frames, spec, source, config, args.batch_size), prepare=crop_lung)
        summary = extract_source(frames, config, Path(args.out) / f"{spec.name}.h5", cropped, source,
                                 batch_size=args.batch_size, overwrite=args.overwrite)
        print(summary.line())
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
