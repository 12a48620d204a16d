"""The EC2 user data: rendering (pure, checked, valid bash), and real boots of it on a machine
with no Python and no apt (tests/boot_fixtures.py): cache miss and save, cache hit, a refused
save, a GPU type without a GPU, the boot log before the agent, an agent that cannot start."""
from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
import time
from types import SimpleNamespace

import pytest

from automation.context import Target
from automation.cli.logs import stream
from automation.sandbox.control import instance_credentials
from automation.stacks.policies import instance_policy
from automation.sandbox.strictmoto import SANDBOX_ACCOUNT as ACCOUNT
from instance.boot.bootstrap import PYTHON_BUILD, render_bootstrap
from instance.protocol.layout import python_env_key
from tests.agent_fixtures import (ROOT, instance_role, keys_under, launch, parquet_bytes, run_config, synthetic_frame,
                                  upload_dataset)
from tests.boot_fixtures import Imds, boot_env, bundle, scratch_bin
from tests.conftest import ENV, REGION

RID = "run-20261128-203700-1a2b"
GOOD = dict(env="dev", bucket="chronos-training-dev-123456789012-us-east-1", run_id=RID, region="us-east-1", max_runtime_minutes=240)


def _commands(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_render_fills_every_value_and_is_valid_bash(tmp_path):
    script = render_bootstrap(**GOOD)
    assert "@@" not in script and script.startswith("#!/bin/bash")
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    for value in (GOOD["bucket"], RID, "us-east-1"):
        assert value in script
    assert "RUN_ENV=dev " in script


def test_dead_man_switch_comes_first():
    cmds = _commands(render_bootstrap(**{**GOOD, "max_runtime_minutes": 45}))
    assert cmds[0] == "set -uo pipefail"
    assert cmds[1].startswith("shutdown -h +45")


def test_script_fetches_bundle_env_then_starts_the_agent():
    script = render_bootstrap(**GOOD)
    order = [script.index(s) for s in ("bundle.tar.gz", "prepare_environment", "-m instance.agent")]
    assert order == sorted(order)
    assert len(script.encode()) < 8 * 1024  # half the user-data limit: the environment logic ships in the bundle


def test_user_data_needs_no_apt_and_no_system_python():
    script = render_bootstrap(**GOOD) + (ROOT / "instance/boot/environment.sh").read_text()
    commands = _commands(script)
    assert not [c for c in commands if "apt-get" in c or "apt " in c or "yum" in c]
    # A command that starts with python: the only Python that runs is $ROOT/env's, by full path.
    assert not [c for c in commands if re.search(r"(^|[;&|(`]|\$\()\s*python3?(\.\d+)?\b", c.strip())], "runs a system python"


@pytest.mark.parametrize(
    "bad",
    [
        {"env": "qa"},
        {"run_id": "run-1; rm -rf /"},
        {"bucket": "Bad_Bucket;reboot"},
        {"region": "us-east-1$(id)"},
        {"max_runtime_minutes": 0},
        {"max_runtime_minutes": True},
        {"max_runtime_minutes": "60"},
    ],
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        render_bootstrap(**{**GOOD, **bad})


# -- the bootstrap, run for real on a machine with no Python --------------------------------------
SITE = "chronos-test-site==1.0\n"  # tests/boot_fixtures.py: the agent's packages, lent


@pytest.fixture
def machine(s3, bucket, aws, tmp_path):
    """A launched run (lock, run.yaml, dataset, bundle) and the machine that will boot for it."""
    upload_dataset(s3, bucket, {"part-0.parquet": parquet_bytes(synthetic_frame())})
    run = launch(s3, bucket, aws, ENV, run_config(), run_id=RID)
    s3.put_object(Bucket=bucket, Key=run.layout.bundle(RID), Body=bundle(SITE))
    imds = Imds(run.instance_id)
    calls = tmp_path / "shutdown.calls"
    path = scratch_bin(tmp_path / "bin", calls)
    script = tmp_path / "user-data.sh"
    script.write_text(render_bootstrap(env=ENV, bucket=bucket, run_id=RID, region=REGION, max_runtime_minutes=45))
    yield SimpleNamespace(run=run, imds=imds, calls=calls, path=path, script=script, tmp=tmp_path, s3=s3, aws=aws,
                          env=lambda **extra: boot_env(path, tmp_path, aws.endpoint_url,
                                                       instance_credentials(aws, ENV, run.instance_id), imds, **extra))
    imds.close()


def boot(m, timeout: float = 300, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(m.script)], env=m.env(**extra), capture_output=True, text=True, timeout=timeout)


def text(s3, bucket: str, key: str) -> str:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def env_tarballs(s3, bucket: str) -> list[str]:
    return keys_under(s3, bucket, "cached-datasets/python-env/")


def test_boot_from_nothing_builds_and_saves_the_environment_and_the_next_machine_restores_it(machine, bucket, s3, aws):
    """First machine, cache miss: the boot log is in S3 before the agent starts; uv installs the
    standalone CPython and the venv, the tarball is saved, the agent runs as the instance role
    (instance id from IMDS) and the run completes. Second machine: the cache is restored."""
    m = machine
    layout = m.run.layout
    proc = subprocess.Popen(["bash", str(m.script)], env=m.env(CHRONOS_EXPECT_GPU="no"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not keys_under(s3, bucket, layout.bootstrap_log(RID)):
        assert time.monotonic() < deadline and proc.poll() is None, "no bootstrap.log within a minute"
        time.sleep(0.1)
    assert not json.loads(text(s3, bucket, layout.state)).get("agent"), "the agent started before the boot log showed"
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]

    record = json.loads(text(s3, bucket, layout.training_record(RID)))
    assert record["final_status"] == "completed", record.get("error")
    assert record["host"]["instance_id"] == m.run.instance_id and record["host"]["executor"] == "ec2"
    cleanup = json.loads(text(s3, bucket, layout.cleanup_status(RID)))
    assert [s for s in cleanup["steps"] if s["result"] == "error"] == [], cleanup["steps"]
    boot_log = text(s3, bucket, layout.bootstrap_log(RID))
    assert "building it with uv" in boot_log and "saved the environment" in boot_log
    assert "bootstrap: agent exited with 0" in boot_log
    agent_log = text(s3, bucket, layout.agent_log(RID))
    assert "instance.agent: agent for " + RID in agent_log, agent_log[:500]
    assert not [line for line in agent_log.splitlines() if line.startswith("bootstrap: ")]  # two logs, never one
    (tarball,) = env_tarballs(s3, bucket)
    assert tarball == python_env_key(PYTHON_BUILD, platform.machine(), hashlib.sha256(SITE.encode()).hexdigest()[:16])
    assert m.calls.read_text().splitlines() == ["-h +45", "-h now"]
    # `chronos-train logs` shows the boot, then the agent, each headed by its name.
    shown = "".join(stream(Target(ENV, False, REGION, bucket, aws.endpoint_url), RID, follow=False))
    assert shown.startswith("==> bootstrap.log <==\nbootstrap: " + RID)
    assert shown.index("\n==> agent.log <==\n") > shown.index("building it with uv")

    shutil.rmtree(m.tmp / "root")  # a new machine: nothing on disk
    second_id = "run-20261128-203800-3c4d"
    run = launch(s3, bucket, aws, ENV, run_config(), run_id=second_id)
    s3.put_object(Bucket=bucket, Key=run.layout.bundle(second_id), Body=bundle(SITE))
    m.imds.instance_id = run.instance_id
    m.script.write_text(render_bootstrap(env=ENV, bucket=bucket, run_id=second_id, region=REGION, max_runtime_minutes=45))
    second = subprocess.run(["bash", str(m.script)], capture_output=True, text=True, timeout=300,
                            env=boot_env(m.path, m.tmp, aws.endpoint_url, instance_credentials(aws, ENV, run.instance_id),
                                         m.imds, CHRONOS_EXPECT_GPU="no"))
    assert second.returncode == 0, second.stdout[-3000:]
    boot_log = text(s3, bucket, run.layout.bootstrap_log(second_id))
    assert "environment restored from s3://" in boot_log and "building it with uv" not in boot_log
    assert json.loads(text(s3, bucket, run.layout.training_record(second_id)))["final_status"] == "completed"


def test_a_refused_environment_upload_costs_only_the_next_build(machine, bucket, aws):
    """An instance policy without SaveEnvironmentCache: the save is refused, logged, and the run completes."""
    m = machine
    policy = instance_policy(f"arn:aws:s3:::{bucket}", ENV, REGION, ACCOUNT)
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "SaveEnvironmentCache"]
    instance_role(aws, ENV, bucket, policy)
    proc = boot(m, CHRONOS_EXPECT_GPU="no")
    assert proc.returncode == 0, proc.stdout[-3000:]
    boot_log = text(m.s3, bucket, m.run.layout.bootstrap_log(RID))
    assert "could not save the environment" in boot_log and "AccessDenied" in boot_log
    assert env_tarballs(m.s3, bucket) == []
    assert json.loads(text(m.s3, bucket, m.run.layout.training_record(RID)))["final_status"] == "completed"


def test_a_gpu_type_without_a_working_gpu_fails_at_once(machine, bucket):
    """g4dn.xlarge on this CPU-only machine: the run ends failed / gpu_unavailable in initialization."""
    m = machine
    started = time.monotonic()
    proc = boot(m)
    assert proc.returncode == 0, proc.stdout[-3000:]  # the agent cleaned up (exit 4), the machine powers off
    record = json.loads(text(m.s3, bucket, m.run.layout.training_record(RID)))
    assert (record["final_status"], record["reason"]) == ("failed", "gpu_unavailable")
    assert record["error"]["phase"] == "initialization" and "nvidia-smi" in record["error"]["message"]
    assert "training" not in record["phases"]
    assert time.monotonic() - started < 120
    assert m.calls.read_text().splitlines() == ["-h +45", "-h now"]


def test_an_agent_that_cannot_start_leaves_the_boot_log_and_powers_off(machine, bucket):
    """Empty requirements: the venv builds but lacks boto3, so the agent dies on import; the boot
    log says so, agent.log is never written, and the machine powers off."""
    m = machine
    m.s3.put_object(Bucket=bucket, Key=m.run.layout.bundle(RID), Body=bundle(""))
    proc = boot(m, CHRONOS_EXPECT_GPU="no")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert m.calls.read_text().splitlines() == ["-h +45", "-h now"]
    boot_log = text(m.s3, bucket, m.run.layout.bootstrap_log(RID))
    assert "bootstrap: the agent exited with 1" in boot_log and "ModuleNotFoundError" in boot_log
    assert not keys_under(m.s3, bucket, m.run.layout.agent_log(RID))
