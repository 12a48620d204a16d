"""The sandbox enforces IAM with the policies the persistent stack deploys, and it bites: the
agent (instance role) and the CLI (operator policy) get what a run needs and are refused the
rest, unknown credentials get nothing, and a deliberately narrowed instance policy fails a run
with the refusal recorded. What moto cannot evaluate (conditions) is read in
tests/test_persistent_stack.py instead (docs/reliability.md)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from automation.sandbox.control import SandboxInfo, instance_role_name, seed
from automation.sandbox.strictmoto import DEPLOYER, OPERATORS, SANDBOX_ACCOUNT
from automation.stacks.policies import instance_policy
from instance.protocol.aws import AwsTarget, client, error_code
from instance.protocol.layout import bucket_name
from tests.cli_helpers import cli_env, run_cli
from tests.conftest import as_the_machine
from tests.test_cli_flows import local_config

BUCKET = bucket_name("dev", SANDBOX_ACCOUNT, "us-east-1")
RUN_KEY = "dev/run-20261129-101500-ab12/models/config.json"


@pytest.fixture
def sandbox(aws):
    info = SandboxInfo(aws.endpoint_url, aws.region, SANDBOX_ACCOUNT, None)
    record = seed(info, "dev")
    seed(info, "stage")
    return info, record


def _as(info: SandboxInfo, credentials) -> AwsTarget:
    return AwsTarget(info.region, info.endpoint_url, credentials)


def _agent(info: SandboxInfo, instance_id: str) -> AwsTarget:
    return as_the_machine(info, instance_id, "dev")


def _code(call) -> str:
    try:
        call()
    except Exception as exc:
        return error_code(exc)
    return "ok"


def _put(target: AwsTarget, bucket: str, key: str) -> str:
    return _code(lambda: client("s3", target).put_object(Bucket=bucket, Key=key, Body=b"x"))


def _instance(info: SandboxInfo, record) -> str:
    ec2 = client("ec2", info.target(OPERATORS["dev"]))
    return ec2.run_instances(ImageId="ami-0c0ffee00c0ffee00", MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
                             SubnetId=next(iter(record.subnets.values())))["Instances"][0]["InstanceId"]


@pytest.mark.parametrize("key", ["dev/system-state.json", "dev/logs/run-20261129-101500-ab12/agent.log", RUN_KEY,
                                 "cached-datasets/python-env/chronos-env-x.tar.gz"])
def test_the_agent_writes_what_a_run_writes(sandbox, key):
    info, record = sandbox
    assert _put(_agent(info, _instance(info, record)), BUCKET, key) == "ok"


@pytest.mark.parametrize("bucket,key", [
    (BUCKET, "dev/infra.json"),
    (BUCKET, "dev/pulumi/.pulumi/stacks/chronos-run/run-20261129-101500-ab12.json"),
    (BUCKET, "stage/system-state.json"),
    (BUCKET, "cached-datasets/2026/11/part-0.parquet"),
    (bucket_name("stage", SANDBOX_ACCOUNT, "us-east-1"), "stage/system-state.json"),
])
def test_the_agent_is_refused_launch_inputs_datasets_other_envs_and_buckets(sandbox, bucket, key):
    info, record = sandbox
    assert _put(_agent(info, _instance(info, record)), bucket, key) == "AccessDenied"


def test_the_agent_ends_its_own_machine_and_no_other(sandbox):
    info, record = sandbox
    own, other = _instance(info, record), _instance(info, record)
    ec2 = client("ec2", _agent(info, own))
    assert _code(lambda: ec2.terminate_instances(InstanceIds=[other])) == "UnauthorizedOperation"
    assert _code(lambda: ec2.describe_instances()) == "UnauthorizedOperation"  # self-termination needs no describe
    assert ec2.terminate_instances(InstanceIds=[own])["TerminatingInstances"][0]["CurrentState"]["Name"] == "shutting-down"


def test_a_missing_key_reads_not_found_for_both(sandbox):
    info, record = sandbox
    for target in (_agent(info, _instance(info, record)), info.target(OPERATORS["dev"])):
        s3 = client("s3", target)
        assert _code(lambda: s3.get_object(Bucket=BUCKET, Key="dev/system-state.json")) == "NoSuchKey"
        assert _code(lambda: s3.head_object(Bucket=BUCKET, Key="dev/logs/run-20261129-101500-ab12/training.json")) \
            == "404"


def test_a_missing_key_is_403_to_a_caller_who_may_not_list_the_bucket(sandbox, aws):
    """As S3 does (GetObject/HeadObject, "Permissions"): without s3:ListBucket that holds for a
    GET (which carries no s3:prefix), a missing key reads 403 AccessDenied. The instance policy
    before this rule (listing limited by s3:prefix) fails here: every first run's HEAD of its
    own training.json would have been refused on AWS."""
    info, record = sandbox
    previous = instance_policy(f"arn:aws:s3:::{BUCKET}", "dev", aws.region, SANDBOX_ACCOUNT)
    listing = next(st for st in previous["Statement"] if st["Sid"] == "ListBucket")
    listing["Condition"] = {"StringLike": {"s3:prefix": ["cached-datasets/*", "dev/*"]}}
    iam = client("iam", info.target(DEPLOYER))
    iam.put_role_policy(RoleName=instance_role_name("dev"), PolicyName="instance", PolicyDocument=json.dumps(previous))
    try:
        s3 = client("s3", _agent(info, _instance(info, record)))
        key = "dev/logs/run-20261129-101500-ab12/training.json"
        assert _code(lambda: s3.head_object(Bucket=BUCKET, Key=key)) == "403"
        assert _code(lambda: s3.get_object(Bucket=BUCKET, Key=key)) == "AccessDenied"
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")  # an existing key reads as before
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"{}"
    finally:
        seed(info, "dev")  # the deployed policy again


def test_verify_cleanup_fix_as_the_operator_aborts_every_incomplete_upload(sandbox, aws, tmp_path):
    """Parts of an interrupted upload bill until the lifecycle rule removes them: a machine's save
    of the environment cache, a dataset upload, a run's model. --fix, as the operator, ends all."""
    info, record = sandbox
    agent = client("s3", _agent(info, _instance(info, record)))
    agent.create_multipart_upload(Bucket=BUCKET, Key="cached-datasets/python-env/chronos-env-x.tar.gz")
    agent.create_multipart_upload(Bucket=BUCKET, Key=RUN_KEY)
    client("s3", info.target(OPERATORS["dev"])).create_multipart_upload(
        Bucket=BUCKET, Key="cached-datasets/2026/11/sales-1a2b3c4d/part-0.parquet")
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    found = run_cli(env, "--local", "verify-cleanup", "--json")
    assert found.returncode == 6 and len([f for f in json.loads(found.stdout)["findings"]
                                          if f["kind"] == "multipart_upload"]) == 3, found.stdout
    fixed = run_cli(env, "--local", "verify-cleanup", "--fix", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert client("s3", info.target(DEPLOYER)).list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


# The sandbox's own code (it seeds as the deployer) and the player of EC2 and Auto Scaling (AWS's
# own services, granted "*") are not callers a policy scopes; everything else is.
NOT_CALLERS = ("automation/sandbox/", "automation/executors/localgroup.py")
SAMPLE = {"InstanceId.1": ["i-0abc"], "ResourceId.1": ["i-0abc"], "VolumeId": ["vol-0abc"],
          "AutoScalingGroupName": ["run-20261129-101500-ab12"], "InstanceProfileName": ["profile"],
          "Name": ["/chronos/x"], "KeyId": ["1234abcd"], "LaunchTemplateName": ["run-20261129-101500-ab12"],
          "ServiceCode": ["ec2"], "QuotaCode": ["L-DB2E81BA"]}


def project_calls() -> dict[tuple[str, str], set[str]]:
    """(service, operation) of every boto3 call the project's own code makes, by a look at its
    source: client methods and paginators, matched against botocore's service models."""
    import re
    from pathlib import Path

    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    ops: dict[str, list[tuple[str, str]]] = {}
    for service in ("ec2", "autoscaling", "iam", "ssm", "sts", "kms", "service-quotas"):
        for op in session.get_service_model(service).operation_names:
            ops.setdefault(xform_name(op), []).append((service, op))
    root = Path(__file__).resolve().parents[1]
    found: dict[tuple[str, str], set[str]] = {}
    for path in [*root.joinpath("automation").rglob("*.py"), *root.joinpath("instance").rglob("*.py")]:
        where = path.relative_to(root).as_posix()
        if where.startswith(NOT_CALLERS):
            continue
        text = path.read_text()
        for name in re.findall(r"\.([a-z_0-9]+)\(", text) + re.findall(r'get_paginator\("([a-z_0-9]+)"\)', text):
            for call in ops.get(name, []):
                found.setdefault(call, set()).add(where)
    return found


def test_every_call_the_project_makes_is_authorised_against_its_real_resource():
    """Stock moto checks every non-S3 call against "*", so a statement scoped to a resource never
    matched (the operator's `volume/*` could not delete a volume). The sandbox maps each call to
    the ARN AWS authorises; a new call with no mapping fails here."""
    from automation.sandbox.strictmoto import UNSCOPED, glob_to_regex, resource_of

    calls = project_calls()
    assert ("ec2", "DeleteVolume") in calls and ("autoscaling", "UpdateAutoScalingGroup") in calls
    unmapped = []
    for (service, op), where in sorted(calls.items()):
        if any(s == service and re.match(glob_to_regex(p), op) for s, p in UNSCOPED):
            continue
        if resource_of(service, op, SAMPLE, "us-east-1", SANDBOX_ACCOUNT) == ["*"]:
            unmapped.append(f"{service}:{op} ({', '.join(sorted(where))})")
    assert not unmapped, f"calls the sandbox authorises against '*' although AWS scopes them: {unmapped}"


def test_verify_cleanup_fix_as_the_operator_deletes_an_orphan_volume(sandbox, aws, tmp_path):
    info, record = sandbox
    ec2 = client("ec2", info.target(DEPLOYER))
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "Project", "Value": "Chronos-Training"},
                                            {"Key": "RunId", "Value": "run-20261129-101500-ab12"}]}])["VolumeId"]
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    assert run_cli(env, "--local", "verify-cleanup").returncode == 6
    fixed = run_cli(env, "--local", "verify-cleanup", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume]}])["Volumes"] == []


def test_a_refusal_names_the_action_that_was_refused(sandbox, aws, tmp_path):
    """An operator whose policy lacks ec2:DeleteVolume: --fix says exactly that, not a guess
    about the bucket."""
    info, record = sandbox
    from automation.sandbox.control import put_operator_policy
    from automation.stacks.policies import operator_policy

    deployer = info.target(DEPLOYER)
    policy = operator_policy(f"arn:aws:s3:::{BUCKET}", "dev", info.region, SANDBOX_ACCOUNT, record.vpc_id,
                             f"arn:aws:iam::{SANDBOX_ACCOUNT}:role/{instance_role_name('dev')}", record.instance_profile_arn,
                             record.ami_ssm_parameter)
    for statement in policy["Statement"]:
        if statement["Sid"] == "ManageProjectMachines":
            statement["Action"].remove("ec2:DeleteVolume")
    put_operator_policy(deployer, "dev", policy)
    try:
        client("ec2", deployer).create_volume(AvailabilityZone="us-east-1a", Size=1, TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "Project", "Value": "Chronos-Training"}]}])
        fixed = run_cli(cli_env(aws.endpoint_url, tmp_path / "home"), "--local", "verify-cleanup", "--fix")
        assert fixed.returncode == 2
        assert fixed.stderr.strip().startswith("error: AWS refused ec2:DeleteVolume to these credentials "
                                               "(UnauthorizedOperation)"), fixed.stderr
        assert "bucket" not in fixed.stderr
    finally:
        seed(info, "dev")


@pytest.mark.parametrize("statement,may", [
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b"}, True),
    ({"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]}, True),
    ({"Effect": "Allow", "Action": "S3:listbucket", "Resource": "arn:aws:s3:::b"}, True),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b/*"}, False),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::other"}, False),
    ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b"}, False),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
      "Condition": {"StringLike": {"s3:prefix": ["dev/*"]}}}, False),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
      "Condition": {"StringLikeIfExists": {"s3:prefix": ["dev/*"]}}}, True),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
      "Condition": {"StringNotLike": {"s3:prefix": ["secret/*"]}}}, True),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
      "Condition": {"Null": {"s3:prefix": "true"}}}, True),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
      "Condition": {"ForAnyValue:StringLike": {"s3:prefix": ["dev/*"]}}}, False),
])
def test_who_may_list_the_bucket_for_a_get(statement, may):
    from automation.sandbox.strictmoto import may_list_bucket

    assert may_list_bucket([{"Statement": [statement]}], "arn:aws:s3:::b") is may


def test_an_unconditional_deny_of_listing_wins():
    from automation.sandbox.strictmoto import may_list_bucket

    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b"}
    assert not may_list_bucket([{"Statement": [allow]}, {"Statement": deny}], "arn:aws:s3:::b")


@pytest.mark.parametrize("bucket,key", [
    (BUCKET, "dev/infra.json"),
    (BUCKET, "cached-datasets/python-env/chronos-env-x.tar.gz"),
    (BUCKET, "stage/system-state.json"),
    (bucket_name("stage", SANDBOX_ACCOUNT, "us-east-1"), "stage/system-state.json"),
])
def test_the_operator_is_refused_what_it_does_not_need(sandbox, bucket, key):
    info, _ = sandbox
    assert _put(info.target(OPERATORS["dev"]), bucket, key) == "AccessDenied"


def test_the_operator_cannot_take_the_machines_identity_or_read_other_parameters(sandbox):
    info, record = sandbox
    operator = info.target(OPERATORS["dev"])
    role = f"arn:aws:iam::{SANDBOX_ACCOUNT}:role/{instance_role_name('dev')}"
    assert _code(lambda: client("sts", operator).assume_role(RoleArn=role, RoleSessionName="i-0123456789abcdef0")) \
        == "AccessDenied"
    assert _code(lambda: client("iam", operator).list_roles()) == "AccessDenied"
    ssm = client("ssm", operator)
    assert ssm.get_parameter(Name=record.ami_ssm_parameter)["Parameter"]["Value"].startswith("ami-")
    client("ssm", info.target(DEPLOYER)).put_parameter(Name="/prod/db-password", Value="s3cret", Type="String")
    # moto answers this JSON API's refusal in XML, which botocore reads as a bare 403.
    assert _code(lambda: ssm.get_parameter(Name="/prod/db-password")) in ("AccessDeniedException", "403")


def test_unknown_credentials_are_refused(sandbox):
    info, _ = sandbox
    stranger = _as(info, ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None))
    assert _code(lambda: client("s3", stranger).list_objects_v2(Bucket=BUCKET)) == "InvalidAccessKeyId"
    assert _code(lambda: client("ec2", stranger).describe_instances()) == "AuthFailure"


def test_sandbox_env_points_boto3_at_the_sandbox_as_the_operator(aws, tmp_path):
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    assert run_cli(env, "--local", "sandbox", "start").returncode == 0
    printed = run_cli(env, "--local", "sandbox", "env")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == "unset AWS_SESSION_TOKEN AWS_PROFILE"
    exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines[1:])
    status = json.loads(run_cli(env, "--local", "sandbox", "status", "--json").stdout)
    assert {k: status[k] for k in exported} == exported  # the same values, for scripts
    probe = ("import boto3, sys; s3 = boto3.client('s3'); b = sys.argv[1]; "
             "print(len(s3.list_objects_v2(Bucket=b).get('Contents', [])));"
             "s3.put_object(Bucket=b, Key='dev/infra.json', Body=b'x')")
    shell = {k: v for k, v in env.items() if not k.startswith("AWS_")} | exported
    result = subprocess.run([sys.executable, "-c", probe, BUCKET], env=shell, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() and int(result.stdout) >= 1  # it lists the bucket...
    assert "AccessDenied" in result.stderr  # ...and may not rewrite the stack's record


@pytest.mark.slow
def test_a_narrowed_instance_policy_fails_the_run_with_the_refusal_recorded(aws, tmp_path):
    """Without the logs/* write, the agent's first record is refused: the run fails at once and
    releases the lock, but its records and log cannot land. The follower closes the record
    (failed, no_final_record) and the refusal is in the agent's output, which the local executor
    keeps (as EC2 keeps a machine's console output); nothing is left running."""
    env = cli_env(aws.endpoint_url, tmp_path / "home", CHRONOS_HEARTBEAT_SECONDS="1")
    info = SandboxInfo(aws.endpoint_url, aws.region, SANDBOX_ACCOUNT, None)
    seed(info, "dev")
    narrowed = instance_policy(f"arn:aws:s3:::{BUCKET}", "dev", aws.region, SANDBOX_ACCOUNT)
    for statement in narrowed["Statement"]:
        if statement["Sid"] == "ReadWriteRuns":
            statement["Resource"] = [r for r in statement["Resource"] if not r.endswith("/logs/*")]
    client("iam", info.target(DEPLOYER)).put_role_policy(
        RoleName=instance_role_name("dev"), PolicyName="instance", PolicyDocument=json.dumps(narrowed))

    result = run_cli(env, "--local", "launch", local_config(tmp_path), "--follow", cwd=tmp_path, timeout=300)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    run_id = result.stdout.splitlines()[0]
    s3 = client("s3", aws)
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=f"dev/logs/{run_id}/training.json")["Body"].read())
    assert (record["final_status"], record["reason"], record["recorded_by"]) == ("failed", "no_final_record", "cli")
    output = s3.get_object(Bucket=BUCKET, Key=f"dev/logs/{run_id}/agent.stdout")["Body"].read().decode()
    assert "AccessDenied" in output and "phase initialization failed" in output
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0
