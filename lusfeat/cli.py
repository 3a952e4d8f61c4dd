"""What the commands share on the command line: start-up, logging and the options that choose frames.

Commands (``extract``, ``fit``, ``predict``, ``report``) only parse, call and print; this module
keeps them alike without one importing another.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator


def start(verbose: bool = False, *, tensorflow: bool = True) -> None:
    """Log to stderr; load TensorFlow (if the command needs it) without its C++ start-up noise.

    On a CPU-only machine TensorFlow prints oneDNN notices, CUDA probing messages ("Could not find
    cuda drivers", "failed call to cuInit") and absl preambles before any work: not the user's
    concern. They are hidden unless ``verbose`` (``-v``) or the user set ``TF_CPP_MIN_LOG_LEVEL``.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if verbose:
        logging.getLogger("lusfeat").setLevel(logging.DEBUG)
    quiet = not verbose and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if tensorflow and "tensorflow" not in sys.modules:
        _import_tensorflow(silence_native_stderr=quiet)


def _import_tensorflow(silence_native_stderr: bool) -> None:
    # Some of the noise is written by C++ before TensorFlow reads its log level, straight to file
    # descriptor 2: only redirecting the descriptor itself, for the import alone, hides it.
    if not silence_native_stderr:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM stops the command the way Ctrl-C does (a ``KeyboardInterrupt``).

    Batch schedulers and ``kill`` stop jobs with SIGTERM, whose default ends Python at once: no
    ``finally``, no message. Raised as an interrupt instead, the partial feature file is closed as
    after Ctrl-C and the command prints how to resume. Outside the main thread (where Python cannot
    install handlers) this does nothing.
    """
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
