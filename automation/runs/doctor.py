"""`chronos-train doctor`: what a first launch needs, one line a check: it passes, or it says
what is wrong and how to fix it. Reads only; changes nothing.

Under --local the same checks run against the sandbox, except those the sandbox cannot answer,
which say why (skip): the Pulumi CLI (a local run needs none), the vCPU quota (moto knows no EC2
quotas, and a local run uses none), the bucket's encryption and lifecycle (the sandbox's bucket
is seeded by chronos-train, not deployed by `pulumi up`).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Callable

from instance.protocol.aws import error_code
from instance.protocol.layout import is_region_name
from instance.protocol.pricing import PRICES
from instance.protocol.quotas import quota_code, quota_name
from instance.protocol.runconfig import RunConfig

from ..context import DENIED_CODES, Target
from ..errors import ChronosError

PASS, FAIL, SKIP = "pass", "fail", "skip"
LOCAL_PULUMI = "a --local run needs no Pulumi CLI"
LOCAL_QUOTA = "the sandbox (moto) knows no EC2 service quotas, and a --local run uses none"
LOCAL_BUCKET = "the sandbox's bucket is seeded by chronos-train, not deployed by `pulumi up`, so it has no {what} to check"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | fail | skip
    detail: str  # one line: what was found, or what is wrong
    fix: str = ""  # what to do, when it failed

    def line(self) -> str:
        tail = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.status:4}  {self.name:18} {self.detail}{tail}"

    def to_json(self) -> dict:
        return asdict(self)


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]


def doctor(target: Target, config: RunConfig | None = None) -> list[Check]:
    """Every check, in the order a first launch meets them. `config` names the instance type
    whose quota is checked (default: the config's default type, on-demand)."""
    checks = [_identity(target), _region(target)]
    infra = None
    try:
        infra = target.infra()
        checks.append(Check("infrastructure", PASS, f"{target.layout.infra} in bucket {target.bucket}"))
    except ChronosError as exc:
        checks.append(Check("infrastructure", FAIL, str(exc), "run `pulumi up` for this environment"))
    if infra is not None:
        checks += [_infra_region(target, infra), _subnets(target, infra), _security_group(target, infra),
                   _instance_profile(target, infra), _ami(target, infra)]
    checks += [_pulumi_cli(target), _quota(target, config), _ebs_key(target)]
    checks += [_encryption(target), _lifecycle(target)]
    return checks


def _guard(name: str, fix: str, probe: Callable[[], Check]) -> Check:
    """Run one probe; an AWS refusal becomes a failed check naming the error code."""
    try:
        return probe()
    except ChronosError as exc:
        return Check(name, FAIL, str(exc), fix)
    except Exception as exc:  # noqa: BLE001 - every AWS error becomes one line
        code = error_code(exc) or type(exc).__name__
        if code in DENIED_CODES:
            return Check(name, FAIL, f"these credentials may not look ({code})",
                         "attach the operator policy (`pulumi stack output operatorPolicyArn`) to this identity")
        return Check(name, FAIL, f"AWS answered {code}", fix)


def _identity(target: Target) -> Check:
    def probe() -> Check:
        ident = _client(target, "sts").get_caller_identity()
        return Check("credentials", PASS, f"{ident['Arn']} (account {ident['Account']})")

    return _guard("credentials", "run `aws configure` or set AWS_PROFILE, or use --local", probe)


def _region(target: Target) -> Check:
    if not is_region_name(target.region):
        return Check("region", FAIL, f"{target.region!r} is not an AWS region name", "set AWS_REGION, e.g. us-east-1")
    return Check("region", PASS, target.region)


def _infra_region(target: Target, infra) -> Check:
    if infra.region != target.region:
        return Check("infra region", FAIL, f"{target.env} is deployed in {infra.region}, this shell uses "
                     f"{target.region}", f"export AWS_REGION={infra.region}")
    return Check("infra region", PASS, f"{infra.region} (as deployed)")


def _subnets(target: Target, infra) -> Check:
    def probe() -> Check:
        if not infra.subnets:
            return Check("subnets", FAIL, "infra.json lists no subnet", "run `pulumi up` again")
        found = target.ec2.describe_subnets(SubnetIds=list(infra.subnets.values()))["Subnets"]
        zones = {s["SubnetId"]: s["AvailabilityZone"] for s in found}
        wrong = [f"{sid} ({zone})" for zone, sid in infra.subnets.items() if zones.get(sid) != zone]
        if wrong:
            return Check("subnets", FAIL, f"not where infra.json says: {', '.join(wrong)}", "run `pulumi up` again")
        return Check("subnets", PASS, f"{len(zones)} zones: {', '.join(sorted(infra.subnets))}")

    return _guard("subnets", "run `pulumi up` again; a subnet in infra.json no longer exists", probe)


def _security_group(target: Target, infra) -> Check:
    def probe() -> Check:
        group = target.ec2.describe_security_groups(GroupIds=[infra.security_group_id])["SecurityGroups"][0]
        return Check("security group", PASS, f"{group['GroupId']} in {group.get('VpcId', '?')}")

    return _guard("security group", "run `pulumi up` again; the security group in infra.json is gone", probe)


def _instance_profile(target: Target, infra) -> Check:
    def probe() -> Check:
        profile = _client(target, "iam").get_instance_profile(InstanceProfileName=infra.instance_profile)
        roles = [r["RoleName"] for r in profile["InstanceProfile"].get("Roles", [])]
        if not roles:
            return Check("instance profile", FAIL, f"{infra.instance_profile} holds no role", "run `pulumi up` again")
        return Check("instance profile", PASS, f"{infra.instance_profile} (role {roles[0]})")

    return _guard("instance profile", "run `pulumi up` again; the instance profile in infra.json is gone", probe)


def _ami(target: Target, infra) -> Check:
    def probe() -> Check:
        value = _client(target, "ssm").get_parameter(Name=infra.ami_ssm_parameter)["Parameter"]["Value"]
        return Check("AMI", PASS, f"{value} from {infra.ami_ssm_parameter}")

    return _guard("AMI", f"the parameter {infra.ami_ssm_parameter} does not resolve in {target.region}; set "
                  "chronos-training:amiSsmParameter to a Deep Learning AMI parameter of this region and run "
                  "`pulumi up`", probe)


def pulumi_version() -> tuple[int, int, int] | None:
    """The installed Pulumi CLI's version, or None when there is none that answers."""
    if shutil.which("pulumi") is None:
        return None
    try:
        out = subprocess.run(["pulumi", "version"], capture_output=True, text=True, timeout=30,
                             env=_quiet_env()).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else None  # type: ignore[return-value]


def _quiet_env() -> dict:
    import os

    return {**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"}


def _pulumi_cli(target: Target) -> Check:
    from ..executors.run_stacks import MIN_PULUMI_CLI

    version = pulumi_version()
    wanted = ".".join(map(str, MIN_PULUMI_CLI))
    found = f"v{'.'.join(map(str, version))}" if version else "not installed"
    if target.local:
        return Check("Pulumi CLI", SKIP, f"{found}; {LOCAL_PULUMI}")
    if version is None:
        return Check("Pulumi CLI", FAIL, "not found on PATH", "curl -fsSL https://get.pulumi.com | sh")
    if version < MIN_PULUMI_CLI:
        return Check("Pulumi CLI", FAIL, f"{found} is older than {wanted}", "curl -fsSL https://get.pulumi.com | sh")
    return Check("Pulumi CLI", PASS, f"{found} (needs {wanted} or newer)")


def _quota(target: Target, config: RunConfig | None) -> Check:
    itype = config.instance.type if config else RunConfig.model_fields["instance"].default.type
    spot = bool(config and config.instance.spot)
    market = "spot" if spot else "on-demand"
    name = quota_name(itype, spot)
    if target.local:
        return Check("vCPU quota", SKIP, f"{itype} {market}: {LOCAL_QUOTA}")
    code = quota_code(itype, spot)
    need = PRICES[itype].vcpus
    if code is None:
        return Check("vCPU quota", SKIP, f"no known quota code for {itype}; check \"{name}\" in Service Quotas")

    def probe() -> Check:
        value = _client(target, "service-quotas").get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        if value < need:
            return Check("vCPU quota", FAIL,
                         f"\"{name}\" ({code}) is {value:g} vCPUs in {target.region}; {itype} needs {need}",
                         f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
                         f"--desired-value {need} --region {target.region} (or choose a smaller type)")
        return Check("vCPU quota", PASS, f"\"{name}\" ({code}) is {value:g} vCPUs; {itype} needs {need}")

    return _guard("vCPU quota", f"check \"{name}\" ({code}) in Service Quotas for {target.region}", probe)


def _bucket_setting(target: Target, name: str, what: str, fetch: Callable[[], object], missing_code: str,
                    judge: Callable[[object], Check]) -> Check:
    """A bucket setting `pulumi up` deploys: absent fails (skips under --local: the sandbox's
    bucket is not deployed by it), present is judged."""
    def probe() -> Check:
        try:
            found = fetch()
        except Exception as exc:
            if error_code(exc) != missing_code:
                raise
            if target.local:
                return Check(name, SKIP, LOCAL_BUCKET.format(what=what))
            return Check(name, FAIL, f"bucket {target.bucket} has no {what}", "run `pulumi up` again")
        return judge(found)

    return _guard(name, "run `pulumi up` again", probe)


def _encryption(target: Target) -> Check:
    def judge(rules) -> Check:
        algos = sorted({r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules
                        if "ApplyServerSideEncryptionByDefault" in r})
        return Check("bucket encryption", PASS, f"{', '.join(algos) or 'set'} by default")

    return _bucket_setting(
        target, "bucket encryption", "default encryption",
        lambda: target.s3.get_bucket_encryption(Bucket=target.bucket)["ServerSideEncryptionConfiguration"]["Rules"],
        "ServerSideEncryptionConfigurationNotFoundError", judge)


def _lifecycle(target: Target) -> Check:
    from ..stacks.persistent_config import PersistentConfig, lifecycle_rules

    def judge(deployed) -> Check:
        enabled = {r.get("ID"): r for r in deployed if r.get("Status") == "Enabled"}
        expected = [r["id"] for r in lifecycle_rules(PersistentConfig(environment=target.env, region=target.region))]
        missing = [rule for rule in expected if rule not in enabled]
        if missing:
            return Check("bucket lifecycle", FAIL, f"rules missing or disabled: {', '.join(missing)}",
                         "run `pulumi up` again")
        logs = enabled["expire-logs"].get("Expiration", {}).get("Days")
        runs = enabled["age-run-outputs"].get("Expiration", {}).get("Days")
        return Check("bucket lifecycle", PASS, f"logs expire after {logs} days, run outputs after {runs} days, "
                     "incomplete uploads aborted")

    return _bucket_setting(
        target, "bucket lifecycle", "lifecycle rules",
        lambda: target.s3.get_bucket_lifecycle_configuration(Bucket=target.bucket)["Rules"],
        "NoSuchLifecycleConfiguration", judge)


AWS_MANAGED_EBS_KEY = "alias/aws/ebs"
AUTOSCALING_ROLE = "role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"


def _ebs_key(target: Target) -> Check:
    """The run's root volume is encrypted with the account's default EBS key. A customer managed
    key must let Auto Scaling's service-linked role use it, or every launch of the group fails
    (EC2 Auto Scaling guide, "Required AWS KMS key policy for use with encrypted volumes")."""
    name = "EBS default key"

    def probe() -> Check:
        key = _client(target, "ec2").get_ebs_default_kms_key_id()["KmsKeyId"]
        if key.rsplit(":", 1)[-1] == AWS_MANAGED_EBS_KEY:
            return Check(name, PASS, "the AWS managed key (alias/aws/ebs) encrypts the root volume")
        kms = _client(target, "kms")
        meta = kms.describe_key(KeyId=key)["KeyMetadata"]
        if meta.get("KeyManager") == "AWS":
            return Check(name, PASS, f"{key}, an AWS managed key")
        role = f"arn:aws:iam::{meta['AWSAccountId']}:{AUTOSCALING_ROLE}"
        fix = (f"add to the policy of key {meta['KeyId']} a statement that lets {role} use it (kms:Encrypt, "
               "kms:Decrypt, kms:ReEncrypt*, kms:GenerateDataKey*, kms:DescribeKey) and one that lets it "
               "kms:CreateGrant when kms:GrantIsForAWSResource is true")
        try:
            policy = json.loads(kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
        except Exception as exc:
            if error_code(exc) not in DENIED_CODES:
                raise
            return Check(name, SKIP, f"customer managed key {meta['KeyId']}, whose policy this identity may not read; "
                         "every launch fails unless Auto Scaling's service-linked role may use it", fix)
        if not _lets_use(policy, role):
            return Check(name, FAIL, f"customer managed key {meta['KeyId']} does not let Auto Scaling's "
                         "service-linked role use it: every launch of the run's group would fail", fix)
        return Check(name, PASS, f"customer managed key {meta['KeyId']}, usable by Auto Scaling's service-linked role")

    return _guard(name, "check the account's default EBS key (EC2 console, Settings, EBS encryption)", probe)


def _lets_use(policy: dict, principal: str) -> bool:
    """Whether a key policy allows `principal` to create grants and decrypt: what launching an
    instance with a volume encrypted under the key takes."""
    allowed: set[str] = set()
    for st in policy.get("Statement", []):
        who = (st.get("Principal") or {}).get("AWS", []) if isinstance(st.get("Principal"), dict) else []
        who = [who] if isinstance(who, str) else who
        if st.get("Effect") == "Allow" and principal in who:
            actions = st.get("Action", [])
            allowed |= {actions} if isinstance(actions, str) else set(actions)
    return all(any(a in ("*", "kms:*", needed) for a in allowed) for needed in ("kms:CreateGrant", "kms:Decrypt"))


def _client(target: Target, service: str):
    from instance.protocol.aws import client

    return client(service, target.aws)
