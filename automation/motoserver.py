"""Start and probe a moto server process on loopback (the tests' and the sandbox's AWS).

`python -m automation.motoserver PORT` serves moto made as strict as AWS where the project
relies on it (automation/strictmoto.py): IAM enforced for every request, real resource ARNs for
the actions we call, atomic conditional writes. Only the identities in strictmoto get in.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .strictmoto import SANDBOX_ACCOUNT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_up(endpoint_url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=timeout):
            return True
    except (urllib.error.URLError, OSError):
        return False


def start(port: int, log_path: Path | None = None, detach: bool = False) -> subprocess.Popen:
    """Launch `python -m moto.server` on 127.0.0.1:port and wait until it answers."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {**os.environ, "MOTO_ACCOUNT_ID": SANDBOX_ACCOUNT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "automation.motoserver", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=detach,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode} before answering on {url}")
        if is_up(url):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on {url} within 30 s")


def reset(endpoint_url: str) -> None:
    req = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10):
        pass


def serve(port: int) -> None:
    import signal

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    from .strictmoto import SerializeConditionalRequests, install

    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    install()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, SerializeConditionalRequests(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
