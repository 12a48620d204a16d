"""The persistent stack under Pulumi mocks, checked as policy: one assertion per property.

Every failure message starts with the offending resource's URN. Security tests carry the AWS
Foundational Security Best Practices (FSBP) control they check in their name.
"""
from __future__ import annotations

import ipaddress
import json
import runpy
from pathlib import Path

import pulumi
import pytest

from automation.infra_record import InfraRecord
from automation.stacks.persistent import build_persistent_stack
from automation.stacks.persistent_config import PersistentConfig, StackConfigError, parse_config
from automation.stacks.policies import OPERATOR_DESCRIBE_ACTIONS, SELF_INSTANCE_ARN
from tests.policy_eval import allowed, granting
from tests.pulumi_harness import ACCOUNT, REGION, ZONES, Run, policy_doc, run_program, stack_config_file

ROOT = Path(__file__).resolve().parents[1]
BUCKET = f"chronos-training-dev-{ACCOUNT}-{REGION}"

VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
IGW = "aws:ec2/internetGateway:InternetGateway"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE = "aws:ec2/route:Route"
ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
GROUP = "aws:ec2/securityGroup:SecurityGroup"
DEFAULT_GROUP = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
BUCKET_T = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PUBLIC_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
OWNERSHIP = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
PROFILE = "aws:iam/instanceProfile:InstanceProfile"
IAM_POLICY = "aws:iam/policy:Policy"
PROVIDER = "pulumi:providers:aws"
COMPONENTS = ("chronos:persistent:Network", "chronos:persistent:Storage", "chronos:persistent:Access")


def expected_types(zones: int) -> dict[str, int]:
    return {
        PROVIDER: 1, **{c: 1 for c in COMPONENTS},
        VPC: 1, SUBNET: zones, IGW: 1, ROUTE_TABLE: 1, ROUTE: 1, ASSOCIATION: zones, ENDPOINT: 1,
        GROUP: 1, DEFAULT_GROUP: 1,
        BUCKET_T: 1, SSE: 1, PUBLIC_BLOCK: 1, OWNERSHIP: 1, BUCKET_POLICY: 1, LIFECYCLE: 1, OBJECT: 1,
        ROLE: 1, ROLE_POLICY: 1, PROFILE: 1, IAM_POLICY: 1,
    }


def build(cfg: PersistentConfig, **harness) -> Run:
    def program():
        for key, value in build_persistent_stack(cfg).items():
            pulumi.export(key, value)

    return run_program(program, stack=cfg.environment, **harness)


def run_main(config: dict[str, str], **harness) -> Run:
    return run_program(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"),
                       config=config, **harness)


@pytest.fixture(scope="module")
def dev_config() -> dict[str, str]:
    return stack_config_file(ROOT / "Pulumi.dev.yaml")


@pytest.fixture(scope="module")
def stack(dev_config) -> Run:
    """`__main__.py` run with the dev stack's own config file, as `pulumi up` would."""
    return run_main(dev_config)


# --- shape ---------------------------------------------------------------------------------

def test_main_with_dev_config_creates_exactly_the_listed_resources(stack):
    assert stack.type_counts() == expected_types(len(ZONES))


def test_no_nat_gateway_and_no_elastic_ip(stack):
    costly = [r.urn for r in stack.resources if r.typ in ("aws:ec2/natGateway:NatGateway", "aws:ec2/eip:Eip")]
    assert not costly, f"billed at rest: {costly}"


def test_every_aws_resource_belongs_to_a_component(stack):
    for r in stack.aws():
        assert r.parent.split("::")[-2].split("$")[-1] in COMPONENTS, r.fail("not a child of a component")


def test_tags_come_from_the_provider_and_reach_every_resource(stack):
    provider = stack.one(PROVIDER)
    tags = json.loads(provider.inputs["defaultTags"])["tags"]
    assert tags == {"Project": "Chronos-Training", "Environment": "dev", "CostCenter": "train"}, \
        provider.fail(f"default tags {tags}")
    assert provider.inputs["region"] == REGION, provider.fail("wrong region")
    for r in stack.aws():
        assert r.provider.startswith(provider.urn + "::"), r.fail("not on the tagged provider")


