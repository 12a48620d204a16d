"""Which S3 client moves the project's bytes fastest: every tool of bench/s3tools.py on the same
objects, on the sandbox (moto) and on `rclone serve s3`, plain and at 30 ms a request.

    .venv/bin/python bench/bench_clients.py [--servers moto,rclone] [--files 2000] [--big-mb 1024]
        [--tools ours,aws,s5cmd,crt,obstore] [--only sync,big] [--repeat 3] [--json]
        [--rclone-under /dev/shm] [--partial-content]

- sync: a prefix of `--files` x 10 KB and one of 100 x 1 MB into a fresh folder, each tool in
  turn, the order rotated every repeat (drift on a shared machine hits all alike); medians.
- big: one file of `--big-mb` downloaded and uploaded by each tool (plain servers only: the
  latency proxy buffers whole requests in Python and would be what is measured).
- `--rclone-under /dev/shm`: rclone serves a folder on a tmpfs, so what it writes costs no disk
  time (watch the memory: an upload holds its parts and the object); the disk alone is measured
  beside it (`dd` of 1 GiB with fdatasync, before and after), so each figure says what bounds it.
- `--partial-content`: every tool talks to rclone through bench/rangeproxy.py, which answers a
  ranged GET with S3's 206 instead of rclone's 200 (obstore, hence ours, refuses a 200).
Needs requirements-bench.txt (`make bench`) and `aws` on PATH.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import s3tools  # noqa: E402
from s3servers import Server, moto_sandbox, rclone_server, with_latency, with_partial_content  # noqa: E402

LATENCY_S = 0.030


def seed(server: Server, prefix: str, n: int, size: int) -> None:
    s3 = server.client(seeding=True)
    body = os.urandom(size)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=server.bucket, Key=f"{prefix}part-{i:05d}.parquet", Body=body),
                      range(n)))


def summary(times: dict[str, list[float]], base: str = "aws") -> dict:
    med = {t: statistics.median(v) for t, v in times.items()}
    return {"seconds": {t: [round(x, 2) for x in v] for t, v in times.items()},
            "median_s": {t: round(m, 2) for t, m in med.items()},
            **({f"speedup_over_{base}": {t: round(med[base] / m, 2) for t, m in med.items()}} if base in med else {})}


def sync_rows(server: Server, tools: list[str], files: int, repeat: int, work: Path) -> list[dict]:
    rows = []
    for n, size in ((files, 10_000), (100, 1_000_000)):
        prefix = f"cached-datasets/2026/01/clients-{n}x{size}/"
        seed(server, prefix, n, size)
        for latency in (0.0, LATENCY_S):
            with ExitStack() as stack:
                target = stack.enter_context(with_latency(server, latency)) if latency else server
                times: dict[str, list[float]] = {t: [] for t in tools}
                for r in range(repeat):
                    for tool in s3tools.rotated(tools, r):
                        dest = s3tools.fresh_dir(work)
                        try:
                            times[tool].append(s3tools.SYNC[tool](target, prefix, dest))
                            assert sum(1 for _ in dest.rglob("*.parquet")) == n, (tool, dest)
                        finally:
                            s3tools.drop(dest)
                row = {"server": target.label, "files": n, "bytes_each": size, **summary(times)}
                print(f"sync {n} x {size} B on {target.label}: {row['median_s']} s; over aws "
                      f"{row.get('speedup_over_aws')}", flush=True)
                rows.append(row)
    return rows


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (an in-process tool or a CLI)."""
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def big_rows(server: Server, tools: list[str], mb: int, repeat: int, work: Path) -> list[dict]:
    src = work / "big.bin"
    with open(src, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1024 * 1024))
    key = "cached-datasets/2026/02/big/big.bin"
    server.client(seeding=True).upload_file(str(src), server.bucket, key)
    cpu: dict[str, float] = {}
    gets: dict[str, list[float]] = {t: [] for t in tools if t in s3tools.GET}
    puts: dict[str, list[float]] = {t: [] for t in tools if t in s3tools.PUT}
    failed: dict[str, str] = {}
    for r in range(repeat):
        for tool in s3tools.rotated(list(gets), r):
            dest = work / f"got-{tool}.bin"
            try:
                before = _cpu()
                gets[tool].append(s3tools.GET[tool](server, key, dest))
                cpu[f"download {tool}"] = cpu.get(f"download {tool}", 0.0) + _cpu() - before
                assert dest.stat().st_size == src.stat().st_size
            finally:
                s3tools.drop(dest)
        for tool in s3tools.rotated([t for t in puts if t not in failed], r):
            put_key = f"cached-datasets/2026/02/put-{tool}-{r}/big.bin"
            try:
                before = _cpu()
                puts[tool].append(s3tools.PUT[tool](server, src, put_key))
                cpu[f"upload {tool}"] = cpu.get(f"upload {tool}", 0.0) + _cpu() - before
                server.client(seeding=True).delete_object(Bucket=server.bucket, Key=put_key)  # the disk is shared
            except Exception as exc:  # noqa: BLE001 - a tool that cannot talk to a server is a finding
                failed[tool] = f"{type(exc).__name__}: {exc}"[:200]
                print(f"upload with {tool} on {server.label} failed: {failed[tool]}", flush=True)
    for tool in failed:
        puts.pop(tool, None)
    src.unlink()
    out = []
    for verb, times in (("download", gets), ("upload", puts)):
        row = {"server": server.label, "what": f"one file of {mb} MiB, {verb}", "mb": mb, **summary(times),
               "mb_per_s": {t: round(mb / statistics.median(v)) for t, v in times.items()},
               "client_cpu_s_per_run": {t: round(cpu.get(f"{verb} {t}", 0.0) / max(1, len(v)), 1)
                                        for t, v in times.items()}}
        print(f"{verb} {mb} MiB on {server.label}: {row['median_s']} s; MB/s {row['mb_per_s']}", flush=True)
        out.append(row)
    out[-1]["failed"] = failed
    return out


