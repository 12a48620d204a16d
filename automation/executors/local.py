"""The local executor: the agent as a detached process, registered as an instance in the
sandbox's EC2 (same tags as on AWS), so kill and verify-cleanup use the same EC2 calls.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from instance.protocol.aws import AwsTarget, client
from instance.protocol.ec2 import LIVE_STATES, instances_by_tag, run_tags, tags_of
from instance.protocol.layout import PROJECT_TAG, Layout

from ..bundle import unpack_bundle
from ..context import home
from ..sandbox import instance_credentials
from .base import ProvisionError, Provisioned, ProvisionRequest

def work_root() -> Path:
    return home() / "work"


def process_alive(pid: int | None, run_id: str) -> bool:
    """True when `pid` is still this run's agent (guards against pid reuse)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return run_id in cmdline and state not in ("Z", "X")


class LocalExecutor:
    name = "local"

    def __init__(self, target: AwsTarget, env: str, bucket: str):
        self.target = target
        self.env = env
        self.bucket = bucket
        self.ec2 = client("ec2", target)
        self.s3 = client("s3", target)

    def provision(self, req: ProvisionRequest) -> Provisioned:
        zone, subnet = next(iter(req.infra.subnets.items()))
        resp = self.ec2.run_instances(
            ImageId=self._ami(req.infra.ami_ssm_parameter),
            InstanceType=req.config.instance.type,
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            SecurityGroupIds=[req.infra.security_group_id],
            IamInstanceProfile={"Name": req.infra.instance_profile},
            InstanceInitiatedShutdownBehavior="terminate",
            MetadataOptions={"HttpTokens": "required"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": run_tags(req.run_id, req.env, self.name)}],
        )
        instance_id = resp["Instances"][0]["InstanceId"]
        try:
            self._start_agent(req, instance_id)
        except Exception as exc:
            self.ec2.terminate_instances(InstanceIds=[instance_id])
            raise ProvisionError(f"the local agent could not start: {exc}") from exc
        return Provisioned(instance_id=instance_id, zone=zone)

    def _ami(self, parameter: str) -> str:
        return client("ssm", self.target).get_parameter(Name=parameter)["Parameter"]["Value"]

    def _start_agent(self, req: ProvisionRequest, instance_id: str) -> int:
        # Run from the uploaded bundle, as the instance's bootstrap would: proves the bundle
        # carries everything the agent imports.
        run_dir = work_root() / req.run_id
        bundle = self.s3.get_object(Bucket=self.bucket, Key=Layout(req.env).bundle(req.run_id))["Body"].read()
        code_dir = unpack_bundle(bundle, run_dir / "code")
        # As on EC2, the agent holds the instance role's credentials and no other AWS setting.
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            **instance_credentials(self.target, req.env, instance_id),
            # The bundle first: it must carry every module the agent imports. What follows only
            # offers what CHRONOS_AGENT_HOOKS may name (the tests' seam).
            "PYTHONPATH": os.pathsep.join(filter(None, [str(code_dir), os.environ.get("PYTHONPATH")])),
            "AWS_ENDPOINT_URL": self.target.endpoint_url or "",
            "AWS_DEFAULT_REGION": self.target.region or "",
            "XDG_CACHE_HOME": str(run_dir / "cache"),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [
            sys.executable, "-m", "instance.agent",
            "--env", req.env, "--bucket", self.bucket, "--run-id", req.run_id,
            "--region", self.target.region or "", "--endpoint-url", self.target.endpoint_url or "",
            "--instance-id", instance_id, "--local", "--work-dir", str(run_dir / "agent"),
            # What the bootstrap hands over on EC2: the dead-man switch's time, on this clock.
            "--shutdown-at", str(int(time.time()) + req.config.instance.max_runtime_minutes * 60),
        ]
        with open(run_dir / "agent.stdout", "ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=code_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        (run_dir / "agent.pid").write_text(str(proc.pid))
        return proc.pid

    # -- the machine's life, seen through EC2 --------------------------------------------------
    def _pid(self, run_id: str) -> int | None:
        try:
            return int((work_root() / run_id / "agent.pid").read_text())
        except (OSError, ValueError):
            return None

    def reconcile(self) -> list[str]:
        """Mark instance records whose agent process is gone as terminated (the machine died)."""
        ended = []
        for inst in self.instances(states=("pending", "running")):
            tags = tags_of(inst)
            if tags.get("Executor") != self.name:
                continue
            run_id = tags.get("RunId", "")
            if not process_alive(self._pid(run_id), run_id):
                self.ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
                ended.append(inst["InstanceId"])
        return ended

    def instances(self, states=LIVE_STATES) -> list[dict]:
        return instances_by_tag(self.ec2, {"Project": PROJECT_TAG}, states)

    def terminate(self, run_id: str, instance_id: str | None) -> None:
        pid = self._pid(run_id)
        if process_alive(pid, run_id):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while process_alive(pid, run_id) and time.monotonic() < deadline:
                time.sleep(0.05)
        if instance_id:
            self.ec2.terminate_instances(InstanceIds=[instance_id])

    def finalize(self, run_id: str, grace_s: float = 30.0) -> None:
        # The agent writes its last records after releasing the lock: let it exit by itself
        # before anything is killed.
        pid = self._pid(run_id)
        deadline = time.monotonic() + grace_s
        while process_alive(pid, run_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        for inst in self.instances():
            tags = tags_of(inst)
            if tags.get("RunId") == run_id:
                self.terminate(run_id, inst["InstanceId"])
        run_dir = work_root() / run_id
        if process_alive(self._pid(run_id), run_id) or not run_dir.exists():
            return
        # The agent uploads its own log; its raw stdout only matters when it died before logging.
        stdout = run_dir / "agent.stdout"
        if stdout.exists() and stdout.stat().st_size:
            self.s3.put_object(Bucket=self.bucket, Key=Layout(self.env).logs(run_id) + "agent.stdout",
                               Body=stdout.read_bytes())
        shutil.rmtree(run_dir, ignore_errors=True)

    def leftover_stacks(self) -> list[str]:
        return []

    def preview(self, req: ProvisionRequest) -> None:
        return None  # no stack to preview: the agent runs as a local process
