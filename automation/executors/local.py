"""The local executor: the agent as a detached process, registered as an instance in the
sandbox's EC2 (same tags as on AWS), so kill and verify-cleanup use the same EC2 calls.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from instance.protocol.aws import AwsTarget, client, error_code
from instance.protocol.ec2 import LIVE_STATES, instances_by_tag, run_tags, tags_of
from instance.protocol.group import (CAPACITY_REBALANCE, describe_group, end_group, failed_launches, group_name,
                                     mixed_instances_policy, wants_machine)
from instance.protocol.layout import PROJECT_TAG, Layout

from .bundle import unpack_bundle
from ..settings import home
from ..settings import settings
from .base import ProvisionError, Provisioned, ProvisionRequest
from .localgroup import AGENT_PID, ENDED, PLAYER_PID, GroupSpec, start_player

def work_root() -> Path:
    return home() / "work"


def process_alive(pid: int | None, run_id: str) -> bool:
    """True when `pid` is still this run's agent or player (guards against pid reuse). A process
    still inside its exec shows no command line yet: Popen returns once the exec is committed, not
    done, and under load that window lasted long enough for a launch to call a starting player
    gone. It counts as alive."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return (run_id in cmdline or not cmdline) and state not in ("Z", "X")


class LocalExecutor:
    name = "local"

    def __init__(self, target: AwsTarget, env: str, bucket: str):
        self.target = target
        self.env = env
        self.bucket = bucket

    # Clients on first use (the process's own, from the one factory): a command that only reads
    # a run's state builds none of them.
    @property
    def ec2(self):
        return client("ec2", self.target)

    @property
    def s3(self):
        return client("s3", self.target)

    @property
    def autoscaling(self):
        return client("autoscaling", self.target)

    def provision(self, req: ProvisionRequest) -> Provisioned:
        """The run's launch template and Auto Scaling group in the sandbox, as the run stack
        declares them on AWS, and the process that plays EC2 for the group's machines."""
        run_dir = work_root() / req.run_id
        # Run from the uploaded bundle, as the instance's bootstrap would: proves the bundle
        # carries everything the agent imports.
        bundle = self.s3.get_object(Bucket=self.bucket, Key=Layout(req.env).bundle(req.run_id))["Body"].read()
        code_dir = unpack_bundle(bundle, run_dir / "code")
        spec = GroupSpec(
            run_id=req.run_id, env=req.env, bucket=self.bucket, region=self.target.region or "",
            endpoint_url=self.target.endpoint_url or "", code_dir=str(code_dir),
            max_runtime_minutes=req.config.instance.max_runtime_minutes,
            notice_seconds=settings().spot_notice.total_seconds(),
            boot_seconds=settings().sandbox_boot.total_seconds(),
            # As on EC2, the agent holds the instance role's credentials and no other AWS setting.
            # The bundle first on the path: it must carry every module the agent imports; what
            # follows only offers what CHRONOS_AGENT_HOOKS may name (the tests' seam).
            inherited_env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                           "PYTHONPATH": os.pathsep.join(filter(None, [str(code_dir), os.environ.get("PYTHONPATH")]))},
        )
        spec.save(run_dir)
        self._create_group(req)
        try:
            start_player(run_dir, {**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))})
            instance_id, failed = self._first_machine(req.run_id)
        except Exception as exc:
            end_group(self.autoscaling, req.run_id)
            raise ProvisionError(f"the local agent could not start: {exc}") from exc
        if instance_id is None:
            # As on AWS: the group could not launch (the sandbox's quota or capacity); the run waits.
            return Provisioned(instance_id=None, last_failed_launch=failed)
        zone = next(iter(req.infra.subnets), None)
        return Provisioned(instance_id=instance_id, zone=zone)

    def _create_group(self, req: ProvisionRequest) -> None:
        cfg = req.config.instance
        tags = run_tags(req.run_id, req.env, self.name)
        self.ec2.create_launch_template(
            LaunchTemplateName=req.run_id,
            LaunchTemplateData={
                "ImageId": self._ami(req.infra.ami_ssm_parameter),
                "InstanceType": cfg.instance_types[0],
                "IamInstanceProfile": {"Name": req.infra.instance_profile},
                "SecurityGroupIds": [req.infra.security_group_id],
                "InstanceInitiatedShutdownBehavior": "terminate",
                "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
                "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
            },
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
        )
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group_name(req.run_id), MinSize=0, MaxSize=1, DesiredCapacity=1,
            VPCZoneIdentifier=",".join(req.infra.subnets.values()),
            MixedInstancesPolicy=mixed_instances_policy(req.run_id, cfg.instance_types, cfg.spot),
            CapacityRebalance=CAPACITY_REBALANCE,
            Tags=[{**t, "PropagateAtLaunch": True, "ResourceId": group_name(req.run_id),
                   "ResourceType": "auto-scaling-group"} for t in tags],
        )

    def _first_machine(self, run_id: str, timeout_s: float = 60.0) -> tuple[str | None, str | None]:
        """The group's first instance once the player has booted its agent, or (None, AWS's
        words) once the group has failed to launch one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            group = describe_group(self.autoscaling, run_id) or {}
            ids = [i["InstanceId"] for i in group.get("Instances", [])]
            if ids and process_alive(self._pid(run_id), run_id):
                return ids[0], None
            failed = [] if ids else failed_launches(self.autoscaling, run_id, limit=1)
            if failed:
                return None, failed[0]
            if not process_alive(self._player_pid(run_id), run_id):
                # Its output is removed with the run's folder when the launch tears down: say it here.
                out = work_root() / run_id / "group.stdout"
                said = out.read_text(errors="replace").strip().splitlines()[-5:] if out.exists() else []
                raise RuntimeError("the group's player exited: " + (" | ".join(said) or "it said nothing"))
            time.sleep(0.1)
        raise RuntimeError(f"no machine came up in {timeout_s:.0f} s")

    def _ami(self, parameter: str) -> str:
        return client("ssm", self.target).get_parameter(Name=parameter)["Parameter"]["Value"]

    # -- the machine's life, seen through EC2 --------------------------------------------------
    def _pid(self, run_id: str, name: str = AGENT_PID) -> int | None:
        return _read_pid(work_root() / run_id / name)

    def _player_pid(self, run_id: str) -> int | None:
        return self._pid(run_id, PLAYER_PID)

    def reconcile(self) -> list[str]:
        """Make EC2 report a machine whose agent process is gone as EC2 would: it powered off
        (stopped, on the worse reading, unless the agent terminated it). While the run's group
        player lives, it plays that end itself within a poll (and the group's health check after
        it): that is waited for, not done here."""
        ended = []
        for inst in self.instances(states=("pending", "running")):
            tags = tags_of(inst)
            if tags.get("Executor") == self.name and self.reconcile_machine(tags.get("RunId", ""), inst["InstanceId"]):
                ended.append(inst["InstanceId"])
        return ended

    def reconcile_machine(self, run_id: str, instance_id: str) -> bool:
        """`reconcile` for one machine EC2 calls live, from local facts only (its processes): True
        when its agent is gone, once EC2's record of it has ended (powered off: stopped)."""
        from ..sandbox.poweroff import power_off

        machine = work_root() / run_id / "agents" / instance_id
        if process_alive(self._player_pid(run_id), run_id):
            booted = _read_pid(machine / AGENT_PID)
            if booted and not process_alive(booted, run_id):
                self._await_player_end(machine / ENDED)
                return True
            return False
        if not process_alive(self._pid(run_id), run_id):
            power_off(self._ec2_service(), instance_id)
            return True
        return False

    def _ec2_service(self):
        """EC2 itself (the sandbox's stand-in), which the operator is not: only it stops a machine."""
        from ..sandbox.strictmoto import EC2_SERVICE

        return client("ec2", AwsTarget(self.target.region, self.target.endpoint_url, EC2_SERVICE.credentials))

    def _await_player_end(self, played: Path, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not played.exists():
            time.sleep(0.05)

    def instances(self, states=LIVE_STATES) -> list[dict]:
        return instances_by_tag(self.ec2, {"Project": PROJECT_TAG}, states)

    def terminate(self, run_id: str, instance_id: str | None) -> None:
        """Kill the run's agent (and the player, once its group wants nothing) and end the
        instance. The caller has set the group to 0 machines first (ending.end_machines)."""
        group = describe_group(self.autoscaling, run_id)
        if group is None or not wants_machine(group):
            self._stop_player(run_id)
        pid = self._pid(run_id)
        if _kill_group(pid, run_id):
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
        self._delete_group(run_id)
        run_dir = work_root() / run_id
        if process_alive(self._pid(run_id), run_id) or not run_dir.exists():
            return
        # The agent uploads its own log; its raw stdout only matters when it died before logging.
        stdout = run_dir / "agent.stdout"
        if stdout.exists() and stdout.stat().st_size:
            self.s3.put_object(Bucket=self.bucket, Key=Layout(self.env).logs(run_id) + "agent.stdout",
                               Body=stdout.read_bytes())
        shutil.rmtree(run_dir, ignore_errors=True)

    def _stop_player(self, run_id: str) -> None:
        _kill_group(self._player_pid(run_id), run_id)

    def _delete_group(self, run_id: str) -> None:
        """What the run stack's destroy removes on AWS: the group and its launch template."""
        self._stop_player(run_id)
        try:
            self.autoscaling.delete_auto_scaling_group(AutoScalingGroupName=group_name(run_id), ForceDelete=True)
        except Exception as exc:
            if error_code(exc) != "ValidationError":
                raise
        try:
            self.ec2.delete_launch_template(LaunchTemplateName=run_id)
        except Exception as exc:
            if not error_code(exc).startswith("InvalidLaunchTemplateName"):
                raise

    def leftover_stacks(self) -> list[str]:
        return []

    def preview(self, req: ProvisionRequest) -> None:
        return None  # no stack to preview: the agent runs as a local process


def request_spot_notice(target, run_id: str | None, rebalance: bool = False) -> tuple[str, float]:
    """`sandbox interrupt`: EC2's spot notice (or, with rebalance, its rebalance recommendation)
    for the active local run's machine. (run id, seconds until the machine is taken)."""
    from ..errors import BadInput, NoSuchRun
    from .localgroup import request_interrupt

    lease = target.state_store().read()
    if lease is None:
        raise NoSuchRun(f"no run is active in env {target.env}; launch one with `chronos-train --local launch`")
    if run_id and lease.run_id != run_id:
        raise NoSuchRun(f"run {run_id} is not active; the active run is {lease.run_id}")
    run_dir = work_root() / lease.run_id
    if lease.state.get("executor") != "local" or not process_alive(_read_pid(run_dir / PLAYER_PID), lease.run_id):
        raise BadInput(f"run {lease.run_id} has no local machine group on this computer to interrupt "
                       "(only a --local run launched here can be)")
    request_interrupt(run_dir, rebalance)
    return lease.run_id, GroupSpec.load(run_dir).notice_seconds


def _kill_group(pid: int | None, run_id: str) -> bool:
    """SIGKILL the process group of `pid` if it is still this run's; True when it was."""
    if not process_alive(pid, run_id):
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None
