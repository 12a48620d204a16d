"""Where a large download's client CPU goes: the same ranged GETs (obstore, 16 MiB ranges, 15 in
flight) against `rclone serve s3` on a tmpfs behind bench/rangeproxy.py, each range's body
handled one way or another, next to the product's download_files, s5cmd and `aws s3 cp`.

    .venv/bin/python bench/bench_range_writes.py [--mb 1024] [--repeat 3]
        [--ways product,collect,nowrite,piece256k,piece1m,piece4m,s5cmd,aws]

- collect: the whole range collected in Rust (bytes_async), then os.pwrite from a thread pool
  (the product before 2026-12-04); nowrite: the same, never written (the network's share).
- pieceN: the range's stream in pieces of N (min_chunk_size), each pwritten as it comes.
Prints MiB/s and the client's CPU (user + system) a GiB, rotated, medians. Needs `make bench`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import s3tools  # noqa: E402
from s3servers import rclone_server, with_partial_content  # noqa: E402

MIB = 1024 * 1024
RANGE = 16 * MIB
PIECES = {"piece256k": 256 * 1024, "piece1m": MIB, "piece4m": 4 * MIB}


def _cpu(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


async def ranges(store, key: str, size: int, path: Path, piece: int | None, write: bool = True) -> None:
    import obstore

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(4)
    slots = asyncio.Semaphore(15)

    async def one(start: int) -> None:
        async with slots:
            result = await obstore.get_async(store, key, options={"range": (start, min(start + RANGE, size))})
            if piece is None:
                body = await result.bytes_async()
                if write:
                    await loop.run_in_executor(pool, os.pwrite, fd, body, start)
                return
            offset = start
            async for chunk in result.stream(min_chunk_size=piece):
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)

    try:
        await asyncio.gather(*(one(s) for s in range(0, size, RANGE)))
    finally:
        pool.shutdown()
        os.close(fd)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ways", default="product,collect,nowrite,piece256k,piece1m,piece4m,s5cmd,aws")
    args = p.parse_args()
    ways = args.ways.split(",")
    work = Path(tempfile.mkdtemp(prefix="chronos-bench-ranges-"))
    src = work / "big.bin"
    with open(src, "wb") as f:
        for _ in range(args.mb):
            f.write(os.urandom(MIB))
    os.sync()
    got: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    key = "cached-datasets/2026/02/big/big.bin"
    with ExitStack() as stack:
        server = stack.enter_context(with_partial_content(stack.enter_context(rclone_server(under="/dev/shm"))))
        server.client(seeding=True).upload_file(str(src), server.bucket, key)
        size = src.stat().st_size
        store = s3tools._obstore(server)
        for r in range(args.repeat):
            for way in s3tools.rotated(ways, r):
                dest = work / f"got-{way}.bin"
                cpu0 = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                if way == "product":
                    s3tools.get_ours(server, key, dest)
                elif way in ("collect", "nowrite"):
                    asyncio.run(ranges(store, key, size, dest, None, write=way == "collect"))
                elif way in PIECES:
                    asyncio.run(ranges(store, key, size, dest, PIECES[way]))
                else:
                    s3tools.GET[way](server, key, dest)
                wall = time.perf_counter() - started
                cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu0
                got[way].append((wall, cpu))
                print(f"{way:10s} {args.mb / wall:6.0f} MiB/s  {wall:5.2f} s  {cpu / (args.mb / 1024):.2f} s CPU a GiB",
                      flush=True)
                dest.unlink(missing_ok=True)
    src.unlink()
    work.rmdir()
    print(json.dumps({w: {"mib_per_s": round(args.mb / statistics.median(t for t, _ in rows)),
                          "cpu_s_per_gib": round(statistics.median(c for _, c in rows) / (args.mb / 1024), 2),
                          "seconds": [round(t, 2) for t, _ in rows]} for w, rows in got.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
