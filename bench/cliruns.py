"""The real CLI run by a bench as a person runs it, timed (and measured where memory matters).

- `launch_follow`: `chronos-train --local launch CONFIG --follow --no-download` in `home`: the run
  id and the wall time; a run that fails ends the bench with its stderr (bench_orchestration.py,
  bench_sweep.py).
- `record`: a finished run's training.json, read as whoever `s3` acts for.
- `peak_run`: any command's wall time and peak RSS (bench_report.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "chronos-train")

# A child's peak RSS as the kernel counts it includes what its parent held when it forked, so the
# measured process is started by a tiny launcher, not by the (large) bench process.
_LAUNCHER = ("import os, subprocess, sys, json, time; t = time.perf_counter(); "
             "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); _, status, usage = os.wait4(p.pid, 0); "
             "print(json.dumps([os.waitstatus_to_exitcode(status), time.perf_counter() - t, usage.ru_maxrss]))")


def launch_follow(config: Path, home: Path) -> tuple[str, float]:
    """(run id, seconds from the command's start to its end)."""
    t0 = time.perf_counter()
    out = subprocess.run([CLI, "--local", "launch", str(config), "--follow", "--no-download"],
                         capture_output=True, text=True, cwd=home)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"run failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout.splitlines()[0], wall


def record(s3, bucket: str, env: str, run_id: str) -> dict:
    from instance.protocol.layout import Layout

    return json.loads(s3.get_object(Bucket=bucket, Key=Layout(env).training_record(run_id))["Body"].read())


def peak_run(argv: list[str], cwd: Path | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of `argv`, its stdout dropped; one that fails ends the bench."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True, cwd=cwd)
    code, wall, peak = json.loads(out.stdout)
    if code != 0:
        sys.exit(f"{' '.join(argv[:4])} ... failed ({code}): {out.stderr[-2000:]}")
    return wall, peak