def test_no_deprecated_resource_or_argument(stack):
    assert stack.warnings == []


# --- network -------------------------------------------------------------------------------

def test_vpc_has_dns_support_and_hostnames(stack):
    vpc = stack.one(VPC)
    assert vpc.inputs["enableDnsSupport"] is True, vpc.fail("DNS support off")
    assert vpc.inputs["enableDnsHostnames"] is True, vpc.fail("DNS hostnames off")
    assert vpc.inputs["cidrBlock"] == "10.42.0.0/16", vpc.fail("CIDR is not the configured one")


def test_one_public_subnet_per_zone_inside_the_vpc(stack):
    vpc_net = ipaddress.ip_network(stack.one(VPC).inputs["cidrBlock"])
    subnets = stack.of_type(SUBNET)
    assert sorted(s.inputs["availabilityZone"] for s in subnets) == list(ZONES)
    blocks = [ipaddress.ip_network(s.inputs["cidrBlock"]) for s in subnets]
    for s, block in zip(subnets, blocks):
        assert s.inputs["mapPublicIpOnLaunch"] is True, s.fail("no public IP on launch: no way out without NAT")
        assert block.subnet_of(vpc_net), s.fail(f"{block} outside {vpc_net}")
    assert len(set(blocks)) == len(blocks) and not any(
        a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1:]), "subnet CIDRs overlap"


def test_every_subnet_uses_the_public_route_table(stack):
    table_id = f"{stack.one(ROUTE_TABLE).name}-id"
    subnet_ids = {f"{s.name}-id" for s in stack.of_type(SUBNET)}
    associations = stack.of_type(ASSOCIATION)
    assert {a.inputs["subnetId"] for a in associations} == subnet_ids
    for a in associations:
        assert a.inputs["routeTableId"] == table_id, a.fail("subnet on another route table")


def test_default_route_goes_to_the_internet_gateway(stack):
    route = stack.one(ROUTE)
    assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0", route.fail("not the default route")
    assert route.inputs["gatewayId"] == f"{stack.one(IGW).name}-id", route.fail("not via the internet gateway")
    assert route.inputs["routeTableId"] == f"{stack.one(ROUTE_TABLE).name}-id", route.fail("wrong table")


def test_s3_gateway_endpoint_on_the_route_table(stack):
    endpoint = stack.one(ENDPOINT)
    assert endpoint.inputs["vpcEndpointType"] == "Gateway", endpoint.fail("interface endpoints bill by the hour")
    assert endpoint.inputs["serviceName"] == f"com.amazonaws.{REGION}.s3", endpoint.fail("not S3")
    assert endpoint.inputs["routeTableIds"] == [f"{stack.one(ROUTE_TABLE).name}-id"], endpoint.fail("not routed")


def test_fsbp_ec2_18_ec2_19_no_ingress_anywhere(stack):
    for r in stack.resources:
        assert "Ingress" not in r.typ, r.fail("an ingress rule resource")
        assert not r.inputs.get("ingress"), r.fail(f"ingress rules {r.inputs['ingress']}")
    assert stack.one(GROUP).inputs["ingress"] == [], stack.one(GROUP).fail("ingress not explicitly empty")


