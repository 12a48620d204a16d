"""A real headless Chromium (Debian's package, which .ci/run and `make test` install when absent),
driven over the Chrome DevTools protocol: open a page as a person would, say what it loaded,
what it logged and how wide it is, and take a full-page screenshot.

    with Browser.start(tmp_path) as browser:
        page = browser.open(Path("report.html"), width=1280, height=900, screenshot=tmp_path / "r.png")
        page.images, page.console_errors, page.requests, page.scroll_width
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Debian's packages: chromium-headless-shell (smaller, what .ci/install-chromium installs) or chromium.
CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
# The machine's network is closed: without these Chromium keeps trying Google's services, and a
# report must load without any of it anyway.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--force-color-profile=srgb",
         "--disable-dev-shm-usage", "--mute-audio", "--remote-debugging-port=0", "--remote-allow-origins=*"]


def find_chromium() -> str | None:
    override = os.environ.get("CHRONOS_CHROMIUM")
    if override:
        return override
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


@dataclass
class PageLoad:
    url: str
    images: list[dict[str, Any]]  # src (cut), alt, naturalWidth, naturalHeight
    console_errors: list[str]
    requests: list[str]  # every URL the page asked for, the page itself included
    scroll_width: int
    viewport_width: int
    screenshot: Path | None = None

    @property
    def network_requests(self) -> list[str]:
        """What went, or would have gone, over a network: anything but the file and data: URIs."""
        return [u for u in self.requests if not u.startswith(("file:", "data:", "about:"))]


@dataclass
class Browser:
    proc: subprocess.Popen
    ws: Any
    profile: Path
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _events: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, timeout: float = 30.0) -> "Browser":
        import websocket

        binary = find_chromium()
        if binary is None:
            raise RuntimeError("no Chromium found (apt-get install chromium-headless-shell, or run .ci/install-chromium)")
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        # Its own process group: close() ends Chromium's helper processes (zygotes, renderer) too.
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=(workdir / "chromium.log").open("wb"),
                                start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{binary} did not start; see {workdir / 'chromium.log'}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = []
        while not pages:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                pages = [t for t in json.load(resp) if t.get("type") == "page"]
            if not pages and time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("Chromium started without a page to drive")
            time.sleep(0.1)
        ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        browser = cls(proc, ws, profile)
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable")
        return browser

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import os
        import signal

        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
            except ProcessLookupError:
                pass

    # -- the protocol ----------------------------------------------------------------------------
    def call(self, method: str, **params: Any) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self._events):
            if event["method"] == method:
                return self._events.pop(i)
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg
            if "method" in msg:
                self._events.append(msg)
        raise TimeoutError(f"no {method} within {timeout:.0f} s")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    # -- a page, as a person opens it ----------------------------------------------------------------
    def open(self, path: Path, width: int, height: int, screenshot: Path | None = None, mobile: bool = False,
             scale: float = 1.0) -> PageLoad:
        self._events.clear()
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=scale,
                  mobile=mobile)
        url = path.resolve().as_uri()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
        images = self.evaluate(
            "Array.from(document.images).map(i => ({src: i.src.slice(0, 40), alt: i.alt, "
            "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))")
        scroll_width = self.evaluate("document.documentElement.scrollWidth")
        shot = None
        if screenshot is not None:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})["data"]
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(data))
            shot = screenshot
        self.call("Runtime.evaluate", expression="0")  # flush the events that arrived meanwhile
        errors, requests = [], []
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                errors.append(params.get("exceptionDetails", {}).get("text", "exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                requests.append(params.get("request", {}).get("url", "")[:120])
        return PageLoad(url, images, errors, requests, scroll_width, width, shot)
