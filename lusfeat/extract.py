"""Stage one: run each frozen backbone once over every frame and its augmented copies -> HDF5.

    python -m lusfeat.extract [--manifest data_manifest.csv] [--backbone xception]
        [--weights imagenet|none|FILE|DIR] [--augment-copies 2] [--frame-step 1] [--out features/]
        [--engine tensorflow|openvino] [--precision float32|bfloat16|int8] [--threads T]
        [--shard K/N | --dask ADDRESS|local:N [--shards N]]
    python -m lusfeat.extract merge OUT [--backbone NAME,...] [--shards FILE ...] [--overwrite]

The loop is :mod:`lusfeat.embed`; the network runs on the inference engine of ``--engine``
(:mod:`lusfeat.engines`; without it, the default for this CPU and these backbones, logged with the reason:
:mod:`lusfeat.engine_choice`, ``docs/engines.md``).

``--shard K/N`` extracts shard K of N (whole patients, balanced by frames) into
``OUT/<backbone>.shard-K-of-N.h5``; ``merge OUT`` joins the N shards into ``OUT/<backbone>.h5``,
bitwise the file of an unsharded run (:mod:`lusfeat.shards`). ``--dask`` runs the shards as tasks
on a Dask cluster and merges them (:mod:`lusfeat.cluster`; docs/distributed.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lusfeat.augment import AugmentParams
from lusfeat.backbones import BACKBONES, fetch_weights, get_spec, resolve_weights
from lusfeat.cli import add_frame_arguments, add_verbose_argument, sigterm_interrupts, start
from lusfeat.embed import extract_backbone, make_config, output_path, plan_frames, set_tf_threads
from lusfeat.engine_choice import choose_engine
from lusfeat.engines import ALL_PRECISIONS, CALIBRATION_FRAMES, ENGINES, check_engine
from lusfeat.errors import LusfeatError
from lusfeat.manifest import file_sha256, read_manifest
from lusfeat.shards import extract_shard, merge_shards, parse_shard, plan_shard, split_patients
from lusfeat.store import existing_config

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
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="stored type (default: %(default)s)")
    parser.add_argument("--engine", choices=tuple(ENGINES), default=None,
                        help="inference engine: tensorflow, or openvino (pip install \"lusfeat[openvino]\"; the same "
                        "Keras model converted, cached in $LUSFEAT_CACHE_DIR or ~/.cache/lusfeat) (default: chosen for "
                        "this CPU and these backbones and logged, see docs/engines.md; tensorflow with --precision alone)")
    parser.add_argument("--precision", choices=ALL_PRECISIONS, default=None,
                        help="backbone compute type; bfloat16 is 1.3-2.2x faster on CPUs with AVX-512 BF16, features "
                        "within cosine 0.999 of float32 for xception/vgg16; int8 (openvino only) is NNCF "
                        f"post-training quantisation calibrated on {CALIBRATION_FRAMES} frames of the manifest "
                        "(--seed), faster still but less faithful (default: float32, or this CPU's default engine's)")
    parser.add_argument("--out", default="features", help="output folder, one <backbone>.h5 each (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: the usable cores; "
                        "with --dask local:N the cores over N); recorded in the file, as it changes the last bits")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--shard", default=None, metavar="K/N", help="extract shard K of N only (whole patients, balanced "
                       "by frames) into OUT/<backbone>.shard-K-of-N.h5; then: python -m lusfeat.extract merge OUT")
    where.add_argument("--dask", default=None, metavar="ADDRESS|local:N", help="run the shards as tasks on the Dask "
                       "scheduler at ADDRESS (workers see the same files), or on N local worker processes; merge at "
                       "the end (needs lusfeat[dask]; docs/distributed.md)")
    parser.add_argument("--shards", type=int, default=None, metavar="N", help="with --dask: number of shards "
                        "(default: one per worker); rerun with the same N to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose_argument(parser)
    return parser


def build_merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.extract merge",
                                     description="join the shard files OUT/<backbone>.shard-K-of-N.h5 into OUT/<backbone>.h5")
    parser.add_argument("out", help="the folder holding the shards (the --out of the shard runs)")
    parser.add_argument("--backbone", default="", help="comma-separated (default: every backbone with shards in OUT)")
    parser.add_argument("--shards", nargs="+", default=None, metavar="FILE",
                        help="these shard files of one backbone (default: all found in OUT)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/<backbone>.h5 of other settings")
    add_verbose_argument(parser)
    return parser


def merge_main(argv: list[str]) -> int:
    args = build_merge_parser().parse_args(argv)
    start(args.verbose, tensorflow=False)  # the merge copies arrays: no network
    out = Path(args.out)
    try:
        if args.shards:
            stems = {Path(path).name.split(".shard-")[0] for path in args.shards}
            if len(stems) != 1:
                raise LusfeatError(f"--shards: files of {len(stems)} feature files ({', '.join(sorted(stems))}); "
                                   "merge one backbone at a time")
            targets = [(out / f"{stems.pop()}.h5", args.shards)]
        else:
            names = [name.strip() for name in args.backbone.split(",") if name.strip()]
            if names:
                for name in names:
                    get_spec(name)
                stems = names
            else:
                found = sorted({path.name.split(".shard-")[0] for path in out.glob("*.shard-*-of-*.h5")})
                stems = [stem for stem in found if stem in BACKBONES]
                if not stems:
                    raise LusfeatError(f"no shard files <backbone>.shard-K-of-N.h5 in {out}; make them with "
                                       "python -m lusfeat.extract --shard K/N --out " + str(out))
            targets = [(out / f"{stem}.h5", None) for stem in stems]
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failures = 0
    for target, paths in targets:
        try:
            summary = merge_shards(target, paths, overwrite=args.overwrite)
        except LusfeatError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        for warning in summary.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(summary.line())
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    args = build_parser().parse_args(argv)
    start(args.verbose)
    failures: list[str] = []
    try:
        if args.augment_copies < 0 or args.batch_size < 1:
            raise LusfeatError("--augment-copies must be >= 0 and --batch-size >= 1")
        shard = parse_shard(args.shard) if args.shard else None
        if args.shards is not None and not args.dask:
            raise LusfeatError("--shards N goes with --dask; for one shard give --shard K/N")
        if args.shards is not None and args.shards < 1:
            raise LusfeatError(f"--shards {args.shards}: give 1 or more")
        if args.dask:
            from lusfeat.cluster import require_dask

            require_dask()
        if args.threads is not None and not args.dask:
            set_tf_threads(args.threads)
        elif args.threads is not None and args.threads < 1:
            raise LusfeatError(f"--threads {args.threads}: give 1 or more TensorFlow threads")
        names = [name.strip() for name in args.backbone.split(",") if name.strip()]
        specs = [get_spec(name) for name in names]
        engine, precision, why = choose_engine(args.engine, args.precision, [spec.name for spec in specs])
        defaulted = args.engine is None and args.precision is None
        check_engine(engine, precision)
        log.info("engine: %s %s (%s)", engine, precision, why)
        # Each file opened once to plan: planning reads what the manifest's check would (an unreadable file is named)
        manifest = read_manifest(args.manifest, args.data_root, check_readable=False)
        frames = plan_frames(manifest, args.frame_step)
        if frames.empty:
            raise LusfeatError(f"{args.manifest}: no frames to extract")
        params = AugmentParams(args.rotation, args.shift, args.zoom, not args.no_flip)
        manifest_sha = file_sha256(args.manifest)
        # Resolve every backbone's weights first: a missing file is said at once, not after hours.
        jobs = []
        for spec in specs:
            try:
                source = resolve_weights(spec, args.weights)
                fetch_weights(spec, source, args.input_size)
            except LusfeatError as error:
                failures.append(str(error))
                print(f"error: {error}", file=sys.stderr)
                continue
            made_with = (engine, precision)
            if defaulted and not args.overwrite and not shard:
                made_with = kept_engine(output_path(Path(args.out), spec), made_with)
            config = make_config(spec, source, input_size=args.input_size, dtype=args.dtype,
                                 augment_copies=args.augment_copies, params=params, seed=args.seed,
                                 frame_step=args.frame_step, manifest_sha256=manifest_sha, precision=made_with[1],
                                 engine=made_with[0], frames=frames)
            jobs.append((spec, source, config))
        log.info("%d frames from %d files of %d patients; %d copies each",
                 len(frames), len(manifest), manifest["patient_id"].nunique(), args.augment_copies + 1)
        if args.dask and args.shards:
            split_patients(frames, args.shards)  # an impossible count is said before a cluster starts
        if shard:
            plan = plan_shard(frames, *shard)
            log.info("shard %d of %d: %d frames of %d patients (frames per shard: %s)", *shard, len(plan.rows),
                     plan.record["patients"][shard[0] - 1], ", ".join(map(str, plan.record["frames"])))
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with sigterm_interrupts():
        if args.dask:
            return run_dask(args, jobs, frames, Path(args.out), failures)
        return run_local(args, jobs, frames, Path(args.out), shard, failures)


def _interrupted(stop: KeyboardInterrupt) -> str:
    """'interrupted (signal SIGTERM)' for a SIGTERM, plain 'interrupted' for Ctrl-C."""
    return f"interrupted ({stop})" if str(stop) else "interrupted"


def run_local(args: argparse.Namespace, jobs: list, frames, out: Path, shard: tuple[int, int] | None,
              failures: list[str]) -> int:
    """Each backbone in turn in this process; an interrupt keeps the partial file for a resume."""
    for spec, source, config in jobs:
        try:
            options = {"batch_size": args.batch_size, "overwrite": args.overwrite, "progress": not args.no_progress}
            if shard:
                summary = extract_shard(frames, spec, source, config, output_path(out, spec), *shard, **options)
            else:
                summary = extract_backbone(frames, spec, source, config, output_path(out, spec), **options)
            print(summary.line())
        except LusfeatError as error:
            failures.append(str(error))
            print(f"error: {error}", file=sys.stderr)
        except KeyboardInterrupt as stop:
            print(f"{_interrupted(stop)}: rerun the same command to resume {spec.name} where it stopped",
                  file=sys.stderr)
            return 130
    if failures:
        print(f"{len(failures)} backbone(s) failed; see the errors above", file=sys.stderr)
        return 1
    return 0


def kept_engine(path: Path, default: tuple[str, str]) -> tuple[str, str]:
    """The engine and precision of the file (or partial file) already at ``path`` where they differ from the
    default: the default is for new files, so that rerunning a command resumes or reuses its file."""
    existing = existing_config(path)
    if existing is None or (existing.engine, existing.precision) == default:
        return default
    check_engine(existing.engine, existing.precision)
    log.info("%s was made with %s %s: kept (the default for new files here is %s %s; --overwrite to remake it)",
             path, existing.engine, existing.precision, *default)
    return existing.engine, existing.precision


def run_dask(args: argparse.Namespace, jobs: list, frames, out: Path, failures: list[str]) -> int:
    """Shards of every backbone on a Dask cluster, then merged; finished shards survive an interrupt."""
    from lusfeat.cluster import extract_on_dask

    try:
        results = extract_on_dask(args.dask, [(spec, source, config, output_path(out, spec))
                                              for spec, source, config in jobs], frames,
                                  shards=args.shards, batch_size=args.batch_size, threads=args.threads,
                                  overwrite=args.overwrite, progress=not args.no_progress)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        print(f"{_interrupted(stop)}: rerun the same command (same --shards) to resume every shard where it "
              "stopped", file=sys.stderr)
        return 130
    for result in results:
        for summary in result.summaries:
            print(summary.line())
        for error in result.errors:
            failures.append(error)
            print(f"error: {result.name}: {error}", file=sys.stderr)
        if result.merge is not None:
            for warning in result.merge.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(f"{result.name}: {result.merge.line()}")
    if failures:
        print(f"{len(failures)} error(s); see above. Finished shards are kept: rerun the same command to resume",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