def disk_mb_per_s(work: Path, mb: int = 1024) -> float:
    """The disk alone: `dd` of `mb` MiB from /dev/zero with fdatasync, in MB/s (dd's own figure)."""
    import subprocess

    out = subprocess.run(["dd", "if=/dev/zero", f"of={work / 'dd.bin'}", "bs=1M", f"count={mb}", "conv=fdatasync"],
                         capture_output=True, text=True, check=True).stderr
    (work / "dd.bin").unlink()
    took = float(out.strip().splitlines()[-1].split(",")[-2].split()[0])
    return round(mb * 1024 * 1024 / took / 1e6)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--servers", default="moto,rclone")
    p.add_argument("--tools", default="ours,aws,s5cmd,crt,obstore")
    p.add_argument("--only", default="sync,big")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--big-mb", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--rclone-under", default=None, help="rclone's folder's parent, e.g. /dev/shm (a tmpfs)")
    p.add_argument("--partial-content", action="store_true", help="rclone behind bench/rangeproxy.py (206)")
    args = p.parse_args()
    tools = args.tools.split(",")
    if "aws" in tools and not s3tools.AWS:
        sys.exit("the AWS CLI (`aws`) is not on PATH; install awscli to compare")
    result: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "rows": []}
    starts = {"moto": moto_sandbox, "rclone": lambda: rclone_server(under=args.rclone_under)}
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        result["disk_mb_per_s_before"] = disk_mb_per_s(Path(tmp))
        print(f"disk alone (dd, 1 GiB, fdatasync): {result['disk_mb_per_s_before']} MB/s", flush=True)
        for name in args.servers.split(","):
            with ExitStack() as stack:
                server = stack.enter_context(starts[name]())
                if name == "rclone" and args.partial_content:
                    server = stack.enter_context(with_partial_content(server))
                if "sync" in args.only:
                    result["rows"] += sync_rows(server, tools, args.files, args.repeat, Path(tmp))
                if "big" in args.only:
                    result["rows"] += big_rows(server, tools, args.big_mb, args.repeat, Path(tmp))
        result["disk_mb_per_s_after"] = disk_mb_per_s(Path(tmp))
        print(f"disk alone (dd, 1 GiB, fdatasync): {result['disk_mb_per_s_after']} MB/s", flush=True)
    result["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
