"""lusfeat.cli: the commands' shared start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lusfeat import cli


def stderr_of(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=True).stderr


@pytest.mark.slow
def test_start_hides_tensorflow_start_up_noise():
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    plain = stderr_of("import tensorflow", env)
    if not plain.strip():
        pytest.skip("TensorFlow printed nothing at import on this machine: nothing to hide")
    assert stderr_of("from lusfeat.cli import start; start()", env).strip() == ""


@pytest.mark.parametrize(("verbose", "user_level", "silenced"), [(False, None, True), (True, None, False),
                                                                  (False, "0", False)])
def test_only_an_unasked_start_silences_tensorflow(monkeypatch, verbose, user_level, silenced):
    calls = []
    monkeypatch.setattr(cli, "_import_tensorflow", lambda silence_native_stderr: calls.append(silence_native_stderr))
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    if user_level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user_level)
    cli.start(verbose)
    assert calls == [silenced]
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == (user_level or ("3" if silenced else None))


def test_start_without_tensorflow_does_not_import_it(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "_import_tensorflow", lambda silence_native_stderr: calls.append(silence_native_stderr))
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    cli.start(tensorflow=False)
    assert calls == []


def test_sigterm_interrupts_like_ctrl_c_inside_the_block_only():
    def before(signum, frame):  # were the block's handler missing, SIGTERM would end pytest itself
        raise AssertionError("SIGTERM reached the handler from before the block")

    def in_a_thread() -> None:
        with cli.sigterm_interrupts():
            ran.append(signal.getsignal(signal.SIGTERM) is before)

    outer = signal.signal(signal.SIGTERM, before)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"), cli.sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler's KeyboardInterrupt ends the sleep at once
        assert signal.getsignal(signal.SIGTERM) is before
        # Another thread cannot install handlers: the block runs, unchanged.
        ran = []
        worker = threading.Thread(target=in_a_thread)
        worker.start()
        worker.join()
        assert ran == [True] and signal.getsignal(signal.SIGTERM) is before
    finally:  # the rest of the session keeps pytest's own SIGTERM handling, even after a failure
        signal.signal(signal.SIGTERM, outer)
