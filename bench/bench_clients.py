"""Which S3 client moves the project's bytes fastest: every tool of bench/s3tools.py on the same
objects, on the sandbox (moto) and on `rclone serve s3`, plain and at 30 ms a request.

    .venv/bin/python bench/bench_clients.py [--servers moto,rclone] [--files 2000] [--big-mb 1024]
        [--tools ours,aws,s5cmd,crt,obstore] [--only sync,big] [--repeat 3] [--json]
        [--rclone-under /dev/shm] [--partial-content] [--conn-mib-s 4 --first-byte-ms 30]
        [--verbs download,upload]

- sync: a prefix of `--files` x 10 KB and one of 100 x 1 MB into a fresh folder, each tool in
  turn, the order rotated every repeat (drift on a shared machine hits all alike); medians.
- big: one file of `--big-mb` downloaded and uploaded by each tool (plain servers only: the
  latency proxy buffers whole requests in Python and would be what is measured).
- `--rclone-under /dev/shm`: rclone serves a folder on a tmpfs, so what it writes costs no disk
  time (watch the memory: an upload holds its parts and the object); the disk alone is measured
  beside it (`dd` of 1 GiB with fdatasync, before and after), so each figure says what bounds it.
- `--partial-content`: every tool talks to rclone through bench/rangeproxy.py, which answers a
  ranged GET with S3's 206 instead of rclone's 200 (obstore, hence ours, refuses a 200).
- `--conn-mib-s R --first-byte-ms L` (big only; implies --partial-content): the proxy also plays
  S3's bound on one connection: each request waits L ms, then its body moves at R MiB/s on its
  own connection (AWS: one request a connection carries 85-90 MB/s, docs/benchmarks.md), so
  throughput comes from requests in flight, as against S3, and not from spending least CPU a
  byte, as on loopback. Each tool's peak of connections and of requests in flight at the proxy
  is recorded beside its time: what explains it under this model. The big object is planted on
  rclone directly, not through the paced proxy.
- `--verbs download,upload`: which halves of big to run (to keep one run under ten minutes).
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
from bench_data import CpuShare  # noqa: E402
from s3servers import (  # noqa: E402
    Server,
    moto_sandbox,
    proxy_peak,
    rclone_server,
    with_latency,
    with_partial_content,
)

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


def big_rows(server: Server, tools: list[str], mb: int, repeat: int, work: Path,
             verbs: tuple[str, ...] = ("download", "upload"), origin: Server | None = None,
             conn_mib_s: float = 0.0) -> list[dict]:
    """One file of `mb` MiB downloaded and uploaded by each tool. `origin`: the same server
    without the proxy in front, which plants and deletes the objects (not part of any timing).
    `conn_mib_s`: the proxy's rate a connection, if any: a tool's bound under that model is its
    peak of requests in flight times that rate (`bound_mib_s`), and `of_bound` how near it came."""
    origin = origin or server
    src = work / "big.bin"
    with open(src, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1024 * 1024))
    os.sync()  # else the first tool's run competes with the source file's writeback (first-run outlier)
    key = "cached-datasets/2026/02/big/big.bin"
    if "download" in verbs:
        origin.client(seeding=True).upload_file(str(src), origin.bucket, key)
    cpu: dict[str, CpuShare] = {}  # "verb tool": the client's, rclone's and the proxy's CPU seconds
    seen: dict[str, dict] = {}  # "verb tool": the proxy's peaks, the highest over the repeats
    gets: dict[str, list[float]] = {t: [] for t in tools if t in s3tools.GET} if "download" in verbs else {}
    puts: dict[str, list[float]] = {t: [] for t in tools if t in s3tools.PUT} if "upload" in verbs else {}
    failed: dict[str, str] = {}

    def timed(verb: str, tool: str, run) -> float:
        proxy_peak(server)  # starts the proxy's peaks afresh
        with cpu.setdefault(f"{verb} {tool}", CpuShare()).measure(server.pids, 1):
            took = run()
        peak = proxy_peak(server)
        if peak:  # the highest peaks over the repeats, and every run's count of requests
            was = seen.setdefault(f"{verb} {tool}", {**peak, "requests": []})
            was.update({k: max(v, was[k]) for k, v in peak.items() if k != "requests"})
            was["requests"].append(peak["requests"])
        return took

    for r in range(repeat):
        for tool in s3tools.rotated(list(gets), r) if gets else ():
            dest = work / f"got-{tool}.bin"
            try:
                gets[tool].append(timed("download", tool, lambda: s3tools.GET[tool](server, key, dest)))
                assert dest.stat().st_size == src.stat().st_size
            finally:
                s3tools.drop(dest)
        for tool in s3tools.rotated([t for t in puts if t not in failed], r) if puts else ():
            put_key = f"cached-datasets/2026/02/put-{tool}-{r}/big.bin"
            try:
                puts[tool].append(timed("upload", tool, lambda: s3tools.PUT[tool](server, src, put_key)))
                head = origin.client(seeding=True).head_object(Bucket=origin.bucket, Key=put_key)
                assert head["ContentLength"] == src.stat().st_size, (tool, head["ContentLength"])
                origin.client(seeding=True).delete_object(Bucket=origin.bucket, Key=put_key)  # the memory is shared
            except Exception as exc:  # noqa: BLE001 - a tool that cannot talk to a server is a finding
                failed[tool] = f"{type(exc).__name__}: {exc}"[:200]
                print(f"upload with {tool} on {server.label} failed: {failed[tool]}", flush=True)
    for tool in failed:
        puts.pop(tool, None)
    src.unlink()
    out = []
    for verb, times in (("download", gets), ("upload", puts)):
        if verb not in verbs:
            continue
        row = {"server": server.label, "what": f"one file of {mb} MiB, {verb}", "mb": mb, **summary(times),
               "mb_per_s": {t: round(mb / statistics.median(v)) for t, v in times.items()},
               "client_cpu_s_per_run": {t: round(cpu[f"{verb} {t}"].seconds["client"] / len(v), 1)
                                        for t, v in times.items()},
               "server_cpu_s_per_run": {t: {k: round(c / len(v), 1) for k, c in cpu[f"{verb} {t}"].seconds.items()
                                            if k != "client"} for t, v in times.items()}}
        if seen:
            row["proxy_seen"] = {t: seen[f"{verb} {t}"] for t in times if f"{verb} {t}" in seen}
        if seen and conn_mib_s:
            row["bound_mib_s"] = {t: round(p["peak_in_flight"] * conn_mib_s) for t, p in row["proxy_seen"].items()}
            row["of_bound"] = {t: round(row["mb_per_s"][t] / b, 2) for t, b in row["bound_mib_s"].items()}
        print(f"{verb} {mb} MiB on {server.label}: {row['median_s']} s; MiB/s {row['mb_per_s']}; "
              f"CPU s a run {row['client_cpu_s_per_run']}; server side {row['server_cpu_s_per_run']}", flush=True)
        for tool, peak in row.get("proxy_seen", {}).items():
            bound = f"; bound {row['bound_mib_s'][tool]} MiB/s, reached {row['of_bound'][tool]}" if "bound_mib_s" in row else ""
            print(f"  {tool}: peak {peak['peak_in_flight']} requests in flight, {peak['peak_connections']} "
                  f"connections, {peak['requests']} requests a run{bound}", flush=True)
        out.append(row)
    if out:
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
    p.add_argument("--conn-mib-s", type=float, default=0.0, help="the proxy paces each connection to this rate")
    p.add_argument("--first-byte-ms", type=float, default=0.0, help="the proxy delays each request this long")
    p.add_argument("--verbs", default="download,upload", help="big: download, upload or both")
    args = p.parse_args()
    tools = args.tools.split(",")
    modelled = bool(args.conn_mib_s or args.first_byte_ms)
    if modelled and (args.only != "big" or "moto" in args.servers.split(",")):
        sys.exit("--conn-mib-s/--first-byte-ms model S3 for one large file: use them with --servers rclone --only big")
    if "aws" in tools and not s3tools.AWS:
        sys.exit("the AWS CLI (`aws`) is not on PATH; install awscli to compare")
    result: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "rows": []}
    if modelled:
        result["model"] = {"per_connection_mib_s": args.conn_mib_s, "first_byte_ms": args.first_byte_ms}
    starts = {"moto": moto_sandbox, "rclone": lambda: rclone_server(under=args.rclone_under)}
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        result["disk_mb_per_s_before"] = disk_mb_per_s(Path(tmp))
        print(f"disk alone (dd, 1 GiB, fdatasync): {result['disk_mb_per_s_before']} MB/s", flush=True)
        for name in args.servers.split(","):
            with ExitStack() as stack:
                server = origin = stack.enter_context(starts[name]())
                if name == "rclone" and (args.partial_content or modelled):
                    server = stack.enter_context(with_partial_content(server, args.conn_mib_s * 2**20,
                                                                      args.first_byte_ms / 1000))
                if "sync" in args.only:
                    result["rows"] += sync_rows(server, tools, args.files, args.repeat, Path(tmp))
                if "big" in args.only:
                    result["rows"] += big_rows(server, tools, args.big_mb, args.repeat, Path(tmp),
                                               tuple(args.verbs.split(",")), origin, args.conn_mib_s)
        result["disk_mb_per_s_after"] = disk_mb_per_s(Path(tmp))
        print(f"disk alone (dd, 1 GiB, fdatasync): {result['disk_mb_per_s_after']} MB/s", flush=True)
    result["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
