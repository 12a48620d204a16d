"""The EC2 user data: rendering (pure, checked, valid bash), and real boots of it on a machine
with no Python and no apt (tests/boot_fixtures.py): cache miss and save, cache hit, a refused
save, a GPU type without a GPU, the boot log before the agent, an agent that cannot start, an
environment that cannot be built and an agent that crashes on a group's machine, the dead-man
switch. Every end goes through EC2 before the power-off, which here stops a machine that is
still running (the worse reading, automation/sandbox/poweroff.py)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from automation.context import Target
from automation.cli.follow import RunLost, follow
from automation.cli.logs import stream
from automation.executors.local import LocalExecutor
from automation.runs.records import view
from automation.runs.runcheck import check_run
from automation.runs.verify import verify
from automation.sandbox.poweroff import replace_unhealthy
from automation.sandbox.control import instance_credentials
from automation.stacks.policies import instance_policy
from automation.sandbox.strictmoto import SANDBOX_ACCOUNT as ACCOUNT
from instance.boot.bootstrap import PYTHON_BUILD, render_bootstrap
from instance.protocol.aws import AwsTarget, client
from instance.protocol.ec2 import instances_by_tag
from instance.protocol.group import describe_group
from instance.protocol.layout import Layout, python_env_key
from instance.protocol.state import StateStore
from instance.protocol.transfer import MULTIPART_THRESHOLD
from tests.agent_fixtures import (ROOT, LaunchedRun, instance_role, instance_state, keys_under, launch, parquet_bytes,
                                  run_config, synthetic_frame, upload_dataset)
from tests.boot_fixtures import Imds, boot_env, bundle, group_machine, scratch_bin, timer_command
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
    """Both halves of it come before anything that can hang (a function, IMDS, S3): the timer that
    ends the machine through EC2 at max_runtime_minutes, the OS power-off after it."""
    cmds = _commands(render_bootstrap(**{**GOOD, "max_runtime_minutes": 45}))
    assert cmds[0] == "set -uo pipefail"
    first_call = next(i for i, c in enumerate(cmds) if "()" in c or "aws_cli" in c or "curl" in c)
    power_off = next(i for i, c in enumerate(cmds) if c.strip().startswith("shutdown -h +"))
    timer = next(i for i, c in enumerate(cmds) if "systemd-run" in c)
    assert power_off < timer < first_call
    assert cmds[power_off].strip() == "shutdown -h +$((MAX_RUNTIME_MINUTES + 5)) || true"
    assert "MAX_RUNTIME_MINUTES=45" in cmds and '--on-active="${MAX_RUNTIME_MINUTES}m"' in cmds[timer]


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
def bucket(deployed):
    """Deployed, not bare: `logs`, `follow` and `verify` read it as the operator, as on AWS."""
    return deployed.bucket


@pytest.fixture
def machine(s3, bucket, aws, tmp_path):
    """A launched run (lock, run.yaml, dataset, bundle) and the machine that will boot for it."""
    upload_dataset(s3, bucket, {"part-0.parquet": parquet_bytes(synthetic_frame())})
    run = launch(s3, bucket, aws, ENV, run_config(), run_id=RID)
    s3.put_object(Bucket=bucket, Key=run.layout.bundle(RID), Body=bundle(SITE))
    yield from scratch_machine(run, s3, bucket, aws, tmp_path)


def scratch_machine(run: LaunchedRun, s3, bucket: str, aws, tmp_path):
    """The scratch machine that boots as `run`'s instance: its IMDS, PATH, rendered user data."""
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


MAGIC = {"zst": b"\x28\xb5\x2f\xfd", "gz": b"\x1f\x8b"}  # the first bytes of a zstd / gzip stream


def env_key(fmt: str) -> str:
    """The cache key the scratch machine's environment.sh must compute for SITE."""
    return python_env_key(PYTHON_BUILD, platform.machine(), hashlib.sha256(SITE.encode()).hexdigest()[:16], fmt)


def head(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-3")["Body"].read()


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
    assert "by the environment's python" in boot_log  # the agent's transfer path, not the AWS CLI
    assert "bootstrap: agent exited with 0" in boot_log
    agent_log = text(s3, bucket, layout.agent_log(RID))
    assert "instance.agent: agent for " + RID in agent_log, agent_log[:500]
    assert not [line for line in agent_log.splitlines() if line.startswith("bootstrap: ")]  # two logs, never one
    (tarball,) = env_tarballs(s3, bucket)
    fmt = "zst" if shutil.which("zstd") else "gz"  # the scratch machine has zstd where this one has
    assert tarball == env_key(fmt) and head(s3, bucket, tarball).startswith(MAGIC[fmt])
    assert m.calls.read_text().splitlines() == ["-h +50", "-h now"]
    # `chronos-train logs` shows the boot, then the agent, each headed by its name.
    shown = "".join(stream(Target(ENV, False, REGION, bucket, aws.endpoint_url), RID, follow=False))  # the operator
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


# -- the environment cache: zstd where the machine has it, gzip where not, the key says which ------
@pytest.fixture
def env_machines(bucket, aws, tmp_path):
    """Machines that run environment.sh's prepare_environment alone, as the instance role, each
    with an empty disk, with or without zstd. Their build copies a small tree (an executable, a
    symlink, 9 MiB of noise) instead of running uv, and says so in its output. The tree's
    Python is this checkout's (what a built environment can run: the agent's code and its
    requirements), so the save goes through the agent's transfer path as on EC2; the tarball is
    larger than one part, so that path is a multipart upload, as the instance role."""
    instance_role(aws, ENV, bucket)
    ec2 = client("ec2", aws)
    instance_id = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                    InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    credentials = instance_credentials(aws, ENV, instance_id)
    built = tmp_path / "built"
    (built / "python" / "bin").mkdir(parents=True)
    (built / "python" / "bin" / "python3").write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" "$@"\n')
    (built / "python" / "bin" / "python3").chmod(0o755)
    (built / "venv" / "bin").mkdir(parents=True)
    (built / "venv" / "bin" / "python").symlink_to("../../python/bin/python3")
    (built / "venv" / "noise.bin").write_bytes(os.urandom(MULTIPART_THRESHOLD + 1024 * 1024))
    bundle_dir = tmp_path / "bundle"
    (bundle_dir / "instance").mkdir(parents=True)
    (bundle_dir / "instance" / "requirements.txt").write_text(SITE)

    def boot(name: str, zstd: bool, python_fails: bool = False) -> tuple[str, Path]:
        disk = tmp_path / name
        path = scratch_bin(disk / "bin", disk / "shutdown.calls", without=() if zstd else ("zstd",))
        broken = ' && echo "exit 1" > "$1/python/bin/python3"' if python_fails else ""  # runs, fails
        script = (f"set -uo pipefail\n. {ROOT}/instance/boot/environment.sh\n"
                  'aws_cli() { aws "$@"; }\n'
                  f'build_environment() {{ echo "build: copied"; mkdir -p "$1" && cp -a {built}/. "$1"/{broken}; }}\n'
                  f"BUCKET={bucket} PYTHON_BUILD={PYTHON_BUILD}\nprepare_environment {disk}/env\n")
        proc = subprocess.run(["bash", "-c", script], cwd=bundle_dir, capture_output=True, text=True, timeout=120,
                              env={"PATH": path, "HOME": str(disk), "AWS_ENDPOINT_URL": aws.endpoint_url,
                                   "AWS_DEFAULT_REGION": REGION, **credentials})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr, disk / "env"

    return SimpleNamespace(boot=boot, built=built)


def tree(folder: Path) -> dict[str, tuple]:
    """Every entry under folder (the bootstrap's marker aside): a link's target, a file's bytes
    and mode."""
    return {str(p.relative_to(folder)): (os.readlink(p),) if p.is_symlink() else
            (p.read_bytes(), p.stat().st_mode) if p.is_file() else ("dir",)
            for p in sorted(folder.rglob("*")) if p.name != ".chronos-env"}


needs_zstd = pytest.mark.skipif(not shutil.which("zstd"), reason="this machine has no zstd binary to lend")


@pytest.mark.parametrize("zstd", [pytest.param(True, marks=needs_zstd, id="zstd"), pytest.param(False, id="no zstd")])
def test_the_environment_is_saved_in_the_format_its_key_names_and_restored_whole(env_machines, s3, bucket, zstd):
    """A machine with zstd saves a zstd tarball under .tar.zst, one without saves gzip under
    .tar.gz (the key instance.protocol.layout computes); the next machine of the same kind
    restores it instead of building, links and modes intact."""
    fmt = "zst" if zstd else "gz"
    out, _ = env_machines.boot("first", zstd)
    assert "build: copied" in out and f"saved the environment as s3://{bucket}/{env_key(fmt)}" in out, out
    assert "by the environment's python" in out, out  # the agent's transfer path, not the AWS CLI
    assert env_tarballs(s3, bucket) == [env_key(fmt)]
    assert "-" in s3.head_object(Bucket=bucket, Key=env_key(fmt))["ETag"]  # a multipart upload's ETag
    assert head(s3, bucket, env_key(fmt)).startswith(MAGIC[fmt]), "the tarball is not in the format its key names"

    out, restored = env_machines.boot("second", zstd)
    assert "build: copied" not in out and f"environment restored from s3://{bucket}/{env_key(fmt)}" in out, out
    assert tree(restored) == tree(env_machines.built)


def test_an_environment_whose_python_cannot_upload_is_saved_by_the_aws_cli(env_machines, s3, bucket):
    """The agent's transfer path needs the environment's own Python; where that cannot run, the
    AWS CLI saves the tarball instead (the run goes on either way)."""
    out, _ = env_machines.boot("first", zstd=False, python_fails=True)
    assert f"saved the environment as s3://{bucket}/{env_key('gz')}" in out and "by aws s3 cp" in out, out
    assert "the environment's python could not save it (exit 1); saving it by aws s3 cp" in out, out
    assert env_tarballs(s3, bucket) == [env_key("gz")]


@needs_zstd
def test_machines_with_and_without_zstd_never_take_each_others_tarball(env_machines, s3, bucket):
    """A zstd tarball in the cache is not for a machine without zstd: that one misses, builds and
    saves its own gzip tarball beside it (gzip never sees zstd bytes); a machine with zstd still
    restores the zstd one."""
    env_machines.boot("with", zstd=True)
    out, _ = env_machines.boot("without", zstd=False)
    assert f"no cached environment at s3://{bucket}/{env_key('gz')}" in out and "build: copied" in out, out
    assert "not in gzip format" not in out and "zstd" not in out, out  # a miss leaves gzip an empty stream, no more
    assert sorted(env_tarballs(s3, bucket)) == sorted([env_key("zst"), env_key("gz")])
    assert head(s3, bucket, env_key("gz")).startswith(MAGIC["gz"])
    assert head(s3, bucket, env_key("zst")).startswith(MAGIC["zst"])

    out, restored = env_machines.boot("with-again", zstd=True)
    assert f"environment restored from s3://{bucket}/{env_key('zst')}" in out and "build: copied" not in out, out
    assert tree(restored) == tree(env_machines.built)


def test_the_cache_key_names_only_a_format_the_bootstrap_unpacks():
    with pytest.raises(ValueError, match="tarball format 'xz'"):
        python_env_key(PYTHON_BUILD, "x86_64", "0" * 16, "xz")


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
    assert m.calls.read_text().splitlines() == ["-h +50", "-h now"]


def test_an_agent_that_cannot_start_leaves_the_boot_log_and_ends_its_machine_through_ec2(machine, bucket):
    """Empty requirements: the venv builds but lacks boto3, so the agent cannot be imported; the
    boot log and the boot failure record say so, agent.log is never written, and the machine is
    terminated through EC2 before the power-off (which then finds nothing to stop)."""
    m = machine
    m.s3.put_object(Bucket=bucket, Key=m.run.layout.bundle(RID), Body=bundle(""))
    proc = boot(m, CHRONOS_EXPECT_GPU="no")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert m.calls.read_text().splitlines() == ["-h +50", "-h now"]
    assert instance_state(m.aws, m.run.instance_id) == "terminated"
    boot_log = text(m.s3, bucket, m.run.layout.bootstrap_log(RID))
    last = boot_log.rstrip().splitlines()[-1]
    assert last.startswith("bootstrap: the agent cannot start: ModuleNotFoundError: No module named"), boot_log[-2000:]
    failure = json.loads(text(m.s3, bucket, m.run.layout.boot_failure(RID)))
    assert failure["reason"] == "boot_failed" and f"bootstrap: {failure['message']}" == last
    assert failure["instance_id"] == m.run.instance_id
    assert not keys_under(m.s3, bucket, m.run.layout.agent_log(RID))


# -- a group's machine: every end through EC2, so nothing replaces it and nothing stays stopped ---
@pytest.fixture
def group_boot(s3, bucket, aws, tmp_path):
    """A launched run whose machine comes from its group of one (the run stack's shape), and the
    scratch machine booting as that group's instance."""
    upload_dataset(s3, bucket, {"part-0.parquet": parquet_bytes(synthetic_frame())})
    instance_role(aws, ENV, bucket)
    instance_id = group_machine(aws, ENV, RID)
    StateStore(s3, bucket, ENV).acquire(RID, instance_id=instance_id, executor="ec2", instance_type="g4dn.xlarge",
                                        spot=False, group=RID, attempt=0, max_machines=1)
    config = run_config()
    s3.put_object(Bucket=bucket, Key=Layout(ENV).run_config(RID), Body=yaml.safe_dump(config).encode())
    yield from scratch_machine(LaunchedRun(RID, ENV, bucket, instance_id, aws), s3, bucket, aws, tmp_path)


def machines_of_run(aws) -> dict[str, str]:
    """Every machine the run ever had (terminated ones included), by id: its state."""
    found = instances_by_tag(client("ec2", aws), {"RunId": RID},
                             states=("pending", "running", "shutting-down", "terminated", "stopping", "stopped"))
    return {i["InstanceId"]: i["State"]["Name"] for i in found}


def health_check(aws) -> list[str]:
    """What Auto Scaling does next on AWS: its health check over the group's members, as the
    service. A member that is not running is replaced while the group wants a machine."""
    from automation.sandbox.strictmoto import EC2_SERVICE

    service = AwsTarget(aws.region, aws.endpoint_url, EC2_SERVICE.credentials)
    autoscaling = client("autoscaling", service)
    group = describe_group(autoscaling, RID)
    return replace_unhealthy(autoscaling, client("ec2", service), group, set(machines_of_run(aws)))


def test_an_environment_that_cannot_be_built_ends_the_run_on_one_machine(group_boot, bucket, aws):
    """The first run's uncached environment build fails: the machine takes its group to 0,
    records why, terminates itself through EC2, and powers off last. Exactly one machine ever;
    the CLI sees the run failed / boot_failed within a poll; verify-cleanup --fix records it and
    releases the lock; nothing is left."""
    m = group_boot
    m.s3.put_object(Bucket=bucket, Key=m.run.layout.bundle(RID), Body=bundle("chronos-no-such-package==9.9\n"))
    proc = boot(m, CHRONOS_EXPECT_GPU="no")
    assert proc.returncode == 1, proc.stdout[-3000:]
    first = m.run.instance_id

    assert describe_group(client("autoscaling", aws), RID)["DesiredCapacity"] == 0
    assert health_check(aws) == []
    assert machines_of_run(aws) == {first: "terminated"}, "one machine, ended through EC2, never stopped"
    assert m.calls.read_text().splitlines() == ["-h +50", "-h now"]
    boot_log = text(m.s3, bucket, m.run.layout.bootstrap_log(RID))
    assert f"bootstrap: left group {RID} (desired capacity 0)" in boot_log
    assert boot_log.rstrip().splitlines()[-1] == "bootstrap: cannot restore or build the python environment"

    target = Target(ENV, True, REGION, bucket, aws.endpoint_url)  # the operator: the environment's keys
    executor = LocalExecutor(target.aws, ENV, bucket)
    with pytest.raises(RunLost) as lost:
        follow(target, executor, RID, on_update=lambda view: None, interval=0.01)
    assert str(lost.value).startswith(f"run {RID} failed (boot_failed): its machine {first} could not run the agent: "
                                      "cannot restore or build the python environment. Run `chronos-train "
                                      "verify-cleanup --fix`")
    shown = view(target, RID, check=lambda lease: check_run(target, executor, lease))
    assert (shown.lost, shown.reason, shown.error["class"]) == (True, "boot_failed", "boot_failed")

    found = verify(target, executor, do_fix=False)
    assert [(f.kind, f.reason) for f in found.findings] == [("stale_lock", "boot_failed")], found.findings
    fixed = verify(target, executor, do_fix=True)
    assert fixed.clean and target.state_store().read() is None
    record = json.loads(text(m.s3, bucket, m.run.layout.training_record(RID)))
    assert (record["final_status"], record["reason"]) == ("failed", "boot_failed")
    assert record["error"]["message"] == "cannot restore or build the python environment"
    assert verify(target, executor, do_fix=False).clean
    assert len(machines_of_run(aws)) == 1


def test_an_agent_that_crashes_ends_its_machine_and_its_group_through_ec2(group_boot, bucket, aws):
    """The agent SIGKILLed mid-run (an exit code it never gives): the bootstrap leaves the group,
    records agent_crashed, terminates its machine: no replacement, nothing stopped."""
    m = group_boot
    m.s3.put_object(Bucket=bucket, Key=m.run.layout.bundle(RID), Body=bundle(SITE))
    proc = subprocess.Popen(["bash", str(m.script)], env=m.env(CHRONOS_EXPECT_GPU="no"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def agent_pid():
            state = json.loads(text(m.s3, bucket, m.run.layout.state))
            return (state.get("agent") or {}).get("pid")
        pid = None
        deadline = time.monotonic() + 240
        while pid is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the agent never wrote its heartbeat"
            time.sleep(0.2)
            pid = agent_pid()
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:]
    assert describe_group(client("autoscaling", aws), RID)["DesiredCapacity"] == 0
    assert health_check(aws) == []
    assert machines_of_run(aws) == {m.run.instance_id: "terminated"}
    failure = json.loads(text(m.s3, bucket, m.run.layout.boot_failure(RID)))
    assert (failure["reason"], failure["message"]) == ("agent_crashed", "the agent exited with 137")


def test_the_dead_man_switch_ends_the_machine_through_ec2_then_powers_off(group_boot, bucket, aws):
    """The timer the bootstrap gives systemd, fired: out of the group, terminated through EC2,
    powered off last. Without it, the power-off alone would leave a stopped machine that its group
    replaces (shown first, as the sandbox plays it)."""
    m = group_boot
    m.s3.put_object(Bucket=bucket, Key=m.run.layout.bundle(RID), Body=b"not a tarball")
    boot(m)  # fails at once; what matters here is what it gave systemd-run
    timer = timer_command(m.calls)
    assert timer[:2] == ["/bin/bash", str(m.tmp / "root" / "user-data.sh")]
    assert timer[2:] == ["--end-machine", "the dead-man switch: max_runtime_minutes (45) is over"]
    args = (m.calls.parent / "systemd-run.calls").read_text().splitlines()
    assert "--on-active=45m" in args

    # A fresh group machine that only powers off: stopped, and its group replaces it.
    autoscaling = client("autoscaling", aws)
    autoscaling.update_auto_scaling_group(AutoScalingGroupName=RID, MinSize=0, DesiredCapacity=1)
    [second] = [i for i, state in machines_of_run(aws).items() if state == "running"]
    m.imds.instance_id = second
    subprocess.run(["shutdown", "-h", "now"], env=m.env(), check=True, timeout=60)
    assert machines_of_run(aws)[second] == "stopped"
    assert health_check(aws) == [second], "a stopped member is replaced while the group wants a machine"
    [third] = [i for i, state in machines_of_run(aws).items() if state == "running"]

    # The timer, on the group's machine: no replacement, nothing stopped.
    m.imds.instance_id = third
    m.calls.write_text("")
    as_third = {**m.env(), **instance_credentials(aws, ENV, third)}  # its role session, as IMDS gives it
    fired = subprocess.run(timer, env=as_third, capture_output=True, text=True, timeout=120)
    assert fired.returncode == 0, fired.stdout + fired.stderr
    assert m.calls.read_text().splitlines() == ["-h now"]
    assert machines_of_run(aws)[third] == "terminated"
    assert describe_group(autoscaling, RID)["DesiredCapacity"] == 0 and health_check(aws) == []
    boot_log = text(m.s3, bucket, m.run.layout.bootstrap_log(RID))
    assert boot_log.rstrip().splitlines()[-1] == "bootstrap: the dead-man switch: max_runtime_minutes (45) is over"
