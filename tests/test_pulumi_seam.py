"""The real seam (PulumiStackOps and the Automation API) against a stand-in Pulumi CLI
(tests/fake_pulumi.py) whose backend and machines live in the moto server: what the CLI is given
(environment, work dir), what comes back (engine events), and Ctrl-C in the middle of `up`.

The shell here holds a wrong PULUMI_BACKEND_URL, PULUMI_CONFIG_PASSPHRASE and
PULUMI_CONFIG_PASSPHRASE_FILE (docs/deploy.md suggests exporting them for the persistent stack):
every call must see the run stacks' own values instead.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from automation.executors.base import ProvisionError
from automation.executors.ec2 import Ec2Executor
from automation.executors.run_stacks import PulumiStackOps, StackCommandFailed
from automation.sandbox import motoserver
from automation.sandbox.control import REGION, SandboxInfo, seed
from automation.sandbox.strictmoto import OPERATORS
from automation.stacks.run import RunStackConfig
from instance.protocol.artifacts import get_json
from instance.protocol.aws import client
from instance.protocol.ec2 import instance_state, instances_by_tag
from instance.protocol.layout import Layout, bucket_name
from tests.agent_fixtures import DATA_PREFIX, parquet_bytes, run_config, synthetic_frame
from tests.cli_helpers import REPO, cli_env, wait_until

RUN_ID = "run-20261128-203700-1a2b"
ENV = "dev"
BUCKET = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
WRONG_SHELL = {"PULUMI_BACKEND_URL": "s3://someone-elses-state-bucket", "PULUMI_CONFIG_PASSPHRASE": "persistent-secret",
               "PULUMI_CONFIG_PASSPHRASE_FILE": "/nonexistent/passphrase.txt"}


def install_fake_pulumi(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "pulumi"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fake_pulumi.py"}" "$@"\n')
    wrapper.chmod(0o755)
    return folder


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def seeded(aws):
    """What the backend needs: the bucket (a test module may override this fixture)."""
    return seed(SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), ENV)


@pytest.fixture
def fake(aws, seeded, tmp_path, monkeypatch):
    """The fake CLI first on PATH, the shell's Pulumi variables wrong, temp files in a folder of
    our own (to see what is left behind), moto as the fake's AWS."""
    bin_dir = install_fake_pulumi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "pulumi-calls.jsonl"
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(log))
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint_url)
    for name, value in WRONG_SHELL.items():
        monkeypatch.setenv(name, value)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return log, scratch


def stack_config() -> RunStackConfig:
    return RunStackConfig(run_id=RUN_ID, env=ENV, region=REGION, instance_types=("g4dn.xlarge",), spot=False,
                          subnet_ids=("subnet-0aaa", "subnet-0bbb"), security_group_id="sg-0bbb",
                          instance_profile="chronos-dev-access-instance", ami_ssm_parameter="/x/ami-id",
                          user_data="#!/bin/bash\n")


def test_every_call_gets_our_backend_passphrase_and_its_own_work_dir(aws, fake):
    log, scratch = fake
    ops = PulumiStackOps(BUCKET, ENV, REGION, target=aws)
    outputs = ops.up(RUN_ID, stack_config())
    assert outputs["group"] == RUN_ID
    [machine] = [i["InstanceId"] for i in instances_by_tag(client("ec2", aws), {"RunId": RUN_ID})]
    assert ops.list_stacks() == [RUN_ID], "the stack is in the bucket's backend, where list_stacks looks"
    ops.refresh(RUN_ID)
    ops.destroy(RUN_ID)
    ops.remove_stack(RUN_ID)
    assert ops.list_stacks() == []
    assert instance_state(client("ec2", aws), machine) == "terminated"
    seen = calls(log)
    assert {c["argv"][1] for c in seen} >= {"stack", "up", "refresh", "destroy"}
    for call in seen:
        assert call["env"]["PULUMI_BACKEND_URL"] == f"s3://{BUCKET}/dev/pulumi?region=us-east-1", call["argv"]
        assert call["env"]["PULUMI_CONFIG_PASSPHRASE"] == "" and call["env"]["PULUMI_CONFIG_PASSPHRASE_FILE"] == ""
        assert call["env"]["PULUMI_AUTOMATION_API"] == "true"
    work_dirs = {c["cwd"] for c in seen}
    assert len(work_dirs) == 4, "one work dir per Automation call"
    assert not [d for d in work_dirs if Path(d).exists()]
    assert list(scratch.iterdir()) == [], "no automation-* (or other) folder left in the temp dir"


def test_a_failed_up_carries_the_engines_error_diagnostics(aws, fake, monkeypatch):
    monkeypatch.setenv("FAKE_PULUMI_UP", "fail:InsufficientInstanceCapacity")
    ops = PulumiStackOps(BUCKET, ENV, REGION, target=aws)
    with pytest.raises(StackCommandFailed) as err:
        ops.up(RUN_ID, stack_config())
    failure = err.value
    assert failure.aws_error_codes == ["InsufficientInstanceCapacity"]
    assert "We currently do not have sufficient g4dn.xlarge capacity" in str(failure) and "\n" not in str(failure)
    assert [d.severity for d in failure.diagnostics] == ["error", "error"]


@pytest.mark.reliability  # the classification itself is tested through a fake seam in test_ec2_executor.py
def test_a_capacity_error_from_up_through_the_real_seam_cleans_up(aws, fake, monkeypatch):
    from tests.test_ec2_executor import INFRA, Renderer, request

    monkeypatch.setenv("FAKE_PULUMI_UP", "fail:InsufficientInstanceCapacity")
    ex = Ec2Executor(ENV, BUCKET, REGION, target=aws, render_user_data=Renderer())
    with pytest.raises(ProvisionError) as err:
        ex.provision(request(infra=INFRA.__class__(**{**INFRA.__dict__, "bucket": BUCKET})))
    assert err.value.kind == "capacity" and "us-east-1a, us-east-1b" in str(err.value)
    ups = [c for c in calls(fake[0]) if c["argv"][1] == "up"]
    assert len(ups) == 1, "one up: the group spans the zones"
    assert ex.leftover_stacks() == []


def test_preview_runs_in_a_throwaway_backend_and_writes_nothing_to_the_bucket(aws, fake, monkeypatch):
    log, scratch = fake
    monkeypatch.setenv("FAKE_PULUMI_INPUTS", json.dumps({"instanceType": "g4dn.xlarge",
                                                         "availabilityZone": "us-east-1a"}))
    s3 = client("s3", aws)
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    preview = PulumiStackOps(BUCKET, ENV, REGION, target=aws).preview(stack_config())
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert after == before
    assert ("create", "aws:ec2/instance:Instance", RUN_ID) in [(s.op, s.type, s.name) for s in preview.steps]
    assert preview.changes == {"create": 3}
    backends = {c["env"]["PULUMI_BACKEND_URL"] for c in calls(log)}
    assert len(backends) == 1 and next(iter(backends)).startswith("file://")
    assert not Path(next(iter(backends)).removeprefix("file://")).exists()
    assert list(scratch.iterdir()) == []


# -- Ctrl-C during `up`, through the real CLI ------------------------------------------------------
@pytest.fixture
def aws_target_env(aws, tmp_path):
    """The real AWS path of the CLI pointed at moto (AWS_ENDPOINT_URL, CHRONOS_BUCKET), with
    infrastructure that is not the sandbox's, a dataset in the bucket and the fake Pulumi CLI."""
    info = SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None)
    record = seed(info, ENV)
    s3 = client("s3", aws)
    doc = json.loads(record.to_json())
    doc["extra"] = {}
    s3.put_object(Bucket=BUCKET, Key=Layout(ENV).infra, Body=json.dumps(doc).encode())
    s3.put_object(Bucket=BUCKET, Key=DATA_PREFIX + "train.parquet", Body=parquet_bytes(synthetic_frame(4, 96)))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config()))
    bin_dir = install_fake_pulumi(tmp_path / "bin")
    # The AWS path as a person holding the operator policy (docs/deploy.md) runs it.
    env = cli_env(aws.endpoint_url, tmp_path / "home", AWS_ENDPOINT_URL=aws.endpoint_url, CHRONOS_BUCKET=BUCKET,
                  PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_PULUMI_LOG=str(tmp_path / "calls.jsonl"),
                  **OPERATORS[ENV].env(), **WRONG_SHELL)
    env.pop("CHRONOS_SANDBOX_URL")
    return env, config, s3


def test_ctrl_c_during_up_cancels_destroys_removes_releases_and_exits_130(aws, aws_target_env, tmp_path):
    env, config, s3 = aws_target_env
    mark = tmp_path / "up-started"
    env = {**env, "FAKE_PULUMI_UP": "hang", "FAKE_PULUMI_MARK": str(mark)}
    # Its own process group, as a terminal's foreground job: Ctrl-C goes to the whole group.
    proc = subprocess.Popen([sys.executable, "-m", "automation.cli", "launch", str(config)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # A terminal's job hears Ctrl-C even when these tests run as a background
                            # job (whose shell set SIGINT to ignored, which a child would inherit).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(mark.exists, timeout=120, what="the fake `pulumi up` to start its instance")
        instance = mark.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: run" in err and "Traceback" not in err
    run_id = err.split("interrupted: run ", 1)[1].split()[0]

    seen = calls(tmp_path / "calls.jsonl")
    ups = [c for c in seen if c["argv"][1] == "up"]
    assert max(c["sigints"] for c in ups) == 1, "the CLI got exactly one SIGINT: its graceful cancel"
    after_up = [c["argv"][1] for c in seen[seen.index(ups[0]) + 1:] if c["argv"][1] != "up"]
    assert "destroy" in after_up and "stack" in after_up
    assert instance_state(client("ec2", aws), instance) == "terminated"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="dev/pulumi/").get("Contents", [])}
    assert not [k for k in keys if "/stacks/" in k or "/locks/" in k], keys
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=Layout(ENV).state), "the lock is released"
    record = get_json(s3, BUCKET, Layout(ENV).training_record(run_id))
    assert (record["final_status"], record["reason"], record["error"]["phase"]) == ("failed", "interrupted", "launch")
