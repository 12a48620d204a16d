"""`monitor` answers at once: in a sandbox the CLI started itself (as a user's), a reading command
builds one botocore session, one client per service it calls and nothing else, parses each
service model once and imports no training, data, Pulumi or terminal-drawing package; the
sandbox's readiness costs no request. (Timings: bench/bench_monitor.py, docs/benchmarks.md.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from automation.executors.localgroup import AGENT_PID
from automation.sandbox.control import SANDBOX_AMI_PARAMETER
from automation.sandbox.strictmoto import DEPLOYER
from instance.protocol.artifacts import put_json
from instance.protocol.aws import AwsTarget, client
from instance.protocol.ec2 import run_tags
from instance.protocol.layout import Layout
from instance.protocol.state import StateStore

REPO = Path(__file__).resolve().parent.parent
ENDED = "run-20261128-080000-0a0a"
LIVE = "run-20261128-090000-0b0b"
HEAVY = ("torch", "chronos", "transformers", "pandas", "pyarrow", "numpy", "matplotlib", "pulumi", "pulumi_aws",
         "rich", "pydantic", "moto")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A sandbox of its own, started by the CLI as a user's is (no CHRONOS_SANDBOX_URL)."""
    home = tmp_path_factory.mktemp("light") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOS_", "AWS_"))}
    env.update(CHRONOS_HOME=str(home), PYTHONPATH=str(REPO))
    started = subprocess.run([sys.executable, "-m", "automation.cli", "sandbox", "start"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    info = json.loads(subprocess.run([sys.executable, "-m", "automation.cli", "sandbox", "status", "--json"], env=env,
                                     cwd=REPO, capture_output=True, text=True, timeout=60).stdout)
    yield env, home, info
    subprocess.run([sys.executable, "-m", "automation.cli", "sandbox", "stop"], env=env, cwd=REPO,
                   capture_output=True, timeout=60)


def counted(env: dict, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"count-{len(list(tmp_path.glob('count-*')))}.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_count_clients.py"), *args],
                          env={**env, "CHRONOS_COUNT_OUT": str(out)}, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    return proc, json.loads(out.read_text())


def assert_light(seen: dict, services: set[str]) -> None:
    heavy = sorted(m for m in seen["modules"] if m.split(".")[0] in HEAVY)
    assert not heavy, f"imported {heavy[:8]}"
    assert seen["sessions"] == 1, f"{seen['sessions']} botocore sessions"
    assert seen["clients"] == dict.fromkeys(services, 1), f"clients built: {seen['clients']}"
    assert all(n == 1 for n in seen["models"].values()), f"models parsed: {seen['models']}"


def test_monitor_builds_only_what_it_calls(sandbox, tmp_path):
    env, home, info = sandbox
    deployer = AwsTarget(info["region"], info["endpoint_url"], DEPLOYER.credentials)
    s3, ec2 = client("s3", deployer), client("ec2", deployer)
    bucket, layout = info["bucket"], Layout("dev")

    # An ended run: its record, no lock. One GET of the lock, a listing, the record: S3 only.
    put_json(s3, bucket, layout.training_record(ENDED), {"run_id": ENDED, "final_status": "completed",
                                                         "started_at": "2026-11-28T08:00:00Z"})
    proc, seen = counted(env, tmp_path, "--local", "monitor", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["final_status"] == "completed"
    assert_light(seen, {"s3"})

    # A live local run: the lock names its machine, which EC2 calls running and whose agent
    # process lives. Liveness asks EC2 (one client more), and nothing else is built.
    ami = client("ssm", deployer).get_parameter(Name=SANDBOX_AMI_PARAMETER)["Parameter"]["Value"]
    instance = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
                                 TagSpecifications=[{"ResourceType": "instance",
                                                     "Tags": run_tags(LIVE, "dev", "local")}])["Instances"][0]
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", LIVE])
    try:
        (home / "work" / LIVE).mkdir(parents=True)
        (home / "work" / LIVE / AGENT_PID).write_text(str(agent.pid))
        StateStore(s3, bucket, "dev").acquire(LIVE, executor="local", instance_id=instance["InstanceId"],
                                              instance_type="g4dn.xlarge")
        proc, seen = counted(env, tmp_path, "--local", "monitor", "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        shown = json.loads(proc.stdout)
        assert (shown["run_id"], shown["machine"], shown["lost"]) == (LIVE, "alive", False), shown
        assert_light(seen, {"s3", "ec2"})
    finally:
        agent.kill()
        agent.wait()

    # Its agent dies: the same single look sees it (EC2's record is ended, as on AWS).
    proc = subprocess.run([sys.executable, "-m", "automation.cli", "--local", "monitor", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    shown = json.loads(proc.stdout)
    assert (shown["machine"], shown["lost"]) == ("gone", True), shown

    # No run at all (another env, seeded by `sandbox start`): S3 only, and exit 2.
    proc, seen = counted(env, tmp_path, "--local", "--env", "stage", "monitor", "--json")
    assert proc.returncode == 2 and "no run has been launched in env stage" in proc.stderr, proc.stderr[-2000:]
    assert_light(seen, {"s3"})


def test_a_sandbox_whose_server_died_is_started_again_by_the_next_command(sandbox):
    """Readiness is the record and a process check: a dead server is seen without a request, and
    the next --local command starts and seeds a new one."""
    env, home, info = sandbox
    record = json.loads((home / "sandbox" / "sandbox.json").read_text())
    assert set(record["seeded"]) == {"dev", "stage", "prod"}
    os.kill(record["pid"], 9)
    proc = subprocess.run([sys.executable, "-m", "automation.cli", "--local", "runs", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], proc.stderr[-2000:]
    again = json.loads((home / "sandbox" / "sandbox.json").read_text())
    assert again["pid"] != record["pid"] and again["seeded"] == ["dev"]
