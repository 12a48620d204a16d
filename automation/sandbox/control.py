"""The embedded AWS stand-in for --local: a moto server process on loopback, seeded like a
deployed persistent stack (bucket, infra.json, VPC, subnets, security group, instance role and
profile, operator policy), with IAM enforced (automation/sandbox/strictmoto.py).

Three kinds of caller, as on AWS: the deployer seeds (what `pulumi up` does as an admin), the
CLI acts as the environment's operator (exactly the operator policy), and the agent as the
instance role, whose credentials the EC2 stand-in obtains for it (`instance_credentials`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from instance.protocol.aws import AwsTarget, client, is_not_found
from instance.protocol.layout import KNOWN_ENVS, Layout, bucket_name
from instance.protocol.processes import pid_alive

from ..settings import home
from .strictmoto import DEPLOYER, EC2_SERVICE, OPERATORS, SANDBOX_ACCOUNT, Identity

if TYPE_CHECKING:
    from ..infra_record import InfraRecord

# Every --local command comes through here (`ensure_running`, `export_credentials`): the server's
# start-up, its HTTP probe and the seeding (policies, infra record) are imported where they are used.
MOTOSERVER = f"{__package__}.motoserver"

REGION = "us-east-1"
ZONES = ("us-east-1a", "us-east-1b")
# moto reserves /aws/ parameter names, so the sandbox publishes its AMI under its own name;
# infra.json carries the parameter name, so launches read it like the real one.
SANDBOX_AMI_PARAMETER = "/chronos-training/sandbox/ami-id"
# How long a sandbox that took the connection may take to answer before it counts as down: many
# --local commands at once keep moto (one GIL) busy for seconds (the lock-race test runs 16).
BUSY_PATIENCE_S = 15.0


@dataclass(frozen=True)
class SandboxInfo:
    endpoint_url: str
    region: str
    account: str
    pid: int | None

    def bucket(self, env: str) -> str:
        return bucket_name(env, self.account, self.region)

    def target(self, identity: Identity) -> AwsTarget:
        return AwsTarget(self.region, self.endpoint_url, identity.credentials)

    def to_json(self, env: str) -> dict:
        """What `sandbox status --json` shows: where it is and the env's operator credentials."""
        return {**asdict(self), "bucket": self.bucket(env), **env_vars(self, env)}


def env_vars(info: SandboxInfo, env: str) -> dict[str, str]:
    """The variables that point awscli, boto3 and chronos-train at the sandbox as `env`'s operator."""
    op = OPERATORS[env]
    return {"AWS_ENDPOINT_URL": info.endpoint_url, "AWS_REGION": info.region, "AWS_DEFAULT_REGION": info.region,
            "AWS_ACCESS_KEY_ID": op.access_key_id, "AWS_SECRET_ACCESS_KEY": op.secret_access_key}


def _dir() -> Path:
    path = home() / "sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record_path() -> Path:
    return _dir() / "sandbox.json"


def _external() -> SandboxInfo | None:
    """CHRONOS_SANDBOX_URL adopts a moto server someone else runs (the tests' fixture)."""
    url = os.environ.get("CHRONOS_SANDBOX_URL")
    return SandboxInfo(url.rstrip("/"), REGION, SANDBOX_ACCOUNT, None) if url else None


def status() -> SandboxInfo | None:
    """The sandbox, if it answers (asked over HTTP: for the sandbox's own commands)."""
    from . import motoserver

    external = _external()
    if external:
        return external if motoserver.is_up(external.endpoint_url, patience_s=BUSY_PATIENCE_S) else None
    found = _read_record()
    if found and _server_alive(found[0]) and motoserver.is_up(found[0].endpoint_url, patience_s=BUSY_PATIENCE_S):
        return found[0]
    return None


