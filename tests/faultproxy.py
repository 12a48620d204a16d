"""A loopback HTTP proxy between the code and moto server that injects S3 faults.

Faults, each at `rate` (0..1) per request, split evenly among the enabled kinds:
- slowdown: 503 SlowDown before forwarding (botocore retries it, as AWS throttling)
- error500: 500 InternalError before forwarding
- reset:    the connection is closed without a reply, before forwarding
- lost:     forwarded to moto, then the connection is closed: the write happened but its reply
            was lost (the case that makes a retried conditional PUT see 412)
- latency:  `latency_s` added, then forwarded normally
Counts of what it did are kept in `stats`, so tests and docs can report retries.
"""
from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ALL_FAULTS = ("slowdown", "error500", "reset", "lost", "latency")
_S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
             "<RequestId>faultproxy</RequestId></Error>")


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, faults=ALL_FAULTS, latency_s: float = 0.2,
                 seed: int = 0, paths: tuple[str, ...] = ()):
        self.upstream = urlsplit(upstream)
        self.rate = rate
        self.faults = tuple(faults)
        self.latency_s = latency_s
        self.paths = paths  # only requests whose path contains one of these (all when empty)
        self.rng = random.Random(seed)
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def pick(self, path: str) -> str | None:
        with self._lock:
            self.stats["requests"] += 1
            if self.paths and not any(p in path for p in self.paths):
                return None
            if self.rate and self.rng.random() < self.rate:
                fault = self.rng.choice(self.faults)
                self.stats[fault] += 1
                return fault
        return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _error(self, status: int, code: str) -> None:
                body = _S3_ERROR.format(code=code, msg="injected by faultproxy").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _any(self) -> None:
                body = self._body()
                fault = proxy.pick(self.path)
                if fault == "slowdown":
                    return self._error(503, "SlowDown")
                if fault == "error500":
                    return self._error(500, "InternalError")
                if fault == "reset":
                    return self._drop()
                if fault == "latency":
                    threading.Event().wait(proxy.latency_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if fault == "lost":
                    return self._drop()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler
