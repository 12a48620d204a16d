"""A loopback HTTP proxy between the code and moto server that injects S3 faults.

Faults, each at `rate` (0..1) per request, split evenly among the enabled kinds:
- slowdown: 503 SlowDown before forwarding (botocore retries it, as AWS throttling)
- error500: 500 InternalError before forwarding
- reset:    the connection is closed without a reply, before forwarding
- lost:     forwarded to moto, then the connection is closed: the write happened but its reply
            was lost (the case that makes a retried conditional PUT see 412)
- latency:  `latency_s` added, then forwarded normally
- conflict: 409 ConditionalRequestConflict before forwarding, only on conditional writes
            (PUT, POST or DELETE with If-Match or If-None-Match): what real S3 answers when
            conditional requests on one key race. Not part of ALL_FAULTS; ask for it by name.
            botocore does not retry it, so the caller sees it at once.
- denied:   403 AccessDenied before forwarding, as S3 answers a principal the policy does not
            allow: not retried either. Not part of ALL_FAULTS; ask for it by name.
`bytes_per_s` (default 0: unlimited) makes the server behind the proxy slow: every request's
and reply's body goes through one pipe of that many bytes a second, in turn (a server writing to
a busy disk, or one congested link): many large requests in flight then wait on each other, as
parts of a multipart upload do on a slow server.
Apart from faults, `first_byte_s` (default 0) delays every request that reaches moto by that
many seconds before it is forwarded: a fixed first-byte latency, as S3 answers from EC2 in the
same region (tens of ms a request), so that a benchmark shows what concurrency buys on AWS rather
than on loopback. It costs the proxy no CPU (a timed wait) and applies to every method and path
except moto's own control API.
Which requests may be hit: `paths` (substrings of the URL path, query string excluded; all when
empty) and `methods` (all when empty); never those of the sandbox's EC2 service (`AWS_OWN_KEYS`:
AWS's own side is not behind the network a fault stands for). moto's own control API (/moto-api/) is never hit: it is
not AWS, and the CLI probes it to find the sandbox. `configure()` changes all of this while
requests flow (a test can start failing everything mid-run, then heal the proxy), and
`max_faults` caps how many faults are injected from then on.

`answer(target, respond)` answers JSON-protocol requests whose `X-Amz-Target` is `target`
itself, without moto: `respond(body)` returns (status, document). It stands in for services moto
does not play, e.g. Service Quotas' EC2 vCPU quotas.

`gate()` holds a number of matching requests until all have arrived (a start line for races).
Counts of what it did are kept in `stats` (and every (method, path) seen in `seen`; every reply
moto gave that reached the client in `replied`, by (method, path, Range header or None): what a
test counts to tell two ranged GETs from one GET sent twice, faulted attempts left out):
- `requests`: every request seen; one key per fault kind: how often it was injected;
- from botocore's `amz-sdk-request: attempt=N; max=M` header: `calls` (first attempts, i.e. API
  calls made), `retries` (attempts after the first: exactly the retries botocore made) and
  `exhausted` (a faulted last attempt: the call failed after its whole retry budget);
- `conditional_writes`: conditional PUT/POST/DELETE requests that passed the path and method
  filters (what a 409 could meet);
- `unnumbered`: failed attempts of requests without botocore's attempt header (obstore's), whether
  a failing fault was injected or moto answered 5xx itself: their retries are obstore's own,
  which `retries` cannot count;
- `failed_calls` (a property): calls whose latest attempt was faulted, from the
  `amz-sdk-invocation-id` header: those the caller saw fail, whether the attempts ran out or
  botocore's retry quota did.
"""
from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from automation.sandbox.strictmoto import EC2_SERVICE

ALL_FAULTS = ("slowdown", "error500", "reset", "lost", "latency")
# Requests AWS's own services make (the sandbox's EC2 and Auto Scaling stand-in, which starts and
# replaces machines): they do not cross the network between the user's machines and AWS, so no
# fault of that network reaches them.
AWS_OWN_KEYS = frozenset({EC2_SERVICE.access_key_id})
FAILING_FAULTS = ("slowdown", "error500", "reset", "lost")  # every one of these costs a retry
CONFLICT = "conflict"  # 409 on a conditional write: never retried by botocore, so no retry cost
DENIED = "denied"  # 403 AccessDenied: never retried by botocore
CONDITIONAL_HEADERS = ("If-Match", "If-None-Match")
# S3's own wording for the 409 (S3 API reference, "Error codes").
CONFLICT_MESSAGE = ("A conflicting operation occurred. If using PutObject you can retry the request. If using "
                    "multipart upload you should initiate another CreateMultipartUpload request and re-upload each part.")
WRITE_METHODS = ("PUT", "POST", "DELETE")
NEVER_FAULTED = "/moto-api/"
_S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
             "<RequestId>faultproxy</RequestId></Error>")