def _read_record() -> tuple[SandboxInfo, frozenset[str]] | None:
    """The record `start` wrote: where the server is, and the envs seeded in it since it started."""
    try:
        doc = json.loads(_record_path().read_text())
        return SandboxInfo(**{k: doc[k] for k in ("endpoint_url", "region", "account", "pid")}), \
            frozenset(doc.get("seeded") or ())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_record(info: SandboxInfo, seeded) -> None:
    from instance.protocol.artifacts import write_json_atomic

    write_json_atomic(_record_path(), {**asdict(info), "seeded": sorted(seeded)})


def _server_alive(info: SandboxInfo) -> bool:
    """The recorded server process still runs (and, where /proc tells, is still our moto server,
    not another process that got its pid after a reboot)."""
    if not pid_alive(info.pid):
        return False
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): the pid is all there is to go on
    return MOTOSERVER.encode() in cmdline


@contextlib.contextmanager
def _start_lock():
    # Many `--local` commands may start at once (the lock-race test runs 16): one starts moto.
    with open(_dir() / "start.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start(envs: tuple[str, ...] = KNOWN_ENVS) -> SandboxInfo:
    """Start moto (unless running) and make sure each env is seeded: asked of the server (one
    HEAD each), seeded when it is not, and recorded as seeded for `ensure_running`."""
    from . import motoserver

    with _start_lock():
        info = status()
        if info is None:
            if _external():
                raise RuntimeError(f"the sandbox at {os.environ['CHRONOS_SANDBOX_URL']} does not answer")
            port = motoserver.free_port()
            proc = motoserver.start(port, log_path=_dir() / "moto.log", detach=True)
            info = SandboxInfo(f"http://127.0.0.1:{port}", REGION, SANDBOX_ACCOUNT, proc.pid)
            _write_record(info, ())
        for env in envs:
            if not _seeded(info, env):
                seed(info, env)
        if not _external():
            found = _read_record()
            _write_record(info, (found[1] if found else frozenset()) | set(envs))
        return info


def ensure_running(env: str) -> SandboxInfo:
    """The sandbox for a --local command, started and seeded if need be. Every --local command
    asks, so the answer is a local fact: the record says the server was started and `env` seeded
    in it, and its process still runs; no request. (A server gone since is seen here; one that
    hangs is seen by the command's first call, whose error says to start the sandbox.) Commands
    that build on the seeding (launch) call `start`, which asks the server itself.

    A sandbox someone else runs (CHRONOS_SANDBOX_URL: the tests' fixture, reset between tests)
    has no record here: it is asked each time whether it answers and is seeded."""
    if not _external():
        found = _read_record()
        if found and env in found[1] and _server_alive(found[0]):
            return found[0]
        return start((env,))
    info = status()
    if info is not None and _seeded(info, env):
        return info
    return start((env,))


def stop() -> bool:
    info = status()
    if info is None or info.pid is None:
        _record_path().unlink(missing_ok=True)
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    _record_path().unlink(missing_ok=True)
    return True


def export_credentials(env: str) -> None:
    """This process (the CLI) acts as `env`'s operator; real credentials in the shell never reach
    the sandbox, and the sandbox's never reach AWS."""
    os.environ.update(OPERATORS[env].env())
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def _seeded(info: SandboxInfo, env: str) -> bool:
    s3 = client("s3", info.target(DEPLOYER))
    try:
        s3.head_object(Bucket=info.bucket(env), Key=Layout(env).infra)
        return True
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise


def instance_role_name(env: str) -> str:
    return f"chronos-training-{env}-instance"


def seed(info: SandboxInfo, env: str) -> InfraRecord:
    """Create, as the deployer, what `pulumi up` would have made for `env`, with the policies
    the persistent stack deploys. Idempotent."""
    from ..infra_record import InfraRecord
    from ..stacks.policies import instance_policy, operator_policy

    target = info.target(DEPLOYER)
    s3, ec2, ssm = (client(s, target) for s in ("s3", "ec2", "ssm"))
    bucket = info.bucket(env)
    bucket_arn = f"arn:aws:s3:::{bucket}"
    layout = Layout(env)
    from instance.protocol.artifacts import put_json

    if not _bucket_exists(s3, bucket):
        s3.create_bucket(Bucket=bucket)
    tags = [{"Key": "Project", "Value": "Chronos-Training"}, {"Key": "Environment", "Value": env}]
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}])["Vpc"]["VpcId"]
    subnets = {
        zone: ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for i, zone in enumerate(ZONES)
    }
    sg = ec2.create_security_group(GroupName=f"chronos-training-{env}", Description="egress 443 only", VpcId=vpc)["GroupId"]
    role_arn, profile_arn = put_instance_role(target, env, instance_policy(bucket_arn, env, info.region, info.account))
    ssm.put_parameter(Name=SANDBOX_AMI_PARAMETER, Value=sandbox_ami(ec2), Type="String", Overwrite=True)
    operator_arn = put_operator_policy(target, env, operator_policy(bucket_arn, env, info.region, info.account, vpc, role_arn,
                                                          profile_arn, SANDBOX_AMI_PARAMETER))
    record = InfraRecord(
        env=env, region=info.region, account=info.account, bucket=bucket, vpc_id=vpc, subnets=subnets,
        security_group_id=sg, instance_profile=instance_role_name(env), instance_profile_arn=profile_arn,
        operator_policy_arn=operator_arn, ami_ssm_parameter=SANDBOX_AMI_PARAMETER, extra={"sandbox": True},
    )
    put_json(s3, bucket, layout.infra, json.loads(record.to_json()))
    return record


