"""Stage one: run each frozen backbone once over every frame and its augmented copies -> HDF5.

    python -m lusfeat.extract [--manifest data_manifest.csv] [--backbone xception]
        [--weights imagenet|none|FILE|DIR] [--augment-copies 2] [--frame-step 1] [--out features/]
        [--tap NAME]

With ``--tap NAME`` it stores the backbone's intermediate activation map NAME (float16 by
default) in ``OUT/<backbone>-<tap>.h5`` instead of pooled features, for the fine-tuning
experiment (``lusfeat.experiments.finetune``). The engine is :mod:`lusfeat.embed`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lusfeat.augment import AugmentParams
from lusfeat.backbones import BACKBONES, PRECISIONS, fetch_weights, get_spec, get_tap, resolve_weights
from lusfeat.cli import add_frame_arguments, add_verbose_argument, start
from lusfeat.embed import extract_backbone, make_config, output_path, plan_frames
from lusfeat.errors import LusfeatError
from lusfeat.manifest import file_sha256, read_manifest

log = logging.getLogger("lusfeat.extract")
DEFAULT_BACKBONES = ("xception",)  # the backbone of the README's main job and results


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
                        "OUT/<backbone>-<tap>.h5, for lusfeat.experiments.finetune (xception: middle = middle-flow output, "
                        "19x19x728 at 299 px; block13 = block13 output, 10x10x1024)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="backbone compute type; bfloat16 is 1.3-2x faster on CPUs with AVX-512 BF16, features "
                        "within cosine 0.999 of float32 for xception/vgg16 (default: %(default)s)")
    parser.add_argument("--out", default="features", help="output folder, one <backbone>.h5 each (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start(args.verbose)
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
