"""`rclone serve s3` answers a ranged GET with 200 and a Content-Range; S3 answers 206 Partial
Content (RFC 9110 15.3.7; the S3 API reference's GetObject, "Range"). Clients that check the
status refuse rclone's answer (obstore: "Received non-partial response when range requested").
This proxy sits in front of rclone and fixes that one thing: a 200 that carries a Content-Range
goes out as 206 (and an Expect: 100-continue is answered by the proxy itself). Everything else
is passed through byte for byte, streamed in reads of at most 1 MiB on asyncio (no request is
buffered whole), so it costs little CPU next to the tools it serves.

It can also play S3's own bound on one connection, so that a bench measures what a client's
concurrency buys against S3 rather than how little CPU it spends on loopback:
- `--first-byte-ms MS`: every request waits MS before it is forwarded (S3 from EC2 in the same
  region: "median latencies are often in the tens of milliseconds range" for small requests,
  AWS whitepaper "Best Practices Design Patterns: Optimizing Amazon S3 Performance", "Timeouts
  and Retries for Latency-Sensitive Applications");
- `--bytes-per-s N`: every request's body and every reply's body is paced to N bytes a second
  on its own connection (an HTTP/1.1 connection carries one request at a time, so this is also a
  per-request rate). AWS's guidance is "one concurrent request for each 85-90 MB/s of desired
  network throughput" (same whitepaper, "Horizontal Scaling and Request Parallelization for High
  Throughput"): a single request is bounded, and throughput comes from requests in flight.
  Pacing is a timed wait after each chunk, so it costs the proxy no more CPU than the copy.
What it saw is counted: connections open, requests in flight (from a request's headers to the
last byte of its reply), their peaks and the number of requests. `GET /.rangeproxy/peak` (a path
no bucket can have: bucket names never start with a dot) answers those counts as JSON and starts
the peaks again from what is open now, so a bench reads the peak of each tool's run apart.

    python bench/rangeproxy.py http://127.0.0.1:PORT [--bytes-per-s N] [--first-byte-ms MS]
    # prints its own URL; serves until stdin closes

A bench only: the product talks to S3, which needs no such fix.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

CHUNK = 1024 * 1024
PEAK_PATH = b"/.rangeproxy/peak"


@dataclass
class Counts:
    connections: int = 0
    in_flight: int = 0
    peak_connections: int = 0
    peak_in_flight: int = 0
    requests: int = 0

    def open(self) -> None:
        self.connections += 1
        self.peak_connections = max(self.peak_connections, self.connections)

    def start(self) -> None:
        self.in_flight += 1
        self.requests += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def read_and_restart(self) -> dict:
        seen = {"peak_connections": self.peak_connections, "peak_in_flight": self.peak_in_flight,
                "requests": self.requests}
        self.peak_connections, self.peak_in_flight, self.requests = self.connections, self.in_flight, 0
        return seen


@dataclass(frozen=True)
class Model:
    bytes_per_s: float = 0.0  # 0: unpaced
    first_byte_s: float = 0.0

    @property
    def chunk(self) -> int:
        # Paced bodies go in pieces of about 1/16 s, so no connection runs far ahead of its rate.
        return CHUNK if not self.bytes_per_s else max(64 * 1024, min(CHUNK, int(self.bytes_per_s / 16)))


async def _headers(reader: asyncio.StreamReader) -> list[bytes] | None:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line)


def _length(lines: list[bytes]) -> int:
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _copy(reader, writer, n: int, model: Model) -> None:
    loop = asyncio.get_running_loop()
    started, sent = loop.time(), 0
    while n > 0:
        data = await reader.read(min(model.chunk, n))
        if not data:
            raise ConnectionError("closed mid-body")
        writer.write(data)
        n -= len(data)
        sent += len(data)
        await writer.drain()
        if model.bytes_per_s:
            ahead = started + sent / model.bytes_per_s - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def _copy_chunked(reader, writer, model: Model) -> None:
    """A reply sent with Transfer-Encoding: chunked (rclone's listings), chunk by chunk to its end."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise ConnectionError("closed mid-body")
        writer.write(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                writer.write(line)
            writer.write(b"\r\n")
            await writer.drain()
            return
        await _copy(reader, writer, size + 2, model)  # the chunk and its CRLF


def _chunked(lines: list[bytes]) -> bool:
    return any(line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower() for line in lines[1:])


def _answer_peak(client_w, counts: Counts) -> None:
    body = json.dumps(counts.read_and_restart()).encode()
    client_w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)


async def _serve(client_r, client_w, host: str, port: int, model: Model, counts: Counts) -> None:
    up_w = None
    counted = False
    try:
        while True:
            request = await _headers(client_r)
            if request is None:
                return
            if request[0].split(b" ")[1:2] == [PEAK_PATH]:
                _answer_peak(client_w, counts)
                await client_w.drain()
                continue
            if not counted:  # the bench's own questions are not a tool's connections
                counted = True
                counts.open()
                up_r, up_w = await asyncio.open_connection(host, port, limit=CHUNK)
            counts.start()
            try:
                await _forward(request, client_r, client_w, up_r, up_w, model)
            finally:
                counts.in_flight -= 1
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        return  # a hung-up client, or the proxy shutting down
    finally:
        if counted:
            counts.connections -= 1
        if up_w is not None:
            up_w.close()
        client_w.close()


async def _forward(request: list[bytes], client_r, client_w, up_r, up_w, model: Model) -> None:
    if any(line.lower().startswith(b"transfer-encoding:") for line in request[1:]):
        raise ConnectionError("chunked request bodies are not proxied")  # no tool here sends one
    if model.first_byte_s:
        await asyncio.sleep(model.first_byte_s)
    ranged = any(line.lower().startswith(b"range:") for line in request[1:])
    # Expect: 100-continue is answered here (and not sent on): the body is then streamed to
    # rclone at once, and no interim reply has to be told from the final one.
    expect = [line for line in request[1:] if line.lower().startswith(b"expect:")]
    if expect:
        request = [line for line in request if line not in expect]
        client_w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    up_w.write(b"".join(request) + b"\r\n")
    await _copy(client_r, up_w, _length(request), model)
    reply = await _headers(up_r)
    if reply is None:
        raise ConnectionError("the server closed without a reply")
    if ranged and reply[0].split(b" ", 2)[1] == b"200" and any(
            line.lower().startswith(b"content-range:") for line in reply[1:]):
        reply[0] = reply[0].split(b" ", 1)[0] + b" 206 Partial Content\r\n"
    client_w.write(b"".join(reply) + b"\r\n")
    head = request[0].startswith(b"HEAD ")
    if not head and _chunked(reply):
        await _copy_chunked(up_r, client_w, model)
    else:
        await _copy(up_r, client_w, 0 if head else _length(reply), model)


async def main(upstream: str, model: Model) -> None:
    where = urlsplit(upstream)
    counts = Counts()
    server = await asyncio.start_server(lambda r, w: _serve(r, w, where.hostname, where.port, model, counts),
                                        "127.0.0.1", 0, limit=CHUNK)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("upstream")
    p.add_argument("--bytes-per-s", type=float, default=0.0, help="each connection's body rate (0: unpaced)")
    p.add_argument("--first-byte-ms", type=float, default=0.0, help="wait before forwarding each request")
    args = p.parse_args()
    asyncio.run(main(args.upstream, Model(args.bytes_per_s, args.first_byte_ms / 1000)))
