"""Synthetic datasets and a launcher stand-in for the agent tests: lock, run.yaml, data and a
sandbox instance record, set up the way the real launcher leaves them."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from automation.sandbox import motoserver
from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import Layout, new_run_id
from instance.protocol.state import StateStore

ROOT = Path(__file__).resolve().parents[1]
DATA_PREFIX = "cached-datasets/2026/11/"

# Small enough that the agent trains, evaluates and uploads in a few seconds on a laptop CPU.
TINY_TRAINING = dict(prediction_length=8, context_length=64, num_steps=20, batch_size=16, learning_rate=1.0e-3)


def synthetic_frame(n_items: int = 6, length: int = 96, freq: str = "h", seed: int = 0, covariate: bool = True):
    """Daily-seasonal series with noise and a level per item; one numeric covariate."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_items):
        t = np.arange(length)
        target = 10 + i + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, length)
        cols = {"item_id": f"item-{i}", "timestamp": pd.date_range("2026-11-01", periods=length, freq=freq), "target": target}
        if covariate:
            cols["temperature"] = 15 + 5 * np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.5, length)
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def parquet_bytes(frame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def write_parquet(path: Path, frame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def run_config(dataset: str = DATA_PREFIX, base: str = "scratch:tiny", **training: Any) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "model": {"base": base, "finetune_mode": "full"},
        "training": {**TINY_TRAINING, **training},
        "instance": {"type": "g4dn.xlarge", "spot": False, "max_runtime_minutes": 60},
    }


@dataclass
class LaunchedRun:
    run_id: str
    env: str
    bucket: str
    instance_id: str
    aws: AwsTarget

    @property
    def layout(self) -> Layout:
        return Layout(self.env)


def upload_dataset(s3, bucket: str, files: dict[str, bytes], prefix: str = DATA_PREFIX) -> None:
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=body)


@dataclass
class Seeded:
    """A sandbox seeded for agent runs: `aws` and `s3` act as the deployer (seeding, planting,
    launching as the launcher would); the bucket holds a dataset under DATA_PREFIX."""

    aws: AwsTarget
    s3: Any
    bucket: str


def seeded_sandbox(endpoint_url: str, files: dict[str, bytes], deployed: bool = False) -> Seeded:
    """A fresh sandbox (reset) whose bucket holds `files` under DATA_PREFIX, seeded by the deployer
    by its named credentials, never through os.environ. `deployed`: the persistent stack's bucket
    and roles (what `pulumi up` leaves), for tests whose operator reads what the run left; else a
    bare bucket."""
    from automation.sandbox.control import SandboxInfo, seed
    from automation.sandbox.strictmoto import DEPLOYER
    from instance.protocol.layout import bucket_name
    from tests.conftest import ENV, REGION

    motoserver.reset(endpoint_url)
    aws = AwsTarget(region=REGION, endpoint_url=endpoint_url, credentials=DEPLOYER.credentials)
    s3 = client("s3", aws)
    if deployed:
        bucket = seed(SandboxInfo(endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), ENV).bucket
    else:
        bucket = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
        s3.create_bucket(Bucket=bucket)
    upload_dataset(s3, bucket, files)
    return Seeded(aws, s3, bucket)


def instance_role(aws: AwsTarget, env: str, bucket: str, policy: dict | None = None) -> None:
    """The persistent stack's instance role and profile (its policy, unless one is given)."""
    from automation.sandbox.control import put_instance_role
    from automation.stacks.policies import instance_policy

    put_instance_role(aws, env, policy or instance_policy(f"arn:aws:s3:::{bucket}", env, aws.region, motoserver.SANDBOX_ACCOUNT))


def launch(s3, bucket: str, aws: AwsTarget, env: str, config: dict[str, Any], run_id: str | None = None) -> LaunchedRun:
    """What the launcher does before the agent starts: lock, run.yaml, a sandbox instance, and
    the instance role the agent's credentials come from."""
    run_id = run_id or new_run_id()
    instance_role(aws, env, bucket)
    ec2 = client("ec2", aws)
    instance_id = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    StateStore(s3, bucket, env).acquire(
        run_id, instance_id=instance_id, executor="local", instance_type=config["instance"]["type"], spot=config["instance"]["spot"]
    )
    s3.put_object(Bucket=bucket, Key=Layout(env).run_config(run_id), Body=yaml.safe_dump(config).encode())
    return LaunchedRun(run_id, env, bucket, instance_id, aws)


def agent_env(run: LaunchedRun, tmp: Path, **extra: str) -> dict[str, str]:
    """The agent's environment on a machine: the instance role's credentials, nothing else of AWS."""
    from automation.sandbox.control import instance_credentials

    aws = run.aws
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOS_", "AWS_"))}
    env.update(instance_credentials(aws, run.env, run.instance_id))
    env.update(
        AWS_ENDPOINT_URL=aws.endpoint_url,
        AWS_DEFAULT_REGION=aws.region,
        XDG_CACHE_HOME=str(tmp / "cache"),
        HF_HUB_OFFLINE="1",
        CHRONOS_HEARTBEAT_SECONDS="1",
        CHRONOS_LOG_UPLOAD_SECONDS="1",
        PYTHONPATH=str(ROOT),
        CHRONOS_AGENT_HOOKS="tests.agent_hooks:EnvFaults",
    )
    env.update(extra)
    return env


