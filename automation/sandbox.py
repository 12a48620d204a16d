"""The embedded AWS stand-in for --local: a moto server process on loopback, seeded like a
deployed persistent stack (bucket, infra.json, VPC, subnets, security group, instance profile).
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

from instance.protocol.aws import AwsTarget, client, is_not_found
from instance.protocol.layout import KNOWN_ENVS, Layout, bucket_name

from . import motoserver
from .context import home
from .infra_record import InfraRecord

REGION = "us-east-1"
ZONES = ("us-east-1a", "us-east-1b")
SANDBOX_AMI = "ami-0c0ffee00c0ffee00"
# moto reserves /aws/ parameter names, so the sandbox publishes its AMI under its own name;
# infra.json carries the parameter name, so launches read it like the real one.
SANDBOX_AMI_PARAMETER = "/chronos-training/sandbox/ami-id"


@dataclass(frozen=True)
class SandboxInfo:
    endpoint_url: str
    region: str
    account: str
    pid: int | None

    def bucket(self, env: str) -> str:
        return bucket_name(env, self.account, self.region)

    def to_json(self, env: str) -> dict:
        return {**asdict(self), "bucket": self.bucket(env)}


def _dir() -> Path:
    path = home() / "sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record_path() -> Path:
    return _dir() / "sandbox.json"


def _external() -> SandboxInfo | None:
    """CHRONOS_SANDBOX_URL adopts a moto server someone else runs (the tests' fixture)."""
    url = os.environ.get("CHRONOS_SANDBOX_URL")
    return SandboxInfo(url.rstrip("/"), REGION, motoserver.SANDBOX_ACCOUNT, None) if url else None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status() -> SandboxInfo | None:
    external = _external()
    if external:
        return external if motoserver.is_up(external.endpoint_url) else None
    try:
        info = SandboxInfo(**json.loads(_record_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _pid_alive(info.pid) and motoserver.is_up(info.endpoint_url):
        return info
    return None


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
    """Start moto (unless running) and seed each env that is not seeded yet."""
    with _start_lock():
        info = status()
        if info is None:
            if _external():
                raise RuntimeError(f"the sandbox at {os.environ['CHRONOS_SANDBOX_URL']} does not answer")
            port = motoserver.free_port()
            proc = motoserver.start(port, log_path=_dir() / "moto.log", detach=True)
            info = SandboxInfo(f"http://127.0.0.1:{port}", REGION, motoserver.SANDBOX_ACCOUNT, proc.pid)
            from instance.protocol.artifacts import write_json_atomic

            write_json_atomic(_record_path(), asdict(info))
        export_credentials()
        for env in envs:
            if not _seeded(info, env):
                seed(info, env)
        return info


def ensure_running(env: str) -> SandboxInfo:
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
    while _pid_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    _record_path().unlink(missing_ok=True)
    return True


def export_credentials() -> None:
    """moto accepts any credentials; these keep boto3 (and child processes) off real ones."""
    os.environ.update(motoserver.SANDBOX_CREDENTIALS)
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def _seeded(info: SandboxInfo, env: str) -> bool:
    export_credentials()
    s3 = client("s3", AwsTarget(info.region, info.endpoint_url))
    try:
        s3.head_object(Bucket=info.bucket(env), Key=Layout(env).infra)
        return True
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise


def seed(info: SandboxInfo, env: str) -> InfraRecord:
    """Create what `pulumi up` would have made for `env`. Idempotent."""
    target = AwsTarget(info.region, info.endpoint_url)
    s3, ec2, iam, ssm = (client(s, target) for s in ("s3", "ec2", "iam", "ssm"))
    bucket = info.bucket(env)
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
    role = f"chronos-training-{env}-instance"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }))
    profile = iam.create_instance_profile(InstanceProfileName=role)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    ssm.put_parameter(Name=SANDBOX_AMI_PARAMETER, Value=SANDBOX_AMI, Type="String", Overwrite=True)
    record = InfraRecord(
        env=env, region=info.region, account=info.account, bucket=bucket, vpc_id=vpc, subnets=subnets,
        security_group_id=sg, instance_profile=role, instance_profile_arn=profile["Arn"],
        ami_ssm_parameter=SANDBOX_AMI_PARAMETER, extra={"sandbox": True},
    )
    put_json(s3, bucket, layout.infra, json.loads(record.to_json()))
    return record


def _bucket_exists(s3, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise
