"""Orchestration overhead of a local run: `launch --follow` wall time minus the training phase.

Everything that is not training counts: CLI start, validation, lock, dataset and bundle
upload, agent process start (python + torch + chronos imports), data sync, results upload,
cleanup, and the follower noticing the end. Goal: <= 8 s.
Run: .venv/bin/python bench/bench_orchestration.py [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cliruns import launch_follow, record  # noqa: E402

from automation.sandbox import control as sandbox  # noqa: E402
from automation.sandbox.strictmoto import OPERATORS  # noqa: E402
from instance.protocol.aws import client  # noqa: E402
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import yaml

    home = Path(tempfile.mkdtemp(prefix="chronos-bench-"))
    os.environ["CHRONOS_HOME"] = str(home)
    info = sandbox.start(("dev",))
    s3 = client("s3", info.target(OPERATORS["dev"]))  # reads records as a user would
    rows = []
    try:
        data = write_parquet(home / "data" / "train.parquet", synthetic_frame(n_items=6, length=96))
        cfg = home / "run.yaml"
        cfg.write_text(yaml.safe_dump(run_config(dataset=str(data))))
        for _ in range(args.runs):
            run_id, wall = launch_follow(cfg, home)
            phases = {k: v["seconds"] for k, v in record(s3, info.bucket("dev"), "dev", run_id)["phases"].items()}
            rows.append((wall, phases["training"], phases))
    finally:
        sandbox.stop()
        shutil.rmtree(home, ignore_errors=True)
    for wall, train, phases in rows:
        print(f"wall {wall:6.1f} s  training {train:6.1f} s  overhead {wall - train:5.1f} s  phases {phases}")
    overhead = statistics.median(w - t for w, t, _ in rows)
    print(f"median orchestration overhead: {overhead:.1f} s  (goal <= 8 s)")


if __name__ == "__main__":
    main()
