"""Hand-made lung-ultrasound signal: a few numbers per frame that a sonographer would look at.

    python -m lusfeat.experiments.lus_signal [--manifest data_manifest.csv] [--frame-step 10] [--augment-copies 2]
        [--size 128] [--out features/lus_signal/]

writes ``OUT/lus_signal.h5`` in the same format as a backbone's feature file (same per-frame table,
same copies and augmentation), so it loads with :func:`lusfeat.store.load_features` and lines up
row for row with ``OUT/<backbone>.h5`` made with the same manifest, frame step and copies; it can
be used alone (a baseline) or concatenated to backbone features.

Each frame is read as grey levels in [0, 1] at ``size x size`` (COVID-BLUES frames are square,
350 px, convex probe). Depths are measured inside the sector: the sector's bottom is the last row
where the central columns are lit. The pleural line is taken as the brightest row of the central
columns between 9% and 45% of the sector depth (above: skin). From there (names as in :data:`SIGNAL_NAMES`):

- **pleural line**: its depth, its brightness, its continuity across the sector (fraction of
  columns where the line is bright, number of gaps, variation along the line). A broken or
  irregular pleura goes with scores 2-3.
- **below the pleura** (white lung): mean brightness in a near, middle and deep band, also relative
  to the pleura and to the soft tissue above it; fractions of bright and of dark pixels.
- **vertical artefacts** (B-lines): the column profile of the middle and deep bands (peakiness,
  narrow-streak energy after removing the slow trend, fraction of bright columns), how similar the
  middle and deep column profiles are (B-lines run down to the bottom of the image), and the ratio
  of horizontal to vertical gradient energy (vertical streaks have horizontal gradients).
- **A-lines**: brightness at twice the pleural depth against its neighbourhood (a reverberation of
  the pleura, the sign of normal aeration, score 0).

It is deliberately small and fast (about 1 ms a frame after decoding); no parameter is learned.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from lusfeat.errors import LusfeatError

log = logging.getLogger("lusfeat.experiments.lus_signal")

SIGNAL_VERSION = 2
BACKBONE_NAME = "lus_signal"
DEFAULT_SIZE = 128
SIGNAL_NAMES: tuple[str, ...] = (
    "sector_depth",          # rows lit in the central columns / image height
    "sector_mean",           # mean grey level inside the sector
    "pleura_depth",          # pleural row / sector depth
    "pleura_brightness",     # mean grey of the pleural row (central columns)
    "pleura_contrast",       # pleura brightness / mean of the sector
    "pleura_continuity",     # fraction of sector columns where the line is bright
    "pleura_gaps",           # dark runs along the line (count)
    "pleura_variation",      # std / mean of the line's brightness along the columns
    "pleura_row_spread",     # std of the per-column pleural row / sector depth (irregular line)
    "above_mean",            # soft tissue above the pleura
    "near_mean",             # band just below the pleura
    "mid_mean",
    "deep_mean",
    "below_over_pleura",     # mean below the pleura / pleura brightness (white lung)
    "below_over_above",      # mean below the pleura / soft tissue above
    "below_bright_fraction",  # pixels below the pleura brighter than the pleura's half
    "below_dark_fraction",   # nearly black pixels below the pleura (shadows)
    "column_cv",             # std / mean of the middle+deep column profile
    "column_peak",           # max / median of that profile
    "column_streak",         # std of that profile minus its 15-column moving average, / mean
    "column_bright_fraction",  # columns brighter than 1.25 x the median column
    "column_coherence",      # correlation of the middle-band and deep-band column profiles
    "gradient_ratio",        # horizontal / vertical gradient energy below the pleura
    "a_line",                # brightness at twice the pleural depth / its neighbourhood
)


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(values) < width:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="same")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 1e-12 else 0.0


def central_columns(width: int) -> slice:
    """The middle 40% of the columns: inside a convex sector at every depth."""
    return slice(int(0.3 * width), int(0.7 * width))


def sector_depth(grey: np.ndarray) -> int:
    """Rows from the top to the sector's bottom: the last row where most central pixels are lit."""
    height = grey.shape[0]
    row_lit = _smooth((grey[:, central_columns(grey.shape[1])] > 0.02).mean(axis=1), 5)
    lit_rows = np.flatnonzero(row_lit > 0.5)
    depth = int(lit_rows[-1]) + 1 if len(lit_rows) else height
    return max(depth, height // 2)


def pleura_row(grey: np.ndarray, depth: int | None = None) -> int:
    """The pleural line's row: the brightest row of the central columns between 9% and 45% of the sector depth (above: skin)."""
    depth = sector_depth(grey) if depth is None else depth
    rows = _smooth(grey[:depth, central_columns(grey.shape[1])].mean(axis=1), 3)
    # Skip the top 9%: skin and subcutaneous fat are often as bright as the pleura.
    top, bottom = max(2, int(0.09 * depth)), max(int(0.45 * depth), int(0.09 * depth) + 3)
    return top + int(np.argmax(rows[top:bottom]))


def frame_signal(grey: np.ndarray) -> np.ndarray:
    """The :data:`SIGNAL_NAMES` values of one frame, ``grey`` ``(h, w)`` in [0, 1]; always finite."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2 or min(grey.shape) < 32:
        raise ValueError(f"frame_signal needs a 2-D grey frame of at least 32 x 32 pixels, got shape {grey.shape}")
    height, width = grey.shape
    lit = grey > 0.02
    central = central_columns(width)
    depth = sector_depth(grey)
    sector = grey[:depth]
    sector_lit = lit[:depth]
    sector_mean = float(sector[sector_lit].mean()) if sector_lit.any() else 0.0

    rows = _smooth(sector[:, central].mean(axis=1), 3)
    top = max(2, int(0.06 * depth))
    pleura = pleura_row(grey, depth)
    pleura_brightness = float(rows[pleura])

    # Columns lit over the whole band below the pleura: the part of the sector every depth reaches.
    below = sector[pleura + 2:]
    full_columns = np.flatnonzero(lit[pleura + 2:depth].mean(axis=0) > 0.9)
    if len(full_columns) < 8:
        full_columns = np.arange(central.start, central.stop)
    # Pleural line per column: brightest pixel within a band around the central pleural row.
    band = max(2, int(0.06 * depth))
    window = sector[max(0, pleura - band):pleura + band + 1, full_columns]
    line = _smooth(window.max(axis=0), 3)
    line_rows = window.argmax(axis=0)
    bright = line > 0.6 * np.percentile(line, 90)
    continuity = float(bright.mean())
    gaps = float(np.count_nonzero(np.diff(bright.astype(np.int8)) == -1))
    variation = float(line.std() / (line.mean() + 1e-6))
    row_spread = float(line_rows.std() / depth)

    above = sector[top:max(top + 1, pleura - 2), central]
    above_mean = float(above.mean())
    span = max(3, depth - pleura - 2)
    cut = [pleura + 2 + int(span * f) for f in (0.0, 0.35, 0.65, 1.0)]
    bands = [sector[cut[i]:max(cut[i] + 1, cut[i + 1])][:, full_columns] for i in range(3)]
    near_mean, mid_mean, deep_mean = (float(b.mean()) for b in bands)
    below_pixels = below[:, full_columns]
    below_mean = float(below_pixels.mean()) if below_pixels.size else 0.0

    profile = np.concatenate([bands[1], bands[2]]).mean(axis=0)
    profile_mean = profile.mean() + 1e-6
    trend = _smooth(profile, 15)
    mid_profile, deep_profile = bands[1].mean(axis=0), bands[2].mean(axis=0)

    if below_pixels.shape[0] > 2 and below_pixels.shape[1] > 2:
        horizontal = np.abs(np.diff(below_pixels, axis=1)).mean()
        vertical = np.abs(np.diff(below_pixels, axis=0)).mean()
        gradient_ratio = float(horizontal / (vertical + 1e-6))
    else:
        gradient_ratio = 1.0

    # A-line: the pleura's reverberation at twice its depth from the skin line.
    echo = 2 * pleura
    if echo + max(3, pleura // 2) < depth and pleura >= 4:
        reach = max(2, pleura // 10)
        neighbourhood = rows[max(0, echo - pleura // 2):echo + pleura // 2 + 1]
        a_line = float(rows[echo - reach:echo + reach + 1].max() / (neighbourhood.mean() + 1e-6))
    else:
        a_line = 1.0

    values = np.array([
        depth / height, sector_mean, pleura / depth, pleura_brightness, pleura_brightness / (sector_mean + 1e-6),
        continuity, gaps, variation, row_spread, above_mean, near_mean, mid_mean, deep_mean,
        below_mean / (pleura_brightness + 1e-6), below_mean / (above_mean + 1e-6),
        float((below_pixels > 0.5 * pleura_brightness).mean()) if below_pixels.size else 0.0,
        float((below_pixels < 0.03).mean()) if below_pixels.size else 0.0,
        float(profile.std() / profile_mean), float(profile.max() / (np.median(profile) + 1e-6)),
        float((profile - trend).std() / profile_mean), float((profile > 1.25 * np.median(profile)).mean()),
        _correlation(mid_profile, deep_profile), gradient_ratio, a_line,
    ])
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """``(..., h, w, 3)`` uint8 RGB -> ``(..., h, w)`` grey in [0, 1]."""
    return np.asarray(rgb, dtype=np.float32).mean(axis=-1) / 255.0


def images_signal(images: np.ndarray) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 RGB frames -> ``(n, len(SIGNAL_NAMES))`` float32."""
    return np.stack([frame_signal(grey) for grey in rgb_to_grey(images)]).astype(np.float32) if len(images) else \
        np.empty((0, len(SIGNAL_NAMES)), np.float32)


def build_parser() -> argparse.ArgumentParser:
    from lusfeat.cli import add_frame_arguments

    parser = argparse.ArgumentParser(prog="python -m lusfeat.experiments.lus_signal", description=__doc__.split("\n\n")[0])
    add_frame_arguments(parser)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="frames are read at SIZE x SIZE (default: %(default)s)")
    # A subfolder: lusfeat.fit's default features/*.h5 takes backbone files only.
    parser.add_argument("--out", default="features/lus_signal", help="output folder for lus_signal.h5 (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lusfeat.augment import AugmentParams
    from lusfeat.embed import FeatureSource, plan_frames, write_features
    from lusfeat.manifest import file_sha256, read_manifest
    from lusfeat.store import ExtractionConfig

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.augment_copies < 0 or args.size < 32:
            raise LusfeatError("--augment-copies must be >= 0 and --size >= 32")
        manifest = read_manifest(args.manifest, args.data_root)
        frames = plan_frames(manifest, args.frame_step)
        if frames.empty:
            raise LusfeatError(f"{args.manifest}: no frames")
        params = AugmentParams()
        copies = args.augment_copies + 1
        config = ExtractionConfig(
            backbone=BACKBONE_NAME, weights=f"lus_signal-v{SIGNAL_VERSION}", input_size=args.size,
            feature_dim=len(SIGNAL_NAMES), dtype="float32", copies=copies, aug_rotation=params.rotation,
            aug_shift=params.shift, aug_zoom=params.zoom, aug_flip=params.flip, seed=args.seed,
            frame_step=args.frame_step, manifest_sha256=file_sha256(args.manifest), pooling="none",
        )
        summary = write_features(
            frames, config, Path(args.out) / f"{BACKBONE_NAME}.h5",
            FeatureSource(BACKBONE_NAME, (len(SIGNAL_NAMES),), lambda: images_signal),
            weights_source=f"hand-made signal v{SIGNAL_VERSION}: {', '.join(SIGNAL_NAMES)}", overwrite=args.overwrite)
        print(summary.line())
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
