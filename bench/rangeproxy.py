"""`rclone serve s3` answers a ranged GET with 200 and a Content-Range; S3 answers 206 Partial
Content (RFC 9110 15.3.7; the S3 API reference's GetObject, "Range"). Clients that check the
status refuse rclone's answer (obstore: "Received non-partial response when range requested").
This proxy sits in front of rclone and fixes that one thing: a 200 that carries a Content-Range
goes out as 206 (and an Expect: 100-continue is answered by the proxy itself). Everything else
is passed through byte for byte, streamed in 1 MiB reads on
asyncio (no request is buffered whole), so it costs little CPU next to the tools it serves.

    python bench/rangeproxy.py http://127.0.0.1:PORT     # prints its own URL; serves until stdin closes

A bench only: the product talks to S3, which needs no such fix.
"""
from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlsplit

CHUNK = 1024 * 1024


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


async def _copy(reader, writer, n: int) -> None:
    while n > 0:
        data = await reader.read(min(CHUNK, n))
        if not data:
            raise ConnectionError("closed mid-body")
        writer.write(data)
        n -= len(data)
        await writer.drain()


async def _serve(client_r, client_w, host: str, port: int) -> None:
    up_r, up_w = await asyncio.open_connection(host, port, limit=CHUNK)
    try:
        while True:
            request = await _headers(client_r)
            if request is None:
                return
            if any(line.lower().startswith(b"transfer-encoding:") for line in request[1:]):
                raise ConnectionError("chunked request bodies are not proxied")  # no tool here sends one
            ranged = any(line.lower().startswith(b"range:") for line in request[1:])
            # Expect: 100-continue is answered here (and not sent on): the body is then streamed to
            # rclone at once, and no interim reply has to be told from the final one.
            expect = [line for line in request[1:] if line.lower().startswith(b"expect:")]
            if expect:
                request = [line for line in request if line not in expect]
                client_w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            up_w.write(b"".join(request) + b"\r\n")
            await _copy(client_r, up_w, _length(request))
            reply = await _headers(up_r)
            if reply is None:
                return
            if ranged and reply[0].split(b" ", 2)[1] == b"200" and any(
                    line.lower().startswith(b"content-range:") for line in reply[1:]):
                reply[0] = reply[0].split(b" ", 1)[0] + b" 206 Partial Content\r\n"
            client_w.write(b"".join(reply) + b"\r\n")
            head = request[0].startswith(b"HEAD ")
            await _copy(up_r, client_w, 0 if head else _length(reply))
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        return  # a hung-up client, or the proxy shutting down
    finally:
        up_w.close()
        client_w.close()


async def main(upstream: str) -> None:
    where = urlsplit(upstream)
    server = await asyncio.start_server(lambda r, w: _serve(r, w, where.hostname, where.port), "127.0.0.1", 0,
                                        limit=CHUNK)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
