"""Run the real `chronos-train` as a subprocess against the test session's moto server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AGENT_HOOKS = "tests.agent_hooks:EnvFaults"


def cli_env(moto_endpoint: str, home: Path, **extra: str) -> dict:
    # No AWS credentials: `--local` acts as the sandbox's operator whatever the shell holds.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOS_", "AWS_"))}
    env.update(
        CHRONOS_HOME=str(home),
        CHRONOS_SANDBOX_URL=moto_endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        COLUMNS="120",
        # The agents it starts take CHRONOS_FAULT / CHRONOS_PAUSE through their test seam.
        CHRONOS_AGENT_HOOKS=AGENT_HOOKS,
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def run_cli(env: dict, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "automation.cli", *args],
        env=env, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
    )


def start_cli(env: dict, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "automation.cli", *args],
        env=env, cwd=cwd or REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


# -- reliability matrices (issue 6): bounded waits and what a run leaves behind ------------------
def wait_until(predicate, timeout: float, every: float = 0.2, what: str = "the condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def launched_run_id(result: subprocess.CompletedProcess) -> str:
    """The run id a successful `launch` printed on its first stdout line."""
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = result.stdout.splitlines()[0].strip()
    assert run_id.startswith("run-"), result.stdout
    return run_id


def agent_pid(home: Path, run_id: str) -> int:
    """The local agent's pid, from the file the local executor writes beside its work dir."""
    return int((home / "work" / run_id / "agent.pid").read_text())


def pid_running(pid: int) -> bool:
    """True while `pid` exists and is neither a zombie nor dead (stopped counts as running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def live_state(s3, bucket: str, env: str = "dev") -> dict | None:
    """The lock's body, or None when no run holds it."""
    import json

    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=f"{env}/system-state.json")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def bucket_keys(s3, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


def instances_by_state(ec2) -> dict[str, str]:
    """Every instance the EC2 endpoint knows, id -> state name."""
    resp = ec2.describe_instances()
    return {i["InstanceId"]: i["State"]["Name"] for r in resp["Reservations"] for i in r["Instances"]}


RUN_PHASES = ("initialization", "data_sync", "training", "forecast", "results_sync", "cleanup")


def phase_params(phases, default) -> list:
    """pytest params, one a phase; those not in `default` only run with `make reliability`."""
    import pytest

    return [pytest.param(p, id=p, marks=() if p in default else (pytest.mark.reliability,)) for p in phases]


def reached_phase(s3, bucket: str, phase: str):
    """A predicate: the agent is in `phase` (training: past its first reported step)."""
    def reached():
        state = live_state(s3, bucket) or {}
        if state.get("phase") != phase or not state.get("agent"):
            return False
        return phase != "training" or (state.get("progress") or {}).get("step", 0) >= 1
    return reached


def launch_held(env: dict, s3, bucket: str, config: str, phase: str, pause_s: int = 300,
                cwd: Path | None = None) -> str:
    """`launch` a --local run and wait until its agent is in `phase`: held there by CHRONOS_PAUSE,
    or, for training, simply in the middle of a long fit (give it a config with many steps)."""
    held = dict(env) if phase == "training" else {**env, "CHRONOS_PAUSE": f"{phase}:{pause_s}"}
    run_id = launched_run_id(run_cli(held, "--local", "launch", config, cwd=cwd))
    wait_until(reached_phase(s3, bucket, phase), timeout=180, what=f"run {run_id} to reach {phase}")
    return run_id
