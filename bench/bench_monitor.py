"""Reading commands against one AWS CLI call, on a real local run: what a user waits for.

    .venv/bin/python bench/bench_monitor.py [--repeat 9] [--config examples/quickstart.yaml] [--follow-seconds 20]

A fresh sandbox (its own CHRONOS_HOME), then, all through the CLI as a person would:
- live: `chronos-train --local launch CONFIG` starts a real run (the agent trains as a local
  process; the lock names its machine, so monitor's liveness check asks EC2 as it does on AWS).
  While it trains: `monitor --json` and `verify-cleanup --json`, each paired with `aws s3api
  head-object` of the lock; then `monitor RUN --follow --json` for a while: its CPU while it
  polls (every 0.5 s on --local), in % of one core, start-up left out.
- ended: the run is stopped with `kill --wait`; `monitor --json`, `runs --json`, `logs RUN_ID` and
  `verify-cleanup --json`, paired with `aws s3api head-object` of the run's record.
- no run: `monitor --json` in an env nobody launched in, paired with the same head-object of its
  (absent) lock, the call monitor makes first.

Both sides are whole processes started cold, as the env's operator (the variables `chronos-train
sandbox env` prints), alternating (ours, aws, aws, ours, ...) so drift on a shared machine hits
both alike; medians of wall time, and each side's CPU (user + system, from the kernel's child
rusage). Ours is `python -m automation.cli` (what the `chronos-train` script runs) from this
checkout; the AWS CLI is looked up on PATH (it is no project dependency), a pyenv shim resolved
to the script behind it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from instance.protocol.layout import Layout  # noqa: E402

# What the `chronos-train` script runs, from this checkout (so a copy of another commit measures
# that commit's code with the same virtual environment).
CLI = [sys.executable, "-m", "automation.cli"]
POLL_SECONDS = 0.5  # a --local follower's poll (automation/cli/follow.py)


def run(cmd: list[str], env: dict, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=kw.pop("cwd", REPO), **kw)
    if check and out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-1500:]}")
    return out


def timed(cmd: list[str], env: dict, ok: tuple[int, ...]) -> tuple[float, float]:
    """(wall s, CPU s) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in ok:
        sys.exit(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-1500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def paired(name: str, ours: list[str], theirs: list[str], env: dict, repeat: int,
           ok: tuple[int, ...] = (0,), aws_ok: tuple[int, ...] = (0,)) -> dict:
    a, b = [], []
    for i in range(repeat):
        order = ((ours, a, ok), (theirs, b, aws_ok)) if i % 2 == 0 else ((theirs, b, aws_ok), (ours, a, ok))
        for cmd, into, codes in order:
            into.append(timed(cmd, env, codes))
    row = {"command": name, "n": repeat,
           "ours_wall": statistics.median(w for w, _ in a), "ours_cpu": statistics.median(c for _, c in a),
           "aws_wall": statistics.median(w for w, _ in b), "aws_cpu": statistics.median(c for _, c in b)}
    row["ratio"] = row["ours_wall"] / row["aws_wall"]
    print(f"{name:34s} {row['ours_wall']*1000:6.0f} ms (cpu {row['ours_cpu']*1000:4.0f})   aws "
          f"{row['aws_wall']*1000:6.0f} ms (cpu {row['aws_cpu']*1000:4.0f})   {row['ratio']:.2f}x", flush=True)
    return row


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def follow_cpu(run_id: str, env: dict, seconds: float) -> dict:
    """`monitor RUN --follow --json`'s CPU while it polls: sampled from /proc after start-up (the
    first poll included in the warm-up), over `seconds` of polling."""
    proc = subprocess.Popen([*CLI, "--local", "monitor", run_id, "--follow", "--json", "--no-download"], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)
        if proc.poll() is not None:
            sys.exit(f"monitor --follow ended early ({proc.returncode}); the run ended during the bench")
        c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(proc.pid), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    cpu, wall = c1 - c0, t1 - t0
    row = {"command": "monitor --follow (live run)", "seconds": wall, "cpu_s": cpu, "core_pct": 100 * cpu / wall}
    print(f"monitor --follow (polls every {POLL_SECONDS} s): {row['core_pct']:.1f} % of one core over {wall:.0f} s",
          flush=True)
    return row


def sandbox_env(env: dict, name: str = "dev") -> dict:
    """The operator's variables, parsed from `chronos-train sandbox env` as a shell would eval them."""
    out = run([*CLI, "--env", name, "sandbox", "env"], env).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            found[key] = shlex.split(value)[0] if value else ""
    return found


def wait_training(run_id: str, env: dict, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run([*CLI, "--local", "monitor", run_id, "--json"], env, check=False)
        view = json.loads(out.stdout) if out.returncode == 0 else {}
        if view.get("status") == "training" and view.get("progress", {}).get("step"):
            return view
        if view and not view.get("active"):
            sys.exit(f"run {run_id} ended before it trained: {view.get('final_status')}")
        time.sleep(2)
    sys.exit(f"run {run_id} did not reach training in {timeout:.0f} s")


def aws_cli() -> str | None:
    """The AWS CLI's own script. pyenv puts a shim on PATH (a bash script that runs `pyenv exec`,
    about 0.1 s a call that is pyenv's, not the CLI's): that would flatter the ratio, so it is
    resolved to the script it runs."""
    found = shutil.which("aws")
    if found and f"{os.sep}shims{os.sep}" in found and shutil.which("pyenv"):
        real = subprocess.run(["pyenv", "which", "aws"], capture_output=True, text=True).stdout.strip()
        found = real or found
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--config", default=str(REPO / "examples/quickstart.yaml"),
                    help="The run to launch; it must train longer than the live measurements take.")
    ap.add_argument("--follow-seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true", help="Print the rows as JSON at the end.")
    args = ap.parse_args()
    aws = aws_cli()
    if not aws:
        sys.exit("the AWS CLI (`aws`) is not on PATH; install awscli to compare against it")
    home = Path(tempfile.mkdtemp(prefix="chronos-bench-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHRONOS_"))}
    base["CHRONOS_HOME"] = str(home)
    rows, run_id = [], None
    try:
        run([*CLI, "sandbox", "start"], base)
        status = json.loads(run([*CLI, "sandbox", "status", "--json"], base).stdout)
        endpoint, bucket = status["endpoint_url"], status["bucket"]
        env = {**base, **sandbox_env(base)}
        head = [aws, "--endpoint-url", endpoint, "s3api", "head-object", "--bucket", bucket]

        version = run([aws, "--version"], env).stdout.strip() or run([aws, "--version"], env).stderr.strip()
        print(f"against {aws} ({version})", flush=True)
        run_id = run([*CLI, "--local", "launch", args.config], env).stdout.splitlines()[0].strip()
        view = wait_training(run_id, env)
        if view.get("machine") != "alive" or not view.get("instance_id"):
            sys.exit(f"the live run's lock names no live machine: {view}")
        print(f"live run {run_id} on {view['instance_id']}, step {view['progress'].get('step')}; "
              f"paired runs: {args.repeat}", flush=True)
        state_key = Layout("dev").state
        rows.append(paired("monitor --json (live run)", [*CLI, "--local", "monitor", "--json"],
                           [*head, "--key", state_key], env, args.repeat))
        rows.append(paired("verify-cleanup --json (live run)", [*CLI, "--local", "verify-cleanup", "--json"],
                           [*head, "--key", state_key], env, args.repeat))
        rows.append(follow_cpu(run_id, env, args.follow_seconds))
        after = json.loads(run([*CLI, "--local", "monitor", run_id, "--json"], env).stdout)
        if not after.get("active"):
            sys.exit("the run ended during the live measurements; give it more steps (--config)")

        run([*CLI, "--local", "kill", run_id, "--wait"], env, timeout=600)
        record_key = Layout("dev").training_record(run_id)
        rows.append(paired("monitor --json (ended run)", [*CLI, "--local", "monitor", "--json"],
                           [*head, "--key", record_key], env, args.repeat))
        rows.append(paired("runs --json", [*CLI, "--local", "runs", "--json"],
                           [*head, "--key", record_key], env, args.repeat))
        rows.append(paired("logs RUN_ID", [*CLI, "--local", "logs", run_id],
                           [*head, "--key", record_key], env, args.repeat))
        rows.append(paired("verify-cleanup --json (ended run)", [*CLI, "--local", "verify-cleanup", "--json"],
                           [*head, "--key", record_key], env, args.repeat))

        # No run: an env nobody launched in (seeded on its first command, outside the timing).
        other = {**base, **sandbox_env(base, "stage")}
        run([*CLI, "--local", "--env", "stage", "runs", "--json"], other)
        stage = json.loads(run([*CLI, "--env", "stage", "sandbox", "status", "--json"], base).stdout)["bucket"]
        rows.append(paired("monitor --json (no run)", [*CLI, "--local", "--env", "stage", "monitor", "--json"],
                           [*head[:-1], stage, "--key", Layout("stage").state], other, args.repeat,
                           ok=(2,), aws_ok=(254, 255)))
    finally:
        if run_id:  # a bench that failed midway leaves no agent training on
            subprocess.run([*CLI, "--local", "kill", run_id, "--force"], env=env, cwd=REPO, capture_output=True)
        subprocess.run([*CLI, "sandbox", "stop"], env=base, cwd=REPO, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
