"""A spot interruption, timed on this machine: a local spot run is given a notice mid-training
(`sandbox interrupt`), then resumed by a replacement machine. Prints, per run:
- notice -> checkpoint in S3: from the notice to the interruption recorded in the lock (the
  checkpoint is complete in S3, marker written, before that record);
- replacement boot -> first resumed step: from the replacement agent's start to its first
  training step past the checkpoint (python + torch + chronos imports, data sync, checkpoint
  download, trainer restore);
- the resumed run's final loss against an uninterrupted run with the same seed and steps.
Run: .venv/bin/python bench/bench_spot.py [--runs 2] [--steps 600] [--size tiny]
"""
from __future__ import annotations

import argparse
import json
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
from instance.protocol.layout import Layout  # noqa: E402
from instance.protocol.timeutil import parse_iso  # noqa: E402
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet  # noqa: E402

LAYOUT = Layout("dev")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automation.cli", "--local", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def get(s3, bucket: str, key: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def wait(pred, timeout: float, every: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    sys.exit("timed out")


def one_run(s3, bucket: str, cfg: Path, home: Path, interrupt_at: int | None) -> dict:
    out = cli("launch", str(cfg), cwd=home)
    if out.returncode != 0:
        sys.exit(f"launch failed: {out.stderr[-1500:]}")
    run_id = out.stdout.splitlines()[0]
    lock = lambda: get(s3, bucket, LAYOUT.state) or {}  # noqa: E731
    row: dict = {"run_id": run_id}
    if interrupt_at is not None:
        wait(lambda: (lock().get("progress") or {}).get("step", 0) >= interrupt_at, 600, 0.2)
        noticed = time.time()
        cli("sandbox", "interrupt", run_id, cwd=home)
        entry = wait(lambda: (lock().get("interruptions") or [None])[-1], 120)
        row["notice_to_checkpoint_s"] = round(parse_iso(entry["at"]).timestamp() - noticed, 2)
        row["checkpoint_step"] = entry["checkpoint_step"]
        machine = wait(lambda: lock().get("attempt") == 2 and lock().get("machines", [{}])[-1], 300)
        booted = parse_iso(machine["started_at"]).timestamp()
        wait(lambda: (lock().get("progress") or {}).get("step", 0) > entry["checkpoint_step"]
             and lock().get("attempt") == 2, 600, 0.1)
        row["replacement_to_first_step_s"] = round(time.time() - booted, 2)
    record = wait(lambda: (get(s3, bucket, LAYOUT.training_record(run_id)) or {}).get("final_status")
                  and get(s3, bucket, LAYOUT.training_record(run_id)), 1800, 0.5)
    row.update(final_status=record["final_status"], final_loss=record["training"]["final_loss"],
               wql=(record.get("metrics") or {}).get("finetuned", {}).get("wql"))
    wait(lambda: get(s3, bucket, LAYOUT.state) is None, 120)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--size", default="tiny")
    args = ap.parse_args()
    import yaml

    home = Path(tempfile.mkdtemp(prefix="chronos-bench-spot-"))
    os.environ.update(CHRONOS_HOME=str(home), CHRONOS_HEARTBEAT_SECONDS="1", CHRONOS_NOTICE_SECONDS="1",
                      CHRONOS_SPOT_NOTICE_SECONDS="120")
    info = sandbox.start(("dev",))
    s3 = client("s3", info.target(OPERATORS["dev"]))  # reads records as a user would (IAM is enforced)
    bucket = info.bucket("dev")
    rows = []
    try:
        data = write_parquet(home / "data" / "train.parquet", synthetic_frame(n_items=24, length=160))
        doc = run_config(dataset=str(data), base=f"scratch:{args.size}", num_steps=args.steps, seed=3)
        doc["instance"] = {"types": ["g6.xlarge", "g5.xlarge"], "spot": True, "max_runtime_minutes": 60}
        cfg = home / "run.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        baseline = one_run(s3, bucket, cfg, home, None)
        for _ in range(args.runs):
            rows.append(one_run(s3, bucket, cfg, home, args.steps // 3))
    finally:
        sandbox.stop()
        shutil.rmtree(home, ignore_errors=True)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"uninterrupted": baseline}))
    for key in ("notice_to_checkpoint_s", "replacement_to_first_step_s"):
        print(f"{key}: median {statistics.median(r[key] for r in rows):.2f} s over {len(rows)} runs")
    print(f"final loss: uninterrupted {baseline['final_loss']:.4f}, resumed "
          f"{', '.join(format(r['final_loss'], '.4f') for r in rows)}; WQL uninterrupted {baseline['wql']:.4f}, resumed "
          f"{', '.join(format(r['wql'], '.4f') for r in rows)}")


if __name__ == "__main__":
    main()
