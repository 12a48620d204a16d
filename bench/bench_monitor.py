"""`chronos-train monitor --json` wall time against `aws s3api head-object` on the same sandbox.

Goal: monitor <= 1.0x the plain AWS CLI call. Both are whole processes, started cold, so the
figure is what a user waits for. Run: .venv/bin/python bench/bench_monitor.py [--repeat 10]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from automation.sandbox import control as sandbox  # noqa: E402
from automation.sandbox.strictmoto import OPERATORS  # noqa: E402
from instance.protocol.aws import client  # noqa: E402
from instance.protocol.state import StateStore  # noqa: E402


def timed(cmd: list[str], env: dict, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    aws = shutil.which("aws")
    if not aws:
        sys.exit("the AWS CLI (`aws`) is not on PATH; install awscli to compare against it")
    home = tempfile.mkdtemp(prefix="chronos-bench-")
    os.environ["CHRONOS_HOME"] = home
    info = sandbox.start(("dev",))
    try:
        s3 = client("s3", info.target(OPERATORS["dev"]))
        bucket = info.bucket("dev")
        store = StateStore(s3, bucket, "dev")
        lease = store.acquire("run-20261128-120000-beef", executor="local", instance_type="g4dn.xlarge")
        store.heartbeat(lease, progress={"step": 10, "total_steps": 100, "loss": 0.5})
        # Both as the operator, as a person would after `eval "$(chronos-train sandbox env)"`.
        env = {**os.environ, **sandbox.env_vars(info, "dev")}
        ours = timed([str(REPO / ".venv/bin/chronos-train"), "--local", "monitor", "--json"], env, args.repeat)
        theirs = timed([aws, "--endpoint-url", info.endpoint_url, "s3api", "head-object", "--bucket", bucket,
                        "--key", "dev/system-state.json"], env, args.repeat)
    finally:
        sandbox.stop()
        shutil.rmtree(home, ignore_errors=True)
    m, a = statistics.median(ours), statistics.median(theirs)
    print(f"monitor --json          median {m*1000:7.0f} ms  (min {min(ours)*1000:.0f}, n={len(ours)})")
    print(f"aws s3api head-object   median {a*1000:7.0f} ms  (min {min(theirs)*1000:.0f}, n={len(theirs)})")
    print(f"ratio monitor/aws-cli   {m / a:.2f}x  (goal <= 1.0x)")


if __name__ == "__main__":
    main()
