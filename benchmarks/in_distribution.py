"""The distribution check (``in_distribution`` of lusfeat.predict): how often it flags new lung videos, and non-lung ones.

    python -m benchmarks.in_distribution [--features /work/features/xception.h5] [--seeds 0,1,2] [--folds 3]
        [--weights imagenet|FILE|DIR] [--videos-per-kind 4] [--out FILE|DIR]

On a real feature cache (``lusfeat.extract``'s HDF5 file), with the folds ``lusfeat.fit`` makes
(``lusfeat.folds.make_folds(patient_strata(frames), folds, seed)``), for each seed and fold:

- fit ``VideoDistribution`` with ``lusfeat.fit``'s settings (``FitParams(seed=seed).distribution()``)
  on the training patients' videos (copy 0), as ``lusfeat.fit`` does;
- **held-out flag rate**: the share of the test fold's COVID-BLUES videos flagged (distance above
  the threshold); the threshold is meant to flag about 5% of them; and the same with each video
  cut to its first frame (what a still image of it would give);
- **non-lung videos**: videos this script makes, that are clearly not lung ultrasound (uniform
  colour noise, grey noise, 1/f "natural-statistics" noise, drawn outdoor scenes, photographs
  shipped with matplotlib panned and zoomed, a constant grey frame), embedded by the cache's own
  backbone, weights, input size and frame step (``lusfeat.embed.embed_frames``); every one
  should be flagged by every fold's model.

A few variants of the estimator's settings are measured beside the default on the same folds
(cheap: the features are cached), to show how the choice was made.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._common import command_line, format_table, machine_info, publish
from lusfeat.errors import LusfeatError

DEFAULT_FEATURES = "/work/features/xception.h5"
FRAMES_PER_VIDEO = 30
SIZE = (240, 320)  # height, width of the videos made here

# name -> VideoDistribution settings changed from lusfeat.fit's (FitParams) defaults
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "mean, std pooling": {"pooling": ("mean", "std")},
    "mean, std, max pooling": {"pooling": ("mean", "std", "max")},
    "5 components": {"components": 5},
    "20 components": {"components": 20},
    "no shrinkage": {"shrinkage": 0.0},
    "shrinkage 0.3": {"shrinkage": 0.3},
}


# --------------------------------------------------------------------------- videos that are not lung ultrasound


def _pink_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A 1/f-spectrum random image in 0..1: the second-order statistics of natural photographs."""
    height, width = shape
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(height, width))
    spectrum = amplitude * np.exp(2j * np.pi * rng.random(shape))
    image = np.real(np.fft.ifft2(spectrum))
    return (image - image.min()) / (np.ptp(image) + 1e-12)


def _scene(rng: np.random.Generator) -> np.ndarray:
    """A drawn outdoor scene: sky gradient, sun, two textured hills, a tree; RGB float 0..1."""
    height, width = SIZE
    yy, xx = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    sky = np.stack([0.35 + 0.3 * yy, 0.55 + 0.3 * yy, 0.95 - 0.1 * yy], axis=-1)
    image = sky.copy()
    sun = (xx - rng.uniform(0.6, 0.9)) ** 2 + (yy - rng.uniform(0.1, 0.3)) ** 2 < 0.004
    image[sun] = (1.0, 0.9, 0.4)
    texture = _pink_noise(rng, SIZE)[..., None]
    for level, colour in ((rng.uniform(0.45, 0.6), (0.25, 0.5, 0.2)), (rng.uniform(0.65, 0.8), (0.35, 0.6, 0.25))):
        phase = rng.uniform(0, 2 * np.pi)
        hill = yy > level + 0.08 * np.sin(4 * xx + phase)
        image[hill] = (np.array(colour) * (0.7 + 0.6 * texture))[hill]
    trunk = (np.abs(xx - 0.25) < 0.015) & (yy > 0.45) & (yy < 0.7)
    crown = (xx - 0.25) ** 2 + ((yy - 0.42) * 0.8) ** 2 < 0.006
    image[trunk] = (0.4, 0.25, 0.1)
    image[crown] = (np.array((0.1, 0.4, 0.1)) * (0.6 + 0.8 * texture))[crown]
    return np.clip(image, 0, 1)


