"""Open an HTML file in headless Chromium and report what a person's browser would: console errors, images
that did not load, requests that left the machine, the text, and the page's width; optionally a screenshot.

Driven through the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages ending in a
NUL byte on file descriptors 3 and 4): no driver package, no browser download, Debian's ``chromium``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL = "apt-get install -y chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
CHECK_IMAGES = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  text: document.body.innerText, dom: document.documentElement.textContent,
  scrollWidth: document.documentElement.scrollWidth, viewport: window.innerWidth})"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Loaded:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads, error log entries
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    images: list[dict] = field(default_factory=list)
    text: str = ""  # innerText: what is rendered
    dom: str = ""  # textContent: every text of the DOM
    scroll_width: int = 0
    viewport: int = 0
    value: object = None  # of ``evaluate``


class _Pipe:
    def __init__(self, process: subprocess.Popen, write: int, read: int):
        self.process, self.write, self.read, self.buffer, self.next_id = process, write, read, b"", 0
        self.events: list[dict] = []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.process.poll()})")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while True:
            event = self._message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return self.events.pop()


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append("log: " + params["entry"].get("text", "") + " " + params["entry"].get("url", "")[:80])
        elif method == "Network.loadingFailed":
            found.append("load failed: " + params.get("errorText", ""))
    return found


def _wait_for_group_to_exit(group: int, timeout: float = 5.0) -> None:
    """Until no process of ``group`` is left (killed helpers are reaped by init), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def load(path: Path, width: int = 1280, height: int = 900, screenshot: Path | None = None,
         evaluate: str | None = None) -> Loaded:
    """Open ``path`` at ``width`` x ``height`` CSS px (a phone below 600: mobile emulation), wait for its load
    event and a moment, and report; ``screenshot``: a PNG of the whole page; ``evaluate``: a JavaScript
    expression whose JSON-able value is returned as ``value``."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError(f"chromium not installed: {INSTALL}")
    command_read, command_write = os.pipe()  # the browser reads commands on its descriptor 3
    answer_read, answer_write = os.pipe()  # and writes answers on its descriptor 4

    def descriptors() -> None:
        commands, answers = os.dup(command_read), os.dup(answer_write)  # safe even if either is 3 or 4 already
        os.dup2(commands, 3)
        os.dup2(answers, 4)

    with tempfile.TemporaryDirectory(prefix="lusfeat-chromium-") as profile:
        # Its own process group: the browser's helper processes (renderer, GPU, crash handler) write into the
        # profile too, and one left alive after the main process could still be writing when it is removed.
        process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   close_fds=False, preexec_fn=descriptors, start_new_session=True)
        os.close(command_read)
        os.close(answer_write)
        pipe = _Pipe(process, command_write, answer_read)
        try:
            target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session)
            pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                      deviceScaleFactor=1, mobile=width < 600)
            pipe.call("Page.navigate", session, url=Path(path).resolve().as_uri())
            pipe.wait_for("Page.loadEventFired")
            time.sleep(0.3)  # late console messages
            answer = pipe.call("Runtime.evaluate", session, expression=CHECK_IMAGES, returnByValue=True)
            state = json.loads(answer["result"]["value"])
            if evaluate is not None:
                state["value"] = pipe.call("Runtime.evaluate", session, expression=evaluate,
                                           returnByValue=True)["result"].get("value")
            if screenshot is not None:
                size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
                shot = pipe.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                                 clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            pipe.call("Runtime.evaluate", session, expression="1")  # drain events that came before
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            _wait_for_group_to_exit(process.pid)
            os.close(command_write)
            os.close(answer_read)
    requests = [e["params"]["request"]["url"] for e in pipe.events if e.get("method") == "Network.requestWillBeSent"]
    return Loaded(_errors(pipe.events), requests, state["images"], state["text"], state["dom"], state["scrollWidth"],
                  state["viewport"], state.get("value"))
