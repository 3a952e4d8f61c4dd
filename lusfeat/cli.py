"""What the commands share on the command line: start-up, logging and the options that choose frames.

Commands (``extract``, ``fit``, ``predict``, ``report``) only parse, call and print; this module
keeps them alike without one importing another.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def start(verbose: bool = False) -> None:
    """Log to stderr; hide TensorFlow's C++ start-up noise unless ``verbose`` or the user set its level.

    On a CPU-only machine TensorFlow prints oneDNN notices and CUDA probing errors ("failed call to
    cuInit") before any work: not the user's concern. ``-v`` or an own ``TF_CPP_MIN_LOG_LEVEL`` shows them.
    Must run before TensorFlow is imported, which every command does lazily.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # nothing to probe: lusfeat runs on the CPU


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="more logging, and TensorFlow's own start-up messages")


def add_frame_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose frames and copies; shared by every command that writes a feature file."""
    parser.add_argument("--manifest", default="data_manifest.csv", help="manifest CSV (default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="folder the manifest paths are relative to "
                        "(default: $LUSFEAT_DATA_ROOT, else the manifest's folder)")
    parser.add_argument("--frame-step", type=int, default=1, help="every K-th frame of a video (default: %(default)s)")
    parser.add_argument("--augment-copies", type=int, default=2, help="augmented copies per frame (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace feature files made with other settings")