def agent_command(run: LaunchedRun, work_dir: Path | None = None) -> list[str]:
    cmd = [
        sys.executable, "-m", "instance.agent", "--env", run.env, "--bucket", run.bucket, "--run-id", run.run_id,
        "--region", run.aws.region, "--endpoint-url", run.aws.endpoint_url, "--instance-id", run.instance_id, "--local",
    ]
    if work_dir is not None:
        cmd += ["--work-dir", str(work_dir)]
    return cmd


def run_agent(run: LaunchedRun, tmp: Path, timeout: float = 120, work_dir: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        agent_command(run, work_dir), env=agent_env(run, tmp, **extra), cwd=ROOT,
        capture_output=True, text=True, timeout=timeout,
    )


def start_agent(run: LaunchedRun, tmp: Path, work_dir: Path | None = None, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        agent_command(run, work_dir), env=agent_env(run, tmp, **extra), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def get_json(s3, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def instance_state(aws: AwsTarget, instance_id: str) -> str:
    resp = client("ec2", aws).describe_instances(InstanceIds=[instance_id])
    return resp["Reservations"][0]["Instances"][0]["State"]["Name"]


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


# -- a stand-in for the `aws` CLI ----------------------------------------------------------------
def fake_aws_main(argv: list[str]) -> int:
    """The commands the bootstrap uses (`s3 cp` between a local file and S3, `s3api head-object`,
    and the two ways it ends its machine: `autoscaling detach-instances` /
    `update-auto-scaling-group`, `ec2 terminate-instances`), over boto3 against the sandbox with
    whatever credentials the caller holds. Arguments and exit codes follow the real CLI (a
    service error: exit 254, "An error occurred (Code) when calling the X operation")."""
    import boto3

    opts, rest = {}, []
    it = iter(argv)
    for arg in it:
        if arg in ("--region", "--endpoint-url"):
            opts[arg] = next(it)
        elif arg != "--only-show-errors":
            rest.append(arg)
    if rest[0] in ("autoscaling", "ec2"):
        from botocore.config import Config

        # moto answers a DetachInstances on a group it lacks with a 500 (AWS: ValidationError):
        # not retried here, or every group-less boot would wait out botocore's backoff.
        return _fake_aws_call(boto3.client(rest[0], region_name=opts.get("--region"),
                                           endpoint_url=opts.get("--endpoint-url"),
                                           config=Config(retries={"max_attempts": 1})), rest[1], rest[2:])
    s3 = boto3.client("s3", region_name=opts.get("--region"), endpoint_url=opts.get("--endpoint-url"))
    if rest[:2] == ["s3", "cp"]:
        src, dst = rest[2], rest[3]
        try:
            if src.startswith("s3://"):
                bucket, key = src[5:].split("/", 1)
                if dst == "-":  # to standard output, as the real CLI streams
                    s3.download_fileobj(bucket, key, sys.stdout.buffer)
                    sys.stdout.flush()
                else:
                    s3.download_file(bucket, key, dst)
            else:
                bucket, key = dst[5:].split("/", 1)
                s3.upload_file(src, bucket, key)
        except Exception as exc:
            print(f"fatal error: {exc}", file=sys.stderr)
            return 1
        return 0
    if rest[:2] == ["s3api", "head-object"]:
        bucket, key = rest[rest.index("--bucket") + 1], rest[rest.index("--key") + 1]
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except s3.exceptions.ClientError as exc:
            code = exc.response["Error"]["Code"]
            print(f"An error occurred ({code}) when calling the HeadObject operation: Not Found", file=sys.stderr)
            return 254
        return 0
    print(f"fake aws: unsupported command {rest}", file=sys.stderr)
    return 2


# The real CLI's options for the calls the bootstrap makes, as botocore parameters.
_CALLS = {
    "detach-instances": ("detach_instances", {"--auto-scaling-group-name": "AutoScalingGroupName",
                                              "--instance-ids": "InstanceIds"},
                         {"--should-decrement-desired-capacity": ("ShouldDecrementDesiredCapacity", True)}),
    "update-auto-scaling-group": ("update_auto_scaling_group", {"--auto-scaling-group-name": "AutoScalingGroupName",
                                                                "--min-size": "MinSize",
                                                                "--desired-capacity": "DesiredCapacity"}, {}),
    "terminate-instances": ("terminate_instances", {"--instance-ids": "InstanceIds"}, {}),
}


def _fake_aws_call(api, command: str, args: list[str]) -> int:
    method, valued, flags = _CALLS[command]
    params: dict[str, Any] = {}
    it = iter(args)
    for arg in it:
        if arg in flags:
            params[flags[arg][0]] = flags[arg][1]
            continue
        value = next(it)
        name = valued[arg]
        params[name] = [value] if name.endswith("Ids") else int(value) if name.endswith(("Size", "Capacity")) else value
    try:
        print(json.dumps(getattr(api, method)(**params), default=str))
    except api.exceptions.ClientError as exc:
        error = exc.response["Error"]
        print(f"An error occurred ({error['Code']}) when calling the {exc.operation_name} operation: "
              f"{error.get('Message', '')}", file=sys.stderr)
        return 254
    except Exception as exc:  # noqa: BLE001 - the real CLI's answer to an unreadable reply
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 255
    return 0


def install_fake_aws(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "aws"
    code = "import sys; from tests.agent_fixtures import fake_aws_main; sys.exit(fake_aws_main(sys.argv[1:]))"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -c "{code}" "$@"\n')
    script.chmod(0o755)
    return script