def sdk_attempt(header: str | None) -> tuple[int, int] | None:
    """(attempt, max) from botocore's `amz-sdk-request` header, or None without one."""
    fields = dict(part.strip().split("=", 1) for part in (header or "").split(";") if "=" in part)
    try:
        return int(fields["attempt"]), int(fields["max"])
    except (KeyError, ValueError):
        return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # a client hanging up is not news


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, faults=ALL_FAULTS, latency_s: float = 0.2,
                 seed: int = 0, paths: tuple[str, ...] = (), methods: tuple[str, ...] = (),
                 max_faults: int | None = None, first_byte_s: float = 0.0, bytes_per_s: float = 0.0):
        self.upstream = urlsplit(upstream)
        self.bytes_per_s = bytes_per_s
        self._pipe_free_at = 0.0  # when the slow pipe has moved every body handed to it
        self.first_byte_s = first_byte_s
        self.latency_s = latency_s
        self.rng = random.Random(seed)
        self.stats: Counter = Counter()
        self.seen: Counter = Counter()  # (method, url path) -> requests, faulted or not
        self.replied: Counter = Counter()  # (method, url path, Range header) -> moto's replies delivered
        self._last_attempt_failed: dict[str, bool] = {}  # invocation id -> its latest attempt faulted
        self._lock = threading.Lock()
        self._gate: dict | None = None
        self._answers: dict[str, object] = {}
        self.answered_for: list[tuple[str, str]] = []  # (X-Amz-Target, access key id) of each answered request
        self.max_faults = None
        self.configure(rate=rate, faults=faults, paths=paths, methods=methods, max_faults=max_faults)
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def configure(self, rate: float | None = None, faults=None, paths=None, methods=None,
                  max_faults: int | None = None, seed: int | None = None, first_byte_s: float | None = None) -> None:
        """Change what is injected from the next request on (None leaves a setting as it is).
        `max_faults`: inject at most that many more faults (e.g. 1: lose exactly one reply);
        `seed`: restart the fault sequence from this seed; `first_byte_s`: the fixed latency."""
        with self._lock:
            if first_byte_s is not None:
                self.first_byte_s = first_byte_s
            if seed is not None:
                self.rng = random.Random(seed)
            if max_faults is not None:
                self.max_faults = self.injected + max_faults
            if rate is not None:
                self.rate = rate
            if faults is not None:
                self.faults = tuple(faults)
            if paths is not None:
                self.paths = tuple(paths)
            if methods is not None:
                self.methods = tuple(m.upper() for m in methods)

    def through_pipe(self, n: int) -> None:
        """Wait until `n` bytes have passed the slow pipe after every body queued before them."""
        if not self.bytes_per_s or not n:
            return
        with self._lock:
            now = time.monotonic()
            self._pipe_free_at = max(now, self._pipe_free_at) + n / self.bytes_per_s
            done_at = self._pipe_free_at
        time.sleep(max(0.0, done_at - time.monotonic()))

    def answer(self, target: str, respond) -> None:
        """Answer requests with `X-Amz-Target: target` by `respond(json body) -> (status, doc)`."""
        with self._lock:
            self._answers[target] = respond

    def gate(self, parties: int, timeout: float, path: str, method: str, header: str | None = None) -> None:
        """Hold the next `parties` requests that match (path substring, method, and `header`
        present) until all of them have arrived, then forward them at once: a start line for a
        race (e.g. 16 conditional creates of the lock reaching moto together). After `timeout`
        seconds the gate opens anyway, so a missing party never hangs the others."""
        with self._lock:
            self._gate = {"barrier": threading.Barrier(parties, timeout=timeout), "left": parties, "path": path,
                          "method": method.upper(), "header": header}

    def _wait_at_gate(self, method: str, path: str, headers) -> None:
        with self._lock:
            gate = self._gate
            if not gate or gate["left"] <= 0 or method.upper() != gate["method"] or gate["path"] not in path:
                return
            if gate["header"] and gate["header"] not in headers:
                return
            gate["left"] -= 1
            self.stats["gated"] += 1
        try:
            gate["barrier"].wait()
        except threading.BrokenBarrierError:
            self.count("gate_timeouts")

    def count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def upstream_error(self, invocation: str | None, sdk_request: str | None) -> None:
        with self._lock:
            self.stats["upstream_5xx"] += 1
            if sdk_attempt(sdk_request) is None:
                self.stats["unnumbered"] += 1  # a failed attempt that obstore, not botocore, retries
            if invocation:
                self._last_attempt_failed[invocation] = True

    def delivered(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.replied[(method.upper(), urlsplit(path).path, range_header)] += 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def failed_calls(self) -> int:
        with self._lock:
            return sum(self._last_attempt_failed.values())

    @property
    def injected(self) -> int:
        return sum(self.stats[f] for f in (*ALL_FAULTS, CONFLICT, DENIED))

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def pick(self, path: str, method: str = "GET", sdk_request: str | None = None,
             invocation: str | None = None, conditional: bool = False) -> str | None:
        url_path = urlsplit(path).path
        attempt = sdk_attempt(sdk_request)
        with self._lock:
            fault = self._pick(url_path, method, attempt, conditional)
            if invocation:
                self._last_attempt_failed[invocation] = fault in (*FAILING_FAULTS, CONFLICT, DENIED)
            return fault

    def _pick(self, url_path: str, method: str, attempt: tuple[int, int] | None,
              conditional: bool = False) -> str | None:
        """One request's fault (or None); the caller holds self._lock."""
        self.stats["requests"] += 1
        self.seen[(method.upper(), url_path)] += 1
        if attempt:
            self.stats["calls" if attempt[0] == 1 else "retries"] += 1
        if url_path.startswith(NEVER_FAULTED):
            return None
        if self.paths and not any(p in url_path for p in self.paths):
            return None
        if self.methods and method.upper() not in self.methods:
            return None
        if self.max_faults is not None and self.injected >= self.max_faults:
            return None
        if conditional and method.upper() in WRITE_METHODS:
            self.stats["conditional_writes"] += 1  # the requests a 409 could meet
        # A 409 only exists for conditional writes: other requests are no candidates for it.
        kinds = [f for f in self.faults if f != CONFLICT or (conditional and method.upper() in WRITE_METHODS)]
        if not kinds or not (self.rate and self.rng.random() < self.rate):
            return None
        fault = self.rng.choice(kinds)
        self.stats[fault] += 1
        if attempt and fault in FAILING_FAULTS and attempt[0] >= attempt[1]:
            self.stats["exhausted"] += 1
        if attempt is None and fault in FAILING_FAULTS:
            self.stats["unnumbered"] += 1  # hit a client that sends no attempt header (obstore)
        return fault

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # A reply goes out as two writes (headers, then body) on a kept-alive connection: with
            # Nagle on, the body waits for the client's delayed ACK of the headers (40 ms on Linux).
            disable_nagle_algorithm = True

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

            def _error(self, status: int, code: str, message: str = "injected by faultproxy") -> None:
                body = _S3_ERROR.format(code=code, msg=message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":  # a body after a HEAD reply would garble the next one
                    self.wfile.write(body)

            def _canned(self, body: bytes) -> bool:
                respond = proxy._answers.get(self.headers.get("X-Amz-Target", ""))
                if respond is None:
                    return False
                import json

                status, doc = respond(json.loads(body or b"{}"))
                # Who asked, so a test can check the caller's policy allows what moto cannot play.
                signer = (self.headers.get("Authorization") or "").partition("Credential=")[2].split("/", 1)[0]
                with proxy._lock:
                    proxy.answered_for.append((self.headers.get("X-Amz-Target", ""), signer))
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                proxy.count("answered")
                return True

            def _any(self) -> None:
                body = self._body()
                if self._canned(body):
                    return
                proxy._wait_at_gate(self.command, urlsplit(self.path).path, self.headers)
                signer = (self.headers.get("Authorization") or "").partition("Credential=")[2].split("/", 1)[0]
                fault = None if signer in AWS_OWN_KEYS else proxy.pick(
                    self.path, self.command, self.headers.get("amz-sdk-request"),
                    self.headers.get("amz-sdk-invocation-id"),
                    conditional=any(h in self.headers for h in CONDITIONAL_HEADERS))
                if fault == CONFLICT:
                    return self._error(409, "ConditionalRequestConflict", CONFLICT_MESSAGE)
                if fault == DENIED:
                    return self._error(403, "AccessDenied", "Access Denied")
                if fault == "slowdown":
                    return self._error(503, "SlowDown")
                if fault == "error500":
                    return self._error(500, "InternalError")
                if fault == "reset":
                    return self._drop()
                if fault == "latency":
                    threading.Event().wait(proxy.latency_s)
                if proxy.first_byte_s and not urlsplit(self.path).path.startswith(NEVER_FAULTED):
                    time.sleep(proxy.first_byte_s)
                proxy.through_pipe(len(body))
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
                if resp.status >= 500:  # moto's own errors (botocore retries them too)
                    proxy.upstream_error(self.headers.get("amz-sdk-invocation-id"), self.headers.get("amz-sdk-request"))
                if fault == "lost":
                    return self._drop()
                proxy.through_pipe(0 if self.command == "HEAD" else len(data))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD reply has no body but tells the object's size: pass moto's length on.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                proxy.delivered(self.command, self.path, self.headers.get("Range"))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler


def serve(upstream: str, first_byte_s: float) -> None:
    """`python -m tests.faultproxy UPSTREAM FIRST_BYTE_S`: a latency-only proxy in a process of its
    own (a benchmark's client then does not share a GIL with it); prints its URL, serves until
    stdin closes."""
    import sys

    with FaultProxy(upstream, first_byte_s=first_byte_s) as proxy:
        print(proxy.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    import sys

    serve(sys.argv[1], float(sys.argv[2]))