def _photo(name: str) -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data(name) as handle:
        return np.asarray(Image.open(handle).convert("RGB"), dtype=np.float64) / 255.0


def _pan(image: np.ndarray, frame: int, frames: int, rng_offset: float) -> np.ndarray:
    """Frame ``frame`` of a slow pan and zoom over ``image`` (a crop resized to SIZE)."""
    from PIL import Image

    height, width = image.shape[:2]
    zoom = 0.6 + 0.3 * frame / frames
    crop_h, crop_w = int(height * zoom), int(width * zoom)
    top = int((height - crop_h) * (0.5 + 0.4 * np.sin(rng_offset + frame / 9)))
    left = int((width - crop_w) * (0.5 + 0.4 * np.cos(rng_offset + frame / 11)))
    crop = (image[top:top + crop_h, left:left + crop_w] * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(crop).resize((SIZE[1], SIZE[0]), Image.BILINEAR), dtype=np.float64) / 255.0


def non_lung_video(kind: str, index: int, frames: int = FRAMES_PER_VIDEO) -> list[np.ndarray]:
    """``frames`` RGB uint8 frames of one made-up video of ``kind`` (seeded by ``index``)."""
    rng = np.random.default_rng(1000 + index)
    out = []
    if kind == "scene":
        scene = _scene(rng)
    elif kind.startswith("photo:"):
        photo = _photo(kind.split(":", 1)[1])
    for frame in range(frames):
        if kind == "uniform colour noise":
            image = rng.random((*SIZE, 3))
        elif kind == "grey gaussian noise":
            image = np.repeat(np.clip(0.5 + 0.2 * rng.normal(size=SIZE), 0, 1)[..., None], 3, axis=2)
        elif kind == "1/f colour noise":
            image = np.stack([_pink_noise(rng, SIZE) for _ in range(3)], axis=-1)
        elif kind == "scene":
            image = np.roll(scene, shift=frame * 3, axis=1)  # the camera turns
        elif kind.startswith("photo:"):
            image = _pan(photo, frame, frames, index)
        elif kind == "constant grey":
            image = np.full((*SIZE, 3), 0.5)
        else:
            raise ValueError(kind)
        out.append((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return out


NON_LUNG_KINDS = ("uniform colour noise", "grey gaussian noise", "1/f colour noise", "scene",
                  "photo:grace_hopper.jpg", "photo:Minduka_Present_Blue_Pack.png", "constant grey")


def non_lung_features(features, kinds: tuple[str, ...], per_kind: int, weights: str, folder: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Features (copy 0, the cache's backbone and settings) of ``per_kind`` made-up videos of each kind."""
    import av

    from lusfeat.backbones import get_spec, resolve_weights
    from lusfeat.embed import embed_frames, plan_frames

    config = features.config
    source = resolve_weights(get_spec(config.backbone), weights)
    if source.identity != config.weights:
        raise LusfeatError(f"--weights {weights}: identity {source.identity!r}, but {features.path} was made with "
                           f"{config.weights!r}; pass the same weights")
    rows = []
    for number, kind in enumerate(kinds):
        for index in range(per_kind):
            name = f"{kind.replace(':', '_').replace(' ', '_').replace('/', '_')}_{index}.mp4"
            with av.open(str(folder / name), "w") as container:
                stream = container.add_stream("libx264", rate=25, options={"crf": "18"})
                stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
                for rgb in non_lung_video(kind, index):
                    for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            rows.append({"path": name, "patient_id": f"nonlung{number}", "region": "L1", "score": -1,
                         "group": "", "video_id": f"{index}", "frame": -1, "file": str(folder / name), "kind": kind})
    manifest = pd.DataFrame(rows)
    frames = plan_frames(manifest, config.frame_step)
    frames["kind"] = frames["path"].map(dict(zip(manifest["path"], manifest["kind"], strict=True)))
    return embed_frames(frames, config, source, progress=False), frames


# --------------------------------------------------------------------------- the measurement


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lusfeat.index import FrameIndex
    from lusfeat.models.registry import FitParams
    from lusfeat.store import load_features
    from lusfeat.training import distribution_table, patient_splits

    features = load_features(args.features)
    frames = features.frames.reset_index(drop=True)
    X = features.features[0]
    scores = frames["score"].to_numpy()
    first = (frames.groupby(["patient_id", "video_id"]).cumcount() == 0).to_numpy()  # each video's first frame
    seeds = [int(seed) for seed in args.seeds.split(",")]
    kinds = NON_LUNG_KINDS if args.videos_per_kind else ()
    with tempfile.TemporaryDirectory(prefix="lusfeat-nonlung-") as scratch:
        X_other, other = (non_lung_features(features, kinds, args.videos_per_kind, args.weights, Path(scratch))
                          if kinds else (np.zeros((0, X.shape[1]), np.float32), pd.DataFrame()))
    record: dict[str, Any] = {
        "benchmark": "in_distribution", "command": command_line("in_distribution.py", args.argv),
        "machine": machine_info(), "settings": {key: value for key, value in vars(args).items() if key not in ("out", "argv")},
        "features": {"path": str(args.features), **dataclasses.asdict(features.config)},
        "frames": len(frames), "videos": int(frames.groupby(["patient_id", "video_id"]).ngroups),
        "patients": int(frames["patient_id"].nunique()),
        "non_lung": {"kinds": list(kinds), "videos": int(other.groupby(["patient_id", "video_id"]).ngroups) if kinds else 0,
                     "frames": len(other)},
        "variants": {},
    }
    for variant, changes in VARIANTS.items():
        entry: dict[str, Any] = {"changes": {key: list(value) if isinstance(value, tuple) else value
                                             for key, value in changes.items()}, "seeds": {}}
        for seed in seeds:
            params = dataclasses.replace(FitParams(seed=seed), **{f"distribution_{key}": value
                                                                  for key, value in changes.items()})
            splits = patient_splits(frames, args.folds, seed)
            per_fold, kinds_flagged = [], {kind: 0 for kind in kinds}
            non_lung_checks, non_lung_min_ratio = 0, np.inf
            for fold, (train_rows, test_rows) in enumerate(splits, start=1):
                train, test = np.isin(np.arange(len(frames)), train_rows), np.isin(np.arange(len(frames)), test_rows)
                model = params.distribution().fit(X[train], scores[train], index=FrameIndex.of(frames[train]))
                held_out = distribution_table(model, X[test], frames[test])
                flagged = int((~held_out["in_distribution"]).sum())
                single = distribution_table(model, X[test & first], frames[test & first])  # a still image of each
                item = {"fold": fold, "threshold": model.threshold_, "test_videos": len(held_out), "flagged": flagged,
                        "flag_rate": flagged / len(held_out),
                        "single_frame_flagged": int((~single["in_distribution"]).sum()),
                        "inner_flag_rate": float((model.inner_distances_ > model.threshold_).mean()),
                        "held_out_distance_median": float(held_out["distance"].median())}
                if kinds:
                    checked = distribution_table(model, X_other, other)
                    checked["kind"] = checked["patient_id"].map(lambda patient: kinds[int(patient.removeprefix("nonlung"))])
                    for kind, rows in checked.groupby("kind"):
                        kinds_flagged[kind] += int((~rows["in_distribution"]).sum())
                    non_lung_checks += len(checked)
                    non_lung_min_ratio = min(non_lung_min_ratio, float(checked["distance"].min() / model.threshold_))
                    item["non_lung_flagged"] = int((~checked["in_distribution"]).sum())
                    item["non_lung_distance_median"] = float(checked["distance"].median())
                per_fold.append(item)
            videos = sum(item["test_videos"] for item in per_fold)
            flagged = sum(item["flagged"] for item in per_fold)
            single = sum(item["single_frame_flagged"] for item in per_fold)
            entry["seeds"][str(seed)] = {
                "per_fold": per_fold, "test_videos": videos, "flagged": flagged, "flag_rate": flagged / videos,
                "single_frame_flag_rate": single / videos,
                "non_lung_checks": non_lung_checks,
                "non_lung_flagged": sum(kinds_flagged.values()),
                "non_lung_flag_rate": sum(kinds_flagged.values()) / non_lung_checks if non_lung_checks else None,
                "non_lung_flagged_per_kind": kinds_flagged,
                "non_lung_min_distance_over_threshold": non_lung_min_ratio if kinds else None,
            }
        rates = [item["flag_rate"] for item in entry["seeds"].values()]
        entry["flag_rate_mean"], entry["flag_rate_sd"] = float(np.mean(rates)), float(np.std(rates, ddof=1)) if len(rates) > 1 else 0.0
        entry["single_frame_flag_rate_mean"] = float(np.mean([item["single_frame_flag_rate"]
                                                              for item in entry["seeds"].values()]))
        if kinds:
            entry["non_lung_flag_rate"] = (sum(item["non_lung_flagged"] for item in entry["seeds"].values())
                                           / sum(item["non_lung_checks"] for item in entry["seeds"].values()))
        record["variants"][variant] = entry
    return record


def render(record: dict[str, Any]) -> str:
    default = record["variants"]["default"]
    lines = [f"{record['features']['path']}: {record['frames']} frames, {record['videos']} videos, "
             f"{record['patients']} patients; {record['settings']['folds']} patient folds per seed; "
             f"non-lung: {record['non_lung']['videos']} made-up videos ({record['non_lung']['frames']} frames)", ""]
    rows = []
    for seed, entry in default["seeds"].items():
        rows.append([seed, ", ".join(f"{100 * item['flag_rate']:.1f}%" for item in entry["per_fold"]),
                     f"{entry['flagged']} / {entry['test_videos']}", f"{100 * entry['flag_rate']:.1f}%",
                     f"{100 * entry['single_frame_flag_rate']:.1f}%",
                     ", ".join(f"{item['threshold']:.2f}" for item in entry["per_fold"]),
                     "n/a" if entry["non_lung_flag_rate"] is None else
                     f"{entry['non_lung_flagged']} / {entry['non_lung_checks']} ({100 * entry['non_lung_flag_rate']:.0f}%)",
                     "n/a" if entry["non_lung_min_distance_over_threshold"] is None else
                     f"{entry['non_lung_min_distance_over_threshold']:.2f}"])
    lines.append("Default (lusfeat.fit's FitParams): held-out COVID-BLUES videos flagged, and made-up non-lung videos "
                 "flagged (each checked by each fold's model)")
    lines.append(format_table(["seed", "held-out rate per fold", "held-out flagged", "held-out rate",
                               "held-out first frame alone", "thresholds",
                               "non-lung flagged", "min non-lung distance / threshold"], rows))
    kinds = record["non_lung"]["kinds"]
    if kinds:
        per_kind = [[kind, sum(entry["non_lung_flagged_per_kind"][kind] for entry in default["seeds"].values()),
                     len(default["seeds"]) * record["settings"]["folds"] * record["settings"]["videos_per_kind"]]
                    for kind in kinds]
        lines += ["", "Non-lung videos flagged per kind (all seeds and folds):",
                  format_table(["kind", "flagged", "checks"], per_kind)]
    variants = [[name, f"{100 * entry['flag_rate_mean']:.1f}% ± {100 * entry['flag_rate_sd']:.1f}",
                 ", ".join(f"{100 * item['flag_rate']:.1f}%" for item in entry["seeds"].values()),
                 f"{100 * entry['single_frame_flag_rate_mean']:.1f}%",
                 "n/a" if "non_lung_flag_rate" not in entry else f"{100 * entry['non_lung_flag_rate']:.0f}%"]
                for name, entry in record["variants"].items()]
    lines += ["", "Variants (same folds): held-out flag rate mean ± sd over seeds, per seed, first frames alone "
              "(mean over seeds), non-lung flagged",
              format_table(["variant", "held-out rate", "per seed", "first frame alone", "non-lung flagged"], variants)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.in_distribution", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default=DEFAULT_FEATURES, help="a lusfeat.extract feature file (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="fold seeds, comma-separated (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="patient folds (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="the cache's backbone weights, as lusfeat.extract "
                        "--weights, to embed the non-lung videos (default: %(default)s)")
    parser.add_argument("--videos-per-kind", type=int, default=4, help="made-up non-lung videos per kind, 0 for none "
                        "(default: %(default)s)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default: benchmarks/results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        record = run(args)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish(record, args.out, "in_distribution", render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