def sandbox_ami(ec2) -> str:
    """An Amazon-owned Linux image moto ships, as the Deep Learning AMI is Amazon's on AWS: the
    run program looks the parameter's image up among Amazon's (`get_ami(owners=["amazon"])`)."""
    images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["ubuntu/images/*"]}])["Images"]
    return min(image["ImageId"] for image in images)


def put_instance_role(target: AwsTarget, env: str, policy: dict) -> tuple[str, str]:
    from ..stacks.policies import assume_role_policy

    iam = client("iam", target)
    name = instance_role_name(env)
    try:
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(assume_role_policy()))["Role"]
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    except iam.exceptions.EntityAlreadyExistsException:
        role = iam.get_role(RoleName=name)["Role"]
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.put_role_policy(RoleName=name, PolicyName="instance", PolicyDocument=json.dumps(policy))
    return role["Arn"], profile["Arn"]


def put_operator_policy(target: AwsTarget, env: str, policy: dict) -> str:
    """The env's operator user holds exactly the operator policy, as docs/deploy.md asks of a person."""
    iam = client("iam", target)
    name = f"chronos-training-{env}-operator"
    arn = f"arn:aws:iam::{SANDBOX_ACCOUNT}:policy/{name}"
    try:
        iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(policy))
    except iam.exceptions.EntityAlreadyExistsException:
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(policy), SetAsDefault=True)
    iam.attach_user_policy(UserName=OPERATORS[env].user, PolicyArn=arn)
    return arn


def instance_credentials(info_or_target: SandboxInfo | AwsTarget, env: str, instance_id: str) -> dict[str, str]:
    """What IMDS gives the machine on AWS: the instance role's credentials, for a session named
    after the instance. The EC2 stand-in asks for them; nobody else may."""
    base = info_or_target if isinstance(info_or_target, AwsTarget) else AwsTarget(info_or_target.region,
                                                                                  info_or_target.endpoint_url)
    ec2_service = AwsTarget(base.region, base.endpoint_url, EC2_SERVICE.credentials)
    iam, sts = client("iam", ec2_service), client("sts", ec2_service)
    role = iam.get_instance_profile(InstanceProfileName=instance_role_name(env))["InstanceProfile"]["Roles"][0]
    creds = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=instance_id)["Credentials"]
    return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"]}


def _bucket_exists(s3, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise
