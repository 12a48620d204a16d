"""`chronos-train doctor` and `launch --dry-run` through the real CLI.

Under --local against the sandbox; on the AWS path against moto (AWS_ENDPOINT_URL through a
FaultProxy, CHRONOS_BUCKET). moto plays STS, S3, EC2, IAM and SSM, but no EC2 service quota:
the proxy answers Service Quotas' GetServiceQuota itself, with the response AWS documents
(`aws service-quotas get-service-quota`), so the quota check meets real-looking data.
The Pulumi CLI is the stand-in of tests/fake_pulumi.py.
"""
from __future__ import annotations

import json
import os

import pytest
import yaml

from automation.sandbox import motoserver
from automation.sandbox.control import (REGION, SANDBOX_AMI_PARAMETER, SandboxInfo, instance_role_name,
                                       put_operator_policy, seed)
from automation.sandbox.strictmoto import OPERATORS
from automation.stacks.persistent_config import PersistentConfig, lifecycle_rules
from automation.stacks.policies import operator_policy
from instance.protocol.aws import client
from instance.protocol.layout import Layout, bucket_name
from tests.agent_fixtures import DATA_PREFIX, parquet_bytes, run_config, synthetic_frame
from tests.cli_helpers import cli_env, run_cli
from tests.faultproxy import FaultProxy
from tests.policy_eval import allowed
from tests.test_pulumi_seam import calls, install_fake_pulumi

ENV = "dev"
BUCKET = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
QUOTA_TARGET = "ServiceQuotasV20190624.GetServiceQuota"
QUOTA_NAMES = {"L-DB2E81BA": "Running On-Demand G and VT instances", "L-3819A6DF": "All G and VT Spot Instance Requests",
               "L-417A185B": "Running On-Demand P instances", "L-7212CCBC": "All P Spot Instance Requests"}


def quota_response(value: float):
    """GetServiceQuota's answer, shaped as AWS documents it."""
    def respond(body: dict):
        code = body["QuotaCode"]
        return 200, {"Quota": {
            "ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{REGION}:{motoserver.SANDBOX_ACCOUNT}:ec2/{code}",
            "QuotaCode": code, "QuotaName": QUOTA_NAMES[code], "Value": value, "Unit": "None", "Adjustable": True,
            "GlobalQuota": False, "UsageMetric": {
                "MetricNamespace": "AWS/Usage", "MetricName": "ResourceCount",
                "MetricDimensions": {"Class": "G/OnDemand", "Resource": "vCPU", "Service": "EC2", "Type": "Resource"},
                "MetricStatisticRecommendation": "Maximum"}}}
    return respond


def deployed_bucket(s3) -> None:
    """The bucket settings `pulumi up` applies (storage.py): SSE-S3 and the lifecycle rules."""
    s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    rules = []
    for rule in lifecycle_rules(PersistentConfig(environment=ENV, region=REGION)):
        out = {"ID": rule["id"], "Status": rule["status"], "Filter": {"Prefix": rule["filter"].get("prefix", "")}}
        if "expiration" in rule:
            out["Expiration"] = {"Days": rule["expiration"]["days"]}
        if "transitions" in rule:
            out["Transitions"] = [{"Days": t["days"], "StorageClass": t["storage_class"]} for t in rule["transitions"]]
        if "abort_incomplete_multipart_upload" in rule:
            out["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": rule["abort_incomplete_multipart_upload"]["days_after_initiation"]}
        rules.append(out)
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": rules})


def write_config(tmp_path, **instance) -> str:
    path = tmp_path / "run.yaml"
    doc = run_config()
    doc["instance"].update(instance)
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def bucket_keys(s3) -> set[str]:
    return {o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in p.get("Contents", [])}


@pytest.fixture
def sandbox(aws):
    seed(SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), ENV)
    s3 = client("s3", aws)
    s3.put_object(Bucket=BUCKET, Key=DATA_PREFIX + "train.parquet", Body=parquet_bytes(synthetic_frame(4, 96)))
    return s3


@pytest.fixture
def on_aws(aws, sandbox, tmp_path):
    """The AWS path of the CLI against moto: not the sandbox's infra, a deployed-looking bucket, a
    quota of 8 vCPUs, the fake Pulumi CLI on PATH. Yields (env, proxy, s3)."""
    record = json.loads(sandbox.get_object(Bucket=BUCKET, Key=Layout(ENV).infra)["Body"].read())
    sandbox.put_object(Bucket=BUCKET, Key=Layout(ENV).infra, Body=json.dumps({**record, "extra": {}}).encode())
    deployed_bucket(sandbox)
    bin_dir = install_fake_pulumi(tmp_path / "bin")
    with FaultProxy(aws.endpoint_url) as proxy:
        proxy.answer(QUOTA_TARGET, quota_response(8))
        # As a person holding the operator policy: doctor must need nothing more (docs/deploy.md).
        env = cli_env(aws.endpoint_url, tmp_path / "home", AWS_ENDPOINT_URL=proxy.url, CHRONOS_BUCKET=BUCKET,
                      **OPERATORS[ENV].env(),
                      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_PULUMI_LOG=str(tmp_path / "calls.jsonl"))
        env.pop("CHRONOS_SANDBOX_URL")
        yield env, proxy, sandbox


def attached_operator_policy(aws) -> dict:
    """The policy document the sandbox's operator holds (what seed attached)."""
    iam = client("iam", aws)
    [attached] = iam.list_attached_user_policies(UserName=OPERATORS[ENV].user)["AttachedPolicies"]
    version = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"]
    return json.loads(document) if isinstance(document, str) else document


def checks_of(result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


# -- doctor ---------------------------------------------------------------------------------------
def test_doctor_under_local_runs_what_the_sandbox_can_answer_and_says_why_not_the_rest(aws, sandbox, tmp_path):
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    result = run_cli(env, "--local", "doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = checks_of(result)
    for name in ("credentials", "region", "infrastructure", "subnets", "security group", "instance profile", "AMI"):
        assert checks[name]["status"] == "pass", checks[name]
    assert "ami-" in checks["AMI"]["detail"] and "us-east-1a, us-east-1b" in checks["subnets"]["detail"]
    reasons = {"Pulumi CLI": "needs no Pulumi CLI", "vCPU quota": "knows no EC2 service quotas",
               "bucket encryption": "not deployed by `pulumi up`", "bucket lifecycle": "not deployed by `pulumi up`"}
    for name, why in reasons.items():
        assert checks[name]["status"] == "skip" and why in checks[name]["detail"], checks[name]
    human = run_cli(env, "--local", "doctor")
    assert human.returncode == 0 and human.stdout.strip().endswith("ready to launch")
    assert len(human.stdout.splitlines()) == len(checks) + 1, "one line a check"


def test_doctor_says_what_a_customer_managed_ebs_key_must_grant_auto_scaling(aws, sandbox, tmp_path):
    """The root volume is encrypted with the account's default EBS key; a customer managed one
    must let Auto Scaling's service-linked role use it, or every group launch fails. doctor reads
    the key and its policy as the operator (the sandbox enforces the operator policy)."""
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    assert checks_of(run_cli(env, "--local", "doctor", "--json"))["EBS default key"]["status"] == "pass"
    kms, ec2 = client("kms", aws), client("ec2", aws)  # the account's owner chooses a key of their own
    key = kms.create_key(Description="team key")["KeyMetadata"]
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=key["Arn"])
    result = run_cli(env, "--local", "doctor", "--json")
    assert result.returncode == 2
    check = checks_of(result)["EBS default key"]
    role = f"arn:aws:iam::{motoserver.SANDBOX_ACCOUNT}:role/aws-service-role/autoscaling.amazonaws.com/" \
           "AWSServiceRoleForAutoScaling"
    assert check["status"] == "fail" and key["KeyId"] in check["detail"], check
    assert role in check["fix"] and "kms:CreateGrant" in check["fix"], check
    statement = {"Effect": "Allow", "Principal": {"AWS": role}, "Resource": "*",
                 "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey",
                            "kms:CreateGrant"]}
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default",
                       Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
    assert checks_of(run_cli(env, "--local", "doctor", "--json"))["EBS default key"]["status"] == "pass"


def test_doctor_on_a_ready_account_passes_every_check(on_aws, aws, tmp_path):
    env, proxy, _ = on_aws
    result = run_cli(env, "doctor", "--config", write_config(tmp_path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = checks_of(result)
    assert {c["status"] for c in checks.values()} == {"pass"}, checks
    assert "\"Running On-Demand G and VT instances\" (L-DB2E81BA) is 8 vCPUs; g4dn.xlarge needs 4" in \
        checks["vCPU quota"]["detail"]
    assert checks["Pulumi CLI"]["detail"].startswith("v3.220.0")
    assert "AES256" in checks["bucket encryption"]["detail"] and "14 days" in checks["bucket lifecycle"]["detail"]
    # moto plays no Service Quotas, so the proxy answers it before any IAM check: the call was
    # the operator's, and the operator policy (evaluated as IAM would) allows exactly it.
    assert proxy.answered_for == [(QUOTA_TARGET, OPERATORS[ENV].access_key_id)]
    policy = attached_operator_policy(aws)
    quota = f"arn:aws:servicequotas:{REGION}:{motoserver.SANDBOX_ACCOUNT}:ec2/L-DB2E81BA"
    assert allowed(policy, "servicequotas:GetServiceQuota", quota)
    assert not allowed(policy, "servicequotas:GetServiceQuota", quota.replace(":ec2/", ":sagemaker/"))


def test_a_zero_quota_is_the_first_launch_failure_doctor_names(on_aws, tmp_path):
    env, proxy, _ = on_aws
    proxy.answer(QUOTA_TARGET, quota_response(0))
    result = run_cli(env, "doctor")
    assert result.returncode == 2, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if "vCPU quota" in line)
    assert line.startswith("fail") and "is 0 vCPUs in us-east-1; g4dn.2xlarge needs 8" in line
    assert "--quota-code L-DB2E81BA --desired-value 8" in line
    assert result.stdout.strip().endswith("1 check(s) failed; fix them, then run doctor again")


@pytest.mark.parametrize("instance,code", [
    pytest.param({"spot": True}, "L-3819A6DF", id="G-spot"),
    pytest.param({"type": "p3.2xlarge"}, "L-417A185B", id="P-on-demand", marks=pytest.mark.reliability),
    pytest.param({"type": "p3.2xlarge", "spot": True}, "L-7212CCBC", id="P-spot"),
])
def test_the_quota_asked_is_the_families_and_markets(on_aws, tmp_path, instance, code):
    env, proxy, _ = on_aws
    asked = []
    proxy.answer(QUOTA_TARGET, lambda body: (asked.append(body["QuotaCode"]), quota_response(96)(body))[1])
    result = run_cli(env, "doctor", "--config", write_config(tmp_path, **instance), "--json")
    assert result.returncode == 0, result.stdout
    assert asked == [code] and code in checks_of(result)["vCPU quota"]["detail"]


def test_a_refused_quota_lookup_says_which_permission_is_missing(on_aws):
    env, proxy, _ = on_aws
    proxy.answer(QUOTA_TARGET, lambda body: (400, {
        "__type": "AccessDeniedException",
        "Message": f"User: arn:aws:iam::{motoserver.SANDBOX_ACCOUNT}:user/ci is not authorized to perform: "
                   "servicequotas:GetServiceQuota"}))
    result = run_cli(env, "doctor", "--json")
    assert result.returncode == 2
    check = checks_of(result)["vCPU quota"]
    assert check["status"] == "fail" and "AccessDeniedException" in check["detail"] and "operator policy" in check["fix"]


def test_without_a_pulumi_cli_doctor_says_how_to_install_it(on_aws, tmp_path):
    env, _, _ = on_aws
    env = {**env, "PATH": str(tmp_path / "empty")}
    result = run_cli(env, "doctor", "--json")
    assert result.returncode == 2
    check = checks_of(result)["Pulumi CLI"]
    assert check["status"] == "fail" and "get.pulumi.com" in check["fix"]


def test_doctor_names_each_missing_piece_of_infrastructure(on_aws, aws):
    env, _, s3 = on_aws
    infra = json.loads(s3.get_object(Bucket=BUCKET, Key=Layout(ENV).infra)["Body"].read())
    client("ec2", aws).delete_subnet(SubnetId=infra["subnets"]["us-east-1b"])
    # A parameter that exists nowhere, set as `pulumi config set ...amiSsmParameter` + `pulumi up`
    # would: in infra.json and in the operator policy alike.
    missing = "/aws/service/deeplearning/ami/x86_64/nothing-here/latest/ami-id"
    s3.put_object(Bucket=BUCKET, Key=Layout(ENV).infra, Body=json.dumps({**infra, "ami_ssm_parameter": missing}).encode())
    role = client("iam", aws).get_role(RoleName=instance_role_name(ENV))["Role"]["Arn"]
    put_operator_policy(aws, ENV, operator_policy(
        f"arn:aws:s3:::{BUCKET}", ENV, REGION, motoserver.SANDBOX_ACCOUNT, infra["vpc_id"], role,
        infra["instance_profile_arn"], missing))
    s3.delete_bucket_lifecycle(Bucket=BUCKET)
    checks = checks_of(run_cli(env, "doctor", "--json"))
    assert checks["subnets"]["status"] == "fail" and "pulumi up" in checks["subnets"]["fix"]
    assert checks["AMI"]["status"] == "fail" and "ParameterNotFound" in checks["AMI"]["detail"]
    assert checks["bucket lifecycle"]["status"] == "fail" and "no lifecycle rules" in checks["bucket lifecycle"]["detail"]
    assert checks["security group"]["status"] == "pass"

    s3.delete_object(Bucket=BUCKET, Key=Layout(ENV).infra)
    result = run_cli(env, "doctor", "--json")
    checks = checks_of(result)
    assert result.returncode == 2 and checks["infrastructure"]["status"] == "fail"
    assert "pulumi up" in checks["infrastructure"]["detail"] and "subnets" not in checks


# -- launch --dry-run -----------------------------------------------------------------------------
def test_dry_run_under_local_checks_everything_and_changes_nothing(aws, sandbox, tmp_path):
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    before = bucket_keys(sandbox)
    result = run_cli(env, "--local", "launch", write_config(tmp_path), "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("dry run: no lock taken, nothing written to the bucket, nothing started")
    for expected in ("g4dn.xlarge (1x T4 16 GB) on-demand", "60-minute limit", f"dataset   {DATA_PREFIX}",
                     "worst case", "zones     us-east-1a", "nothing to preview", "ready: `chronos-train launch"):
        assert expected in out, expected
    assert bucket_keys(sandbox) == before
    assert client("ec2", aws).describe_instances()["Reservations"] == []


def test_dry_run_on_aws_previews_the_run_stack_and_writes_nothing(aws, on_aws, tmp_path):
    env, _, s3 = on_aws
    before = bucket_keys(s3)
    result = run_cli(env, "launch", write_config(tmp_path), "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "zones     us-east-1a, us-east-1b (the group launches in whichever has capacity)" in out
    # What the program declares, as the real CLI previews it (the template's image is the AMI
    # parameter's, read as the operator), and the counts `pulumi preview` prints.
    ami = client("ssm", aws).get_parameter(Name=SANDBOX_AMI_PARAMETER)["Parameter"]["Value"]
    steps = [line.split()[:2] for line in out.splitlines() if line.startswith("  create ")]
    assert [typ for _, typ in steps] == ["pulumi:pulumi:Stack", "pulumi:providers:aws", "chronos:run:Machines",
                                         "aws:ec2/launchTemplate:LaunchTemplate", "aws:autoscaling/group:Group"]
    assert f"(instanceType g4dn.xlarge; imageId {ami})" in out and "(types g4dn.xlarge; 2 subnets)" in out
    assert "changes: 5 to create" in out and "pass  vCPU quota" in out
    assert bucket_keys(s3) == before, "no lock, no upload, no stack state in the bucket"
    backends = {c["env"]["PULUMI_BACKEND_URL"] for c in calls(tmp_path / "calls.jsonl")}
    assert backends and all(b.startswith("file://") for b in backends)

    doc = json.loads(run_cli(env, "launch", write_config(tmp_path), "--dry-run", "--json").stdout)
    assert doc["ready"] and doc["zones"] == ["us-east-1a", "us-east-1b"] and doc["instance_type"] == "g4dn.xlarge"
    assert {"op": "create", "type": "aws:autoscaling/group:Group"}.items() <= doc["preview"]["steps"][-1].items()
    assert doc["estimate"]["worst_case_usd"] > 0


def test_dry_run_that_would_fail_exits_2_and_says_why(on_aws, tmp_path):
    env, proxy, s3 = on_aws
    proxy.answer(QUOTA_TARGET, quota_response(0))
    before = bucket_keys(s3)
    result = run_cli(env, "launch", write_config(tmp_path), "--dry-run")
    assert result.returncode == 2
    assert "fail  vCPU quota" in result.stdout and result.stdout.strip().endswith(
        "not ready: fix the failed check(s) above first (nothing was changed)")
    assert bucket_keys(s3) == before


@pytest.mark.parametrize("args,expected", [
    (("--json",), "--json goes with --dry-run"),
    (("--dry-run", "--follow"), "--follow and --dry-run exclude each other"),
])
def test_dry_run_flags_misused_are_bad_usage(aws, sandbox, tmp_path, args, expected):
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    before = bucket_keys(sandbox)
    result = run_cli(env, "--local", "launch", write_config(tmp_path), *args)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
    assert bucket_keys(sandbox) == before


def test_dry_run_of_a_bad_config_is_the_same_sentence_as_a_launch(aws, sandbox, tmp_path):
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**run_config(), "training": {"epochs": 3}}))
    dry = run_cli(env, "--local", "launch", str(path), "--dry-run")
    real = run_cli(env, "--local", "launch", str(path))
    assert dry.returncode == real.returncode == 2 and dry.stderr == real.stderr
    assert "training.epochs: unknown key" in dry.stderr
