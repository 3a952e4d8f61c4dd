"""``python -m lusfeat``: the main job in one command, and each command by name.

    python -m lusfeat run [--manifest data_manifest.csv] [--backbone xception] [--frame-step 10]
        [--features features] [--runs runs] [--weights imagenet|FILE|DIR]
    python -m lusfeat extract|fit|predict|report|explain|manifest ARGS   (= python -m lusfeat.<command> ARGS)

``run`` is stage one, stage two over every fold, then the report, with the settings of the
README's results: ``extract --backbone xception --frame-step 10``, ``fit --fold all``,
``report``. Each step resumes or reuses what an earlier run left (the feature file, the folds).
This launcher is the only module that calls the commands; they never import each other.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("extract", "fit", "predict", "report", "explain", "manifest")


def run(argv: list[str]) -> int:
    from lusfeat.manifest import resolve_data_root

    parser = argparse.ArgumentParser(prog="python -m lusfeat run", description="extract, fit --fold all, report")
    parser.add_argument("--manifest", default="data_manifest.csv", help="manifest CSV (default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="folder the manifest's paths are relative to")
    parser.add_argument("--backbone", default="xception", help="one backbone (default: %(default)s)")
    parser.add_argument("--frame-step", default="10", help="every K-th frame (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", help="as for lusfeat.extract (default: %(default)s)")
    parser.add_argument("--features", default="features", help="feature folder (default: %(default)s)")
    parser.add_argument("--runs", default="runs", help="run folder (default: %(default)s)")
    parser.add_argument("--seed", default="0", help="folds and training seed (default: %(default)s)")
    args = parser.parse_args(argv)
    root = ["--data-root", args.data_root] if args.data_root else []
    steps = [
        ("extract", ["--manifest", args.manifest, *root, "--backbone", args.backbone, "--frame-step", args.frame_step,
                     "--weights", args.weights, "--out", args.features]),
        ("fit", ["--fold", "all", "--features", f"{args.features}/{args.backbone}.h5", "--seed", args.seed,
                 "--out", args.runs]),
        ("report", [args.runs, "--data-root", str(resolve_data_root(args.manifest, args.data_root)),
                    "--weights", args.weights]),  # the heat maps read the videos
    ]
    for name, step_argv in steps:
        print(f"== python -m lusfeat.{name} {' '.join(step_argv)}", file=sys.stderr)
        code = importlib.import_module(f"lusfeat.{name}").main(step_argv)
        if code:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*COMMANDS, "run"):
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "run":
        return run(argv[1:])
    return importlib.import_module(f"lusfeat.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