def test_security_group_allows_only_https_out(stack):
    group = stack.one(GROUP)
    rules = group.inputs["egress"]
    assert len(rules) == 1, group.fail(f"egress rules {rules}")
    rule = rules[0]
    assert (rule["protocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 443, 443), group.fail(f"egress {rule}")


def test_fsbp_ec2_2_default_security_group_has_no_rules(stack):
    group = stack.one(DEFAULT_GROUP)
    assert group.inputs.get("ingress", []) == [], group.fail("default group allows inbound")
    assert group.inputs.get("egress", []) == [], group.fail("default group allows outbound")
    assert group.inputs["vpcId"] == f"{stack.one(VPC).name}-id", group.fail("not this VPC's default group")


# --- storage -------------------------------------------------------------------------------

def test_bucket_name_scheme(stack):
    bucket = stack.one(BUCKET_T)
    assert bucket.inputs["bucket"] == BUCKET, bucket.fail(f"bucket name {bucket.inputs['bucket']}")
    assert not bucket.inputs.get("forceDestroy"), bucket.fail("destroy would delete models")


def test_bucket_configs_target_the_bucket(stack):
    bucket_id = f"{stack.one(BUCKET_T).name}-id"
    for typ in (SSE, PUBLIC_BLOCK, OWNERSHIP, BUCKET_POLICY, LIFECYCLE):
        r = stack.one(typ)
        assert r.inputs["bucket"] == bucket_id, r.fail("configures another bucket")


def test_default_encryption_is_sse_s3(stack):
    sse = stack.one(SSE)
    algorithms = [rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] for rule in sse.inputs["rules"]]
    assert algorithms == ["AES256"], sse.fail(f"default encryption {algorithms}")


def test_fsbp_s3_8_all_four_public_access_blocks(stack):
    block = stack.one(PUBLIC_BLOCK)
    for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block.inputs.get(key) is True, block.fail(f"{key} is not true")


def test_fsbp_s3_1_s3_12_acls_disabled_and_nothing_public_granted(stack):
    ownership = stack.one(OWNERSHIP)
    assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced", ownership.fail("ACLs enabled")
    policy = stack.one(BUCKET_POLICY)
    allows = [s for s in policy_doc(policy.inputs["policy"])["Statement"] if s["Effect"] == "Allow"]
    assert not allows, policy.fail(f"bucket policy grants {allows}")


def test_fsbp_s3_5_bucket_policy_denies_requests_without_tls(stack):
    policy = stack.one(BUCKET_POLICY)
    arn = f"arn:aws:s3:::{BUCKET}"
    denies = [s for s in policy_doc(policy.inputs["policy"])["Statement"]
              if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert denies, policy.fail("no deny on aws:SecureTransport=false")
    deny = denies[0]
    assert deny["Principal"] == "*" and deny["Action"] == "s3:*", policy.fail(f"deny too narrow: {deny}")
    assert sorted(deny["Resource"]) == [arn, f"{arn}/*"], policy.fail(f"deny resources {deny['Resource']}")


def _rules(stack: Run) -> dict[str, dict]:
    return {rule["id"]: rule for rule in stack.one(LIFECYCLE).inputs["rules"]}


def test_fsbp_s3_13_lifecycle_logs_expire_after_14_days(stack):
    rule = _rules(stack)["expire-logs"]
    assert rule["filter"] == {"prefix": "dev/logs/"} and rule["expiration"]["days"] == 14, \
        stack.one(LIFECYCLE).fail(f"logs rule {rule}")


def test_fsbp_s3_13_lifecycle_run_outputs_to_ia_at_30_and_expire_at_60(stack):
    rule = _rules(stack)["age-run-outputs"]
    lifecycle = stack.one(LIFECYCLE)
    assert rule["filter"] == {"prefix": "dev/run-"}, lifecycle.fail(f"run outputs filter {rule['filter']}")
    assert rule["transitions"] == [{"storageClass": "STANDARD_IA", "days": 30}], lifecycle.fail(rule["transitions"])
    assert rule["expiration"]["days"] == 60, lifecycle.fail(f"run outputs expire at {rule['expiration']}")


def test_fsbp_s3_13_lifecycle_aborts_incomplete_uploads_after_1_day(stack):
    rule = _rules(stack)["abort-incomplete-uploads"]
    assert rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 1, stack.one(LIFECYCLE).fail(rule)


def test_lifecycle_never_touches_cached_datasets(stack):
    lifecycle = stack.one(LIFECYCLE)
    for rule in lifecycle.inputs["rules"]:
        prefix = rule.get("filter", {}).get("prefix", "")
        deletes_or_moves = "expiration" in rule or "transitions" in rule
        assert not (deletes_or_moves and "cached-datasets/".startswith(prefix)), \
            lifecycle.fail(f"rule {rule['id']} expires or moves cached-datasets/")


# S3's floors for lifecycle transitions (days after creation) by target storage class.
S3_MIN_TRANSITION_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30, "INTELLIGENT_TIERING": 0, "GLACIER_IR": 0,
                          "GLACIER": 0, "DEEP_ARCHIVE": 0}


def lifecycle_violations(rules: list[dict]) -> list[str]:
    problems = []
    for rule in rules:
        transitions = rule.get("transitions", [])
        for t in transitions:
            floor = S3_MIN_TRANSITION_DAYS[t["storageClass"]]
            if t["days"] < floor:
                problems.append(f"{rule['id']}: {t['storageClass']} at day {t['days']} < {floor}")
        expiry = rule.get("expiration", {}).get("days")
        if expiry is not None and expiry < 1:
            problems.append(f"{rule['id']}: expiration at day {expiry}")
        if expiry is not None and transitions and expiry <= max(t["days"] for t in transitions):
            problems.append(f"{rule['id']}: expires at {expiry}, not after its last transition")
    return problems


def test_every_lifecycle_transition_respects_s3_minimum_days(stack):
    lifecycle = stack.one(LIFECYCLE)
    assert lifecycle_violations(lifecycle.inputs["rules"]) == [], lifecycle.fail("S3 would refuse these rules")


def test_the_lifecycle_checker_catches_the_seeds_7_days():
    rules = [{"id": "seed", "transitions": [{"storageClass": "STANDARD_IA", "days": 7}], "expiration": {"days": 5}}]
    assert len(lifecycle_violations(rules)) == 2


# --- access --------------------------------------------------------------------------------

def _statements(r) -> list[dict]:
    key = "assumeRolePolicy" if r.typ == ROLE else "policy"
    statements = policy_doc(r.inputs[key])["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _instance_statements(stack: Run) -> dict[str, dict]:
    return {s["Sid"]: s for s in _statements(stack.one(ROLE_POLICY))}


def _instance_policy(stack: Run) -> dict:
    return policy_doc(stack.one(ROLE_POLICY).inputs["policy"])


def _operator_policy(stack: Run) -> dict:
    return policy_doc(stack.one(IAM_POLICY).inputs["policy"])


def _obj(key: str) -> str:
    return f"arn:aws:s3:::{BUCKET}/{key}"


def test_fsbp_iam_1_iam_21_no_statement_grants_a_wildcard_action(stack):
    for r in stack.of_type(ROLE) + stack.of_type(ROLE_POLICY) + stack.of_type(BUCKET_POLICY) + stack.of_type(IAM_POLICY):
        for statement in _statements(r):
            assert "NotAction" not in statement, r.fail(f"NotAction grants everything else: {statement}")
            assert "NotResource" not in statement, r.fail(f"NotResource: {statement}")
            if statement["Effect"] != "Allow":
                continue
            actions = _as_list(statement["Action"])
            for action in actions:
                assert "*" not in action, r.fail(f"wildcard action {action!r}")
            for resource in _as_list(statement.get("Resource", [])):
                # Describe calls exist only at "*" on AWS; nothing else may take every resource.
                assert resource != "*" or set(actions) <= set(OPERATOR_DESCRIBE_ACTIONS), \
                    r.fail(f"Resource '*' in {statement}")


def test_instance_reads_datasets_only(stack):
    statement = _instance_statements(stack)["ReadDatasets"]
    assert statement["Action"] == ["s3:GetObject"], stack.one(ROLE_POLICY).fail(f"datasets: {statement['Action']}")
    assert statement["Resource"] == [f"arn:aws:s3:::{BUCKET}/cached-datasets/*"], \
        stack.one(ROLE_POLICY).fail(f"datasets resource {statement['Resource']}")


@pytest.mark.parametrize("key", [
    "dev/system-state.json", "dev/logs/run-20261129-101500-ab12/agent.log", "dev/run-20261129-101500-ab12/models/x",
    "cached-datasets/python-env/chronos-env-x.tar.gz", "cached-datasets/python-env/chronos-env-x.tar.zst",
])
def test_instance_writes_what_a_run_needs(stack, key):
    assert allowed(_instance_policy(stack), "s3:PutObject", _obj(key)), stack.one(ROLE_POLICY).fail(f"cannot write {key}")


@pytest.mark.parametrize("key", [
    "dev/infra.json", "dev/pulumi/.pulumi/stacks/chronos-run/x.json", "stage/system-state.json",
    "cached-datasets/2026/11/part-0.parquet", "dev/anything-else",
])
def test_instance_cannot_write_launch_inputs_datasets_or_other_envs(stack, key):
    """A compromised training job cannot change which profile the next launch passes (infra.json,
    the run stacks' state), nor the data others train on."""
    policy = _instance_policy(stack)
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not granting(policy, action, _obj(key)), stack.one(ROLE_POLICY).fail(f"{action} on {key}")


def test_instance_reads_no_launch_state(stack):
    assert not granting(_instance_policy(stack), "s3:GetObject", _obj("dev/pulumi/.pulumi/stacks/chronos-run/x.json"))


def test_instance_lists_its_bucket_without_a_condition_so_a_missing_key_reads_404(stack):
    """S3 answers a GET/HEAD of a missing key with 404 only to a caller that may list the bucket,
    and such a request has no s3:prefix: the grant must hold without one (the sandbox plays the
    same rule: tests/test_sandbox_iam.py). Listing reveals names in this bucket only."""
    from automation.sandbox.strictmoto import may_list_bucket

    statement = _instance_statements(stack)["ListBucket"]
    policy = stack.one(ROLE_POLICY)
    assert statement["Action"] == ["s3:ListBucket"] and statement["Resource"] == [f"arn:aws:s3:::{BUCKET}"], \
        policy.fail(f"list statement {statement}")
    assert may_list_bucket([_instance_policy(stack)], f"arn:aws:s3:::{BUCKET}"), policy.fail("no ListBucket for GET")
    assert not may_list_bucket([_instance_policy(stack)], "arn:aws:s3:::another-bucket"), policy.fail(statement)


def test_instance_terminates_itself_only(stack):
    statement = _instance_statements(stack)["TerminateItselfOnly"]
    policy = stack.one(ROLE_POLICY)
    assert statement["Action"] == ["ec2:TerminateInstances"], policy.fail(statement)
    assert statement["Condition"] == {"ArnEquals": {"ec2:SourceInstanceARN": SELF_INSTANCE_ARN}}, \
        policy.fail(f"terminate not bound to the caller's own instance: {statement.get('Condition')}")
    assert SELF_INSTANCE_ARN == "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"
    assert _as_list(statement["Resource"]) == [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/${{ec2:InstanceID}}"], \
        policy.fail(f"terminate resource {statement['Resource']}")


def test_instance_policy_has_nothing_else(stack):
    assert set(_instance_statements(stack)) == {
        "ReadDatasets", "SaveEnvironmentCache", "ReadWriteRuns", "ListBucket", "EndOwnRunGroup",
        "TerminateItselfOnly"}


# --- the operator's managed policy (moto ignores conditions: these read them) -------------------
EC2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"


def test_operator_policy_is_a_managed_policy_output_for_attaching(stack):
    policy = stack.one(IAM_POLICY)
    assert stack.outputs["operator_policy_arn"].startswith(f"arn:aws:iam::{ACCOUNT}:policy/"), policy.fail("no output")


@pytest.mark.parametrize("key", [
    "dev/system-state.json", "dev/logs/run-20261129-101500-ab12/training.json", "dev/run-20261129-101500-ab12/bundle.tar.gz",
    "dev/pulumi/.pulumi/stacks/chronos-run/run-20261129-101500-ab12.json", "cached-datasets/2026/11/part-0.parquet",
])
def test_operator_writes_runs_run_stacks_and_datasets(stack, key):
    assert allowed(_operator_policy(stack), "s3:PutObject", _obj(key)), stack.one(IAM_POLICY).fail(key)


@pytest.mark.parametrize("key", ["dev/infra.json", "stage/system-state.json", "cached-datasets/python-env/x.tar.gz",
                                 "cached-datasets/python-env/x.tar.zst"])
def test_operator_cannot_write_the_stack_record_other_envs_or_the_environment_cache(stack, key):
    assert not granting(_operator_policy(stack), "s3:PutObject", _obj(key)), stack.one(IAM_POLICY).fail(key)


def test_operator_launches_only_tagged_machines_in_its_own_vpc(stack):
    policy, r = _operator_policy(stack), stack.one(IAM_POLICY)
    vpc = f"{EC2}:vpc/{stack.outputs['vpc_id']}"
    tagged = {"aws:RequestTag/Project": "Chronos-Training"}
    for kind in ("instance", "volume"):
        assert allowed(policy, "ec2:RunInstances", f"{EC2}:{kind}/*", tagged), r.fail(kind)
        assert not allowed(policy, "ec2:RunInstances", f"{EC2}:{kind}/*", {"aws:RequestTag/Project": "other"}), r.fail(kind)
    for kind in ("subnet/subnet-1", "security-group/sg-1", "network-interface/eni-1"):
        assert allowed(policy, "ec2:RunInstances", f"{EC2}:{kind}", {"ec2:Vpc": vpc}), r.fail(kind)
        assert not allowed(policy, "ec2:RunInstances", f"{EC2}:{kind}", {"ec2:Vpc": f"{EC2}:vpc/vpc-other"}), r.fail(kind)
    assert allowed(policy, "ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/ami-0abc"), r.fail("AMI")


def test_operator_tags_only_at_launch_and_ends_only_project_machines(stack):
    policy, r = _operator_policy(stack), stack.one(IAM_POLICY)
    assert allowed(policy, "ec2:CreateTags", f"{EC2}:instance/i-1", {"ec2:CreateAction": "RunInstances"})
    assert not allowed(policy, "ec2:CreateTags", f"{EC2}:instance/i-1", {"ec2:CreateAction": "CreateTags"}), \
        r.fail("may retag any instance (and so make it a project instance it may then terminate)")
    for action in ("ec2:TerminateInstances", "ec2:ModifyInstanceAttribute"):
        assert allowed(policy, action, f"{EC2}:instance/i-1", {"aws:ResourceTag/Project": "Chronos-Training"})
        assert not allowed(policy, action, f"{EC2}:instance/i-1", {}), r.fail(f"{action} on any instance")
    assert not allowed(policy, "ec2:DeleteVolume", f"{EC2}:volume/vol-1", {}), r.fail("deletes any volume")


def test_operator_passes_only_the_instance_role_and_only_to_ec2(stack):
    policy, r = _operator_policy(stack), stack.one(IAM_POLICY)
    role = stack.one(ROLE)
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{role.name}-1a2b3c"
    assert allowed(policy, "iam:PassRole", role_arn, {"iam:PassedToService": "ec2.amazonaws.com"}), r.fail("PassRole")
    assert not allowed(policy, "iam:PassRole", role_arn, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not granting(policy, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Admin"), r.fail("passes other roles")


def test_operator_reads_only_the_configured_ami_parameter(stack):
    policy = _operator_policy(stack)
    parameter = stack.outputs["ami_ssm_parameter"]
    assert allowed(policy, "ssm:GetParameter", f"arn:aws:ssm:{REGION}::parameter{parameter}")
    assert not granting(policy, "ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/prod/db-password")


def test_role_is_for_ec2_and_the_profile_carries_it(stack):
    role = stack.one(ROLE)
    assert _statements(role) == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                  "Action": "sts:AssumeRole"}], role.fail("assumable by more than EC2")
    profile = stack.one(PROFILE)
    assert profile.inputs["role"].startswith(role.name), profile.fail("profile without the instance role")
    policy = stack.one(ROLE_POLICY)
    assert policy.inputs["role"] == f"{role.name}-id", policy.fail("policy attached to another role")


# --- infra.json and outputs ----------------------------------------------------------------

def test_infra_record_object_holds_what_a_launch_needs(stack):
    obj = stack.one(OBJECT)
    assert obj.inputs["key"] == "dev/infra.json" and obj.inputs["bucket"] == BUCKET, obj.fail("wrong place")
    record = InfraRecord.from_dict(json.loads(obj.inputs["content"]))
    assert (record.env, record.region, record.account, record.bucket) == ("dev", REGION, ACCOUNT, BUCKET)
    assert record.subnets == {s.inputs["availabilityZone"]: f"{s.name}-id" for s in stack.of_type(SUBNET)}
    assert record.security_group_id == f"{stack.one(GROUP).name}-id"
    assert record.instance_profile and record.instance_profile_arn.endswith(record.instance_profile)
    assert record.ami_ssm_parameter.startswith("/aws/service/deeplearning/")


def test_stack_outputs_equal_the_infra_record(stack):
    record = json.loads(stack.one(OBJECT).inputs["content"])
    record.pop("extra")
    assert stack.outputs == record


# --- configuration -------------------------------------------------------------------------

def test_explicit_zones_get_exactly_those_subnets():
    cfg = PersistentConfig(environment="stage", region=REGION, availability_zones=("us-east-1a", "us-east-1c"))
    run = build(cfg)
    assert sorted(s.inputs["availabilityZone"] for s in run.of_type(SUBNET)) == ["us-east-1a", "us-east-1c"]
    assert "aws:index/getAvailabilityZones:getAvailabilityZones" not in [token for token, _ in run.calls]
    assert run.type_counts() == expected_types(2)
    assert run.one(BUCKET_T).inputs["bucket"] == f"chronos-training-stage-{ACCOUNT}-{REGION}"


def test_all_zones_asks_for_regular_zones_only():
    run = build(PersistentConfig(environment="dev", region=REGION))
    args = [a for token, a in run.calls if token == "aws:index/getAvailabilityZones:getAvailabilityZones"]
    assert args and args[0]["state"] == "available"
    assert args[0]["filters"] == [{"name": "opt-in-status", "values": ["opt-in-not-required"]}]


def test_more_zones_than_the_vpc_can_hold_is_refused():
    many = tuple(f"{REGION}-zone{i}" for i in range(17))
    with pytest.raises(StackConfigError, match="do not fit"):
        build(PersistentConfig(environment="dev", region=REGION), zones=many)


def one_sentence(message: str) -> bool:
    return "\n" not in message and ". " not in message.rstrip(".") and len(message) < 240


BAD_CONFIGS = [
    ({"environment": "qa"}, "environment 'qa' is not a known environment"),
    ({"environment": ""}, "is not a known environment"),
    ({"costCenter": "marketing"}, "costCenter 'marketing' is not a cost center"),
    ({"vpcCidr": "10.42.0.1/16"}, "is not an IPv4 network"),
    ({"vpcCidr": "not-a-cidr"}, "is not an IPv4 network"),
    ({"vpcCidr": "10.0.0.0/8"}, "must be between /16 and /24"),
    ({"vpcCidr": "10.0.0.0/27"}, "must be between /16 and /24"),
    ({"vpcCidr": "8.8.0.0/16"}, "is not a private range"),
    ({"runTransitionDays": "7"}, "S3 refuses a STANDARD_IA transition before day 30"),
    ({"runExpirationDays": "30"}, "must be later than runTransitionDays"),
    ({"logRetentionDays": "0"}, "logRetentionDays must be at least 1 day"),
    ({"logRetentionDays": "two weeks"}, "must be a whole number of days"),
    ({"availabilityZones": '["eu-west-1a"]'}, "not in region us-east-1"),
    ({"availabilityZones": '["us-east-1a", "us-east-1a"]'}, "lists a zone twice"),
    ({"availabilityZones": "[]"}, "must be \"all\" or a list of zones"),
]


@pytest.mark.parametrize("change, expected", BAD_CONFIGS, ids=[next(iter(c)) + "=" + str(next(iter(c.values())))
                                                               for c, _ in BAD_CONFIGS])
def test_bad_config_stops_with_one_clear_sentence(dev_config, change, expected):
    raw = {key.split(":", 1)[1]: value for key, value in dev_config.items() if key.startswith("chronos-training:")}
    raw.update(change)
    with pytest.raises(StackConfigError) as err:
        parse_config(raw, dev_config["aws:region"])
    message = str(err.value)
    assert expected in message
    assert one_sentence(message), message


def test_missing_region_is_one_sentence():
    with pytest.raises(StackConfigError, match="aws:region") as err:
        parse_config({"environment": "dev"}, None)
    assert one_sentence(str(err.value))


def test_dev_config_file_parses_to_the_documented_values(dev_config):
    raw = {key.split(":", 1)[1]: value for key, value in dev_config.items() if key.startswith("chronos-training:")}
    cfg = parse_config(raw, dev_config["aws:region"])
    assert cfg == PersistentConfig(environment="dev", region="us-east-1", cost_center="train",
                                   vpc_cidr="10.42.0.0/16", availability_zones=None, log_retention_days=14,
                                   run_transition_days=30, run_expiration_days=60)


def test_zone_list_in_stack_config_is_accepted():
    cfg = parse_config({"environment": "prod", "availabilityZones": '["us-east-1b", "us-east-1a"]'}, REGION)
    assert cfg.availability_zones == ("us-east-1b", "us-east-1a")


def test_main_with_a_zone_list_in_the_stack_file(dev_config):
    config = {**dev_config, "chronos-training:availabilityZones": json.dumps(["us-east-1d", "us-east-1a"])}
    run = run_main(config)
    assert sorted(run.outputs["subnets"]) == ["us-east-1a", "us-east-1d"]
    assert run.type_counts() == expected_types(2)


def test_main_turns_a_bad_config_into_a_run_error(dev_config):
    config = {**dev_config, "chronos-training:environment": "qa"}
    with pytest.raises(pulumi.RunError) as err:
        run_main(config)
    assert "chronos-training:environment 'qa' is not a known environment" in str(err.value)
    assert one_sentence(str(err.value))


GROUP_ARN = f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:5a1b-uuid:autoScalingGroupName/run-20261129-101500-ab12"
PROJECT = {"aws:ResourceTag/Project": "Chronos-Training"}


def test_the_agent_ends_only_project_run_groups(stack):
    """The agent takes its machine out of its run's group (desired capacity 0) before it ends;
    the condition on the group's tag is IAM's to check (moto does not)."""
    policy, r = _instance_policy(stack), stack.one(ROLE_POLICY)
    for action in ("autoscaling:DetachInstances", "autoscaling:UpdateAutoScalingGroup"):
        assert allowed(policy, action, GROUP_ARN, PROJECT), r.fail(action)
        assert not allowed(policy, action, GROUP_ARN, {"aws:ResourceTag/Project": "other"}), r.fail(f"{action}: any group")
        other = GROUP_ARN.replace("autoScalingGroupName/run-", "autoScalingGroupName/web-")
        assert not allowed(policy, action, other, PROJECT), r.fail(f"{action}: a group not named for a run")
    for action in ("autoscaling:CreateAutoScalingGroup", "autoscaling:DeleteAutoScalingGroup",
                   "autoscaling:SetDesiredCapacity", "ec2:CreateLaunchTemplate"):
        assert not granting(policy, action, GROUP_ARN), r.fail(f"the agent may {action}")


def test_operator_makes_and_ends_only_tagged_run_groups_and_templates(stack):
    policy, r = _operator_policy(stack), stack.one(IAM_POLICY)
    tagged = {"aws:RequestTag/Project": "Chronos-Training"}
    assert allowed(policy, "autoscaling:CreateAutoScalingGroup", GROUP_ARN, tagged), r.fail("create group")
    assert not allowed(policy, "autoscaling:CreateAutoScalingGroup", GROUP_ARN, {"aws:RequestTag/Project": "x"})
    for action in ("autoscaling:UpdateAutoScalingGroup", "autoscaling:DeleteAutoScalingGroup"):
        assert allowed(policy, action, GROUP_ARN, PROJECT), r.fail(action)
        assert not allowed(policy, action, GROUP_ARN, {}), r.fail(f"{action} on any group")
    template = f"{EC2}:launch-template/lt-0abc"
    assert allowed(policy, "ec2:CreateLaunchTemplate", template, tagged), r.fail("create template")
    assert not allowed(policy, "ec2:CreateLaunchTemplate", template, {}), r.fail("untagged template")
    for action in ("ec2:RunInstances", "ec2:DeleteLaunchTemplate"):
        assert allowed(policy, action, template, PROJECT), r.fail(action)
        assert not allowed(policy, action, template, {}), r.fail(f"{action} on any template")
    assert allowed(policy, "iam:CreateServiceLinkedRole",
                   f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
                   {"iam:AWSServiceName": "autoscaling.amazonaws.com"})
