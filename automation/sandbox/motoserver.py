"""Start and probe a moto server process on loopback (the tests' and the sandbox's AWS).

`python -m automation.sandbox.motoserver PORT` serves moto made as strict as AWS where the project
relies on it (automation/sandbox/strictmoto.py): IAM enforced for every request, real resource ARNs for
the actions we call, atomic conditional writes. Only the identities in strictmoto get in.
"""
from __future__ import annotations

import json
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


def is_up(endpoint_url: str, timeout: float = 0.5, patience_s: float = 0.0) -> bool:
    """The server answers. Nobody listening is a no at once; a server that took the connection but
    is slow to answer (one GIL serving sixteen launches) is asked again, longer, for `patience_s`:
    a busy sandbox is not a dead one, and taking it for dead fails the command or starts a second."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=timeout):
                return True
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if not isinstance(reason, TimeoutError) or time.monotonic() >= deadline:
                return False
            timeout = min(timeout * 2, 4.0)


def start(port: int, log_path: Path | None = None, detach: bool = False) -> subprocess.Popen:
    """Launch `python -m moto.server` on 127.0.0.1:port and wait until it answers."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {**os.environ, "MOTO_ACCOUNT_ID": SANDBOX_ACCOUNT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "automation.sandbox.motoserver", str(port)],
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


def set_launch_conditions(endpoint_url: str, vcpu_quotas: dict[str, float] | None = None,
                          no_capacity: list[str] | tuple[str, ...] = ()) -> None:
    """What the sandbox's EC2 lets its Auto Scaling groups launch from now on: the account's vCPU
    quotas (Service Quotas codes) and the instance types it has no capacity for
    (automation/sandbox/grouplaunches.py). Without arguments: no limit, capacity everywhere."""
    from .grouplaunches import CONTROL_PATH

    body = json.dumps({"vcpu_quotas": vcpu_quotas or {}, "no_capacity": list(no_capacity)}).encode()
    req = urllib.request.Request(f"{endpoint_url}{CONTROL_PATH}", method="POST", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def serve(port: int) -> None:
    """Serve moto with waitress rather than moto's own werkzeug dev server: that one closes the
    connection after every reply (so each request pays a new TCP connection and a new thread, where
    S3 keeps connections alive) and logs every request; waitress keeps connections alive, as S3
    does, with a fixed pool of threads and TCP_NODELAY."""
    import signal

    import waitress
    from moto.moto_server.werkzeug_app import create_backend_app

    from .grouplaunches import LaunchControl
    from .strictmoto import SerializeConditionalRequests, install

    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    install()
    dispatcher = _dispatcher(create_backend_app)

    def app(environ, start_response):
        # moto signs the path as it arrived, from RAW_URI (werkzeug's and gunicorn's name for it).
        environ.setdefault("RAW_URI", environ.get("REQUEST_URI", ""))
        return dispatcher(environ, start_response)

    app = LaunchControl(SerializeConditionalRequests(app))
    # Replies up to 64 MiB stay in memory (the default spills anything over 1 MiB to a temp file);
    # a single PUT may be as large as S3 allows one (5 GiB); a body is read 1 MiB at a time, not
    # 8 KiB (for 1 GB uploaded that took moto's CPU from ~9 to ~7 s); many clients at once (a sync
    # keeps 64 connections) are let in.
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=16, connection_limit=1000,
                                    outbuf_overflow=64 << 20, inbuf_overflow=64 << 20,
                                    max_request_body_size=5 << 30, recv_bytes=1 << 20, ident="moto")
    server.channel_class = _channel()
    server.run()


def _channel():
    """waitress's connection, minus one bug: a request with `Expect: 100-continue` and no body
    (botocore sends one for an empty PutObject) is answered "100 Continue" and then never served.
    Such a request has nothing to wait for: it is served at once."""
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser

    class Parser(HTTPRequestParser):
        def parse_header(self, header_plus):
            super().parse_header(header_plus)
            if not self.chunked and not self.content_length:
                self.expect_continue = False

    return type("Channel", (HTTPChannel,), {"parser_class": Parser})


def _dispatcher(create_backend_app):
    """moto's host-to-service dispatcher, minus its per-request cost: it lists moto's package
    folders from disk and tries every service's URL pattern on every request (a third of the
    server's CPU per S3 GET). Both answers never change while the server runs."""
    import functools

    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules

    class Dispatcher(DomainDispatcherApplication):
        @functools.lru_cache(maxsize=256)
        def get_backend_for_host(self, host):
            return super().get_backend_for_host(host)

    return Dispatcher(create_backend_app)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
