"""Heat maps of a saved model's score: where in each frame the score comes from (Grad-CAM).

    python -m lusfeat.explain --model RUN/<backbone>/final|fold<k> INPUT [--frames 0,50,100] [--per-video 3]
        [--scorer video|head|logreg] [--data-root DIR] [--weights imagenet|FILE|DIR] [--out heatmaps/]

INPUT is what ``lusfeat.predict`` takes (a manifest CSV, or a folder of one patient's videos named
by region). For every video, the frames the model pools (every ``frame_step``-th, as it was
trained) go through the backbone; for the chosen frames (``--frames``: frame indices, each a
multiple of the model's frame step; default ``--per-video`` frames evenly spread over the video)
it writes ``OUT/<patient>/<video>_frame<index>.png``: the frame, and the frame under its Grad-CAM
map for the scorer's score (default: the folder's primary model, the video model: the gradient
of the video's latent severity through its pooling over frames, ``lusfeat.heatmaps``), titled with
the score and score set ``lusfeat.predict`` gives. ``OUT/heatmaps.csv`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lusfeat.backbones import BACKBONES, build_map_extractor, get_spec, resolve_weights
from lusfeat.cli import add_verbose_argument, start
from lusfeat.embed import plan_frames
from lusfeat.errors import LusfeatError
from lusfeat.files import write_text
from lusfeat.heatmaps import explain_video, write_overlay
from lusfeat.manifest import read_input
from lusfeat.models.registry import MODELS
from lusfeat.predictions import format_set
from lusfeat.runfolder import check_compatible, load_saved_model
from lusfeat.scores import UNLABELLED

log = logging.getLogger("lusfeat.explain")


def parse_frames(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames takes frame indices like 0,50,100, not {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"--frames takes frame indices >= 0 like 0,50,100, not {text!r}")
    return values


def spread(indices: list[int], count: int) -> list[int]:
    """``count`` of ``indices`` evenly spread from the first to the last (all of them if fewer)."""
    if len(indices) <= count:
        return list(indices)
    return [indices[int(round(position))] for position in np.linspace(0, len(indices) - 1, count)]


def explain(model_dir: str | os.PathLike, input_path: str | os.PathLike, *, out: str | os.PathLike = "heatmaps",
            frames: list[int] | None = None, per_video: int = 3, data_root: str | os.PathLike | None = None,
            weights: str = "imagenet", scorer: str | None = None) -> pd.DataFrame:
    """Write the heat-map PNGs and ``heatmaps.csv`` into ``out``; return the table."""
    if per_video < 1:
        raise LusfeatError("--per-video must be >= 1")
    model = load_saved_model(model_dir)
    scorer = model.primary if scorer is None else scorer
    if scorer not in model.models:
        raise LusfeatError(f"--scorer {scorer}: {model_dir} holds the model(s) {', '.join(model.models)}")
    if model.extraction.backbone not in BACKBONES:
        raise LusfeatError(f"{model_dir}: trained on {model.extraction.backbone!r} features; heat maps need one of "
                           f"the backbones {', '.join(BACKBONES)}")
    spec = get_spec(model.extraction.backbone)
    source = resolve_weights(spec, weights)
    check_compatible(model, source.identity, source.description, model.extraction.input_size, spec.feature_dim)
    made_with = (model.extraction.engine, model.extraction.precision)
    if made_with != ("tensorflow", "float32"):
        # Gradients need TensorFlow: the maps come from its float32 backbone, whose features the
        # model's (OpenVINO float32: identical to 1e-4; bfloat16 / int8: cosine 0.97-0.999) approximate.
        log.warning("the model's features came from %s %s; heat maps are computed through the TensorFlow float32 "
                    "backbone (docs/engines.md)", *made_with)
    manifest, _ = read_input(input_path, data_root)
    step = model.extraction.frame_step
    planned = plan_frames(manifest, step)
    extractor = build_map_extractor(spec, source, model.extraction.input_size)
    out = Path(out)
    rows = []
    for (patient, video), table in planned.groupby(["patient_id", "video_id"], sort=False):
        table = table.reset_index(drop=True)
        indices = table["frame_index"].astype(int).tolist()
        if frames is None:
            chosen = spread(indices, per_video)
        else:
            chosen = [index for index in frames if index in indices]
            if not chosen:
                raise LusfeatError(f"{table['path'].iloc[0]}: none of --frames {','.join(map(str, frames))} is a frame "
                                   f"the model scores (every {step}th frame: {', '.join(map(str, indices[:8]))}"
                                   f"{', ...' if len(indices) > 8 else ''}); pick from those")
        log.info("patient %s, video %s: %d frames through %s, maps of %d", patient, video, len(table), spec.name,
                 len(chosen))
        maps, features, value = explain_video(extractor, model.models[scorer], table,
                                              model.extraction.input_size, chosen)
        scored = model.predictions(features, table)
        answers = scored[scorer]
        for frame_map in maps:
            at = int(np.flatnonzero(scored.frames["frame_index"].to_numpy() == frame_map.frame_index)[0])
            region, truth, pred = scored.frames["region"].iloc[at], int(scored.truth[at]), int(answers.scores[at])
            score_set = "" if answers.sets is None else format_set(answers.sets[at])
            title = (f"patient {patient}, {region}, {video}, frame {frame_map.frame_index}: {scorer} score "
                     f"{pred}" + (f", set {score_set}" if score_set else "")
                     + ("" if truth == UNLABELLED else f" (true {truth})"))
            path = write_overlay(frame_map, out / str(patient) / f"{video}_frame{frame_map.frame_index}.png", title)
            rows.append({"patient_id": patient, "region": region, "video_id": video,
                         "frame_index": frame_map.frame_index, "score": truth, "model": scorer,
                         "pred": pred, "score_set": score_set, "target": value,
                         "positive_share": float((frame_map.cam > 0).mean()), "png": str(path.relative_to(out))})
    result = pd.DataFrame(rows)
    write_text(result.to_csv(index=False), out / "heatmaps.csv")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lusfeat.explain", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("input", help="a manifest CSV, or a folder of one patient's files named by region")
    parser.add_argument("--model", required=True, help="a lusfeat.fit model folder: RUN/<backbone>/final or fold<k>")
    parser.add_argument("--frames", type=parse_frames, default=None,
                        help="frame indices to map in every video, comma-separated (multiples of the model's frame step)")
    parser.add_argument("--per-video", type=int, default=3,
                        help="without --frames: this many frames per video, evenly spread (default: %(default)s)")
    parser.add_argument("--scorer", choices=tuple(MODELS), default=None,
                        help="the model whose score is explained (default: the folder's primary model)")
    parser.add_argument("--data-root", default=None, help="folder a manifest's paths are relative to")
    parser.add_argument("--weights", default="imagenet", help="backbone weights, those the model was trained with "
                        "(default: %(default)s)")
    parser.add_argument("--out", default="heatmaps", help="output folder (default: %(default)s)")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    start(args.verbose)
    try:
        table = explain(args.model, args.input, out=args.out, frames=args.frames, per_video=args.per_video,
                        data_root=args.data_root, weights=args.weights, scorer=args.scorer)
    except LusfeatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(table)} heat map(s) and {Path(args.out) / 'heatmaps.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
