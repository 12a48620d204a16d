"""EC2 executor: one Pulumi run stack per run, holding one self-terminating GPU instance.

The orchestration lives here and talks to Pulumi only through `StackOps` (run_stacks.py), so
nothing in this module imports pulumi; the stack program itself is imported only by the seam.
Ending a machine goes straight to EC2 (by the run's tag), never through Pulumi.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from instance.protocol.aws import AwsTarget, client, error_code
from instance.protocol.ec2 import instances_by_tag

from ..interrupts import sigint_deferred
from .base import ProvisionError, ProvisionRequest, Provisioned
from .run_stacks import PulumiStackOps, StackCommandFailed, StackMissing, StackOps, ToolingMissing

log = logging.getLogger(__name__)

# The AWS error codes `up` can be refused with, compared whole (never searched for in text). `up`
# creates a launch template and an Auto Scaling group and returns: RunInstances' own refusals
# (VcpuLimitExceeded, InsufficientInstanceCapacity...) come later, in the group's scaling
# activities (automation/runs/capacity.py), and make a run wait, not a launch fail.
QUOTA_CODES = frozenset({"LimitExceeded"})  # CreateAutoScalingGroup: the account's groups per Region
PERMISSION_CODES = frozenset({"UnauthorizedOperation", "AccessDeniedException", "AccessDenied"})
# CreateAutoScalingGroup while AWS still creates the account's Auto Scaling service-linked role
# (the first group of an account): a launch a minute later succeeds.
NOT_YET_CODES = frozenset({"ServiceLinkedRoleFailure"})
_KINDS = (("quota", QUOTA_CODES), ("permissions", PERMISSION_CODES))
_GONE = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")


def classify(codes: list[str]) -> tuple[str, str]:
    """(kind, code) from the AWS error codes of a failed command's error diagnostics."""
    for kind, known in _KINDS:
        for code in codes:
            if code in known:
                return kind, code
    return "other", (codes[0] if codes else "")


class Ec2Executor:
    """Runs the agent on an EC2 instance declared by a per-run Pulumi stack.

    The environment (env, bucket, region) locates the run stacks' backend; everything else a
    launch needs comes with the request's infra record. `ops` defaults to the Automation API
    seam; `render_user_data` defaults to instance.boot.bootstrap.render_bootstrap.
    """

    name = "ec2"

    def __init__(self, env: str, bucket: str, region: str, *, target: AwsTarget | None = None,
                 ops: StackOps | None = None, render_user_data: Callable[..., str] | None = None,
                 progress: Callable[[str], None] | None = None, first_machine_wait: float = 120.0):
        self.env, self.bucket, self.region = env, bucket, region
        self.first_machine_wait = first_machine_wait
        self.target = target or AwsTarget(region=region)
        self.ops = ops or PulumiStackOps(bucket, env, region, self.target, progress=progress)
        self._render = render_user_data

    @classmethod
    def for_target(cls, target, **kwargs) -> "Ec2Executor":
        """From the CLI's resolved target (anything with env, bucket, region and aws)."""
        return cls(target.env, target.bucket, target.region, target=target.aws, **kwargs)

    def _user_data(self, req: ProvisionRequest) -> str:
        render = self._render
        if render is None:
            from instance.boot.bootstrap import render_bootstrap as render
        return render(env=req.env, bucket=req.infra.bucket, run_id=req.run_id, region=req.infra.region,
                      max_runtime_minutes=req.config.instance.max_runtime_minutes)

    def stack_config(self, req: ProvisionRequest, user_data: str | None = None):
        from ..stacks.run import RunStackConfig

        return RunStackConfig(
            run_id=req.run_id,
            env=req.env,
            region=req.infra.region,
            instance_types=tuple(req.config.instance.instance_types),
            spot=req.config.instance.spot,
            subnet_ids=tuple(req.infra.subnets[z] for z in self.zones(req)),
            security_group_id=req.infra.security_group_id,
            instance_profile=req.infra.instance_profile,
            ami_ssm_parameter=req.infra.ami_ssm_parameter,
            user_data=user_data if user_data is not None else self._user_data(req),
            tags={"Name": f"chronos-{req.run_id}"},
        )

    @staticmethod
    def zones(req: ProvisionRequest) -> list[str]:
        """The zones the run's group may launch in: all of the environment's."""
        if req.infra.extra.get("sandbox"):
            raise ProvisionError("the sandbox's infrastructure is no place for an EC2 run; use --local", "other")
        zones = sorted(req.infra.subnets)
        if not zones:
            raise ProvisionError(f"{req.env}/infra.json lists no subnet; run `pulumi up` for the {req.env} stack")
        return zones

    def provision(self, req: ProvisionRequest) -> Provisioned:
        """The run stack up (a launch template and a group of one machine over every zone and
        listed type), then the group's first machine if it comes within `first_machine_wait`.
        Capacity is the group's to find: a run whose machine has not come yet is waiting, not
        failed (monitor says so; the agent ends a run that waited past capacity_wait_minutes)."""
        self.zones(req)
        user_data = self._user_data(req)
        try:
            self._up(req, user_data)
        except KeyboardInterrupt:
            with sigint_deferred("still removing what this launch made; one moment"):
                self._undo_interrupted(req.run_id)
            raise
        return self._first_machine(req.run_id)

    def _up(self, req: ProvisionRequest, user_data: str) -> None:
        try:
            self.ops.up(req.run_id, self.stack_config(req, user_data))
        except ToolingMissing as exc:
            raise ProvisionError(str(exc), "tooling") from None
        except StackCommandFailed as exc:
            kind, code = classify(exc.aws_error_codes)
            self._discard(req.run_id)
            operation = next(iter(exc.aws_operations), "")
            raise ProvisionError(self._message(req, kind, code, operation, str(exc)), kind) from exc

    def _first_machine(self, run_id: str) -> Provisioned:
        """The group's first machine once EC2 lists it; no machine (the run waits) once the
        wait is over or the group has reported a failed launch, which it retries on its own."""
        from instance.protocol.group import failed_launches

        ec2, autoscaling = client("ec2", self.target), client("autoscaling", self.target)
        deadline = time.monotonic() + self.first_machine_wait
        while True:
            found = instances_by_tag(ec2, {"RunId": run_id})
            if found:
                first = found[0]
                return Provisioned(instance_id=first["InstanceId"],
                                   zone=(first.get("Placement") or {}).get("AvailabilityZone"))
            failed = failed_launches(autoscaling, run_id, limit=5)
            left = deadline - time.monotonic()
            if failed or left <= 0:
                log.info("run %s: no machine yet; its group keeps looking for capacity", run_id)
                return Provisioned(instance_id=None, last_failed_launch=failed[0] if failed else None)
            time.sleep(min(5.0, left))

    @staticmethod
    def _message(req: ProvisionRequest, kind: str, code: str, operation: str, text: str) -> str:
        refused = f"AWS refused {operation} ({code})" if operation else f"AWS refused the launch ({code})"
        if kind == "quota":
            return (f"{refused}: the account's quota of Auto Scaling groups in {req.infra.region} is used up; delete "
                    "groups no longer in use or ask for more \"Auto Scaling groups per region\" in Service Quotas, "
                    "then launch again")
        if kind == "permissions":
            return (f"{refused}: these credentials need the environment's operator policy (docs/deploy.md: "
                    "ec2:CreateLaunchTemplate, autoscaling:CreateAutoScalingGroup, ec2:RunInstances on the "
                    "template, iam:PassRole on the instance role), so attach it and launch again")
        if code in NOT_YET_CODES:
            return (f"{refused}: AWS is still creating Auto Scaling's service-linked role for this account; "
                    "launch again in a minute")
        return f"provisioning {req.run_id} failed: {text}"

    def _discard(self, run_id: str) -> None:
        """Undo a failed launch; a stack that cannot be destroyed stays for verify-cleanup."""
        try:
            self.ops.destroy(run_id)
            self.ops.remove_stack(run_id)
        except StackMissing:
            pass
        except Exception as exc:  # noqa: BLE001 - the original failure is what the user must see
            log.error("could not remove the run stack %s (%s); `chronos-train verify-cleanup --fix` will",
                      run_id, exc)

    def _undo_interrupted(self, run_id: str) -> None:
        """After Ctrl-C in `up`: end any machine of the run through EC2 (a create still pending
        is in no state file), clear a lock the CLI may have left, then destroy and remove."""
        self.terminate(run_id, None)
        try:
            self.ops.cancel(run_id)
        except Exception as exc:  # noqa: BLE001 - no lock left is the usual case
            log.info("pulumi cancel %s: %s", run_id, exc)
        self._discard(run_id)

    def terminate(self, run_id: str, instance_id: str | None) -> None:
        """Terminate the instance (or, without an id, every instance tagged with the run) through
        EC2; works without the Pulumi CLI or its state. The stack record is finalize's."""
        ec2 = client("ec2", self.target)
        ids = [instance_id] if instance_id else [i["InstanceId"] for i in instances_by_tag(ec2, {"RunId": run_id})]
        for iid in ids:
            try:
                ec2.terminate_instances(InstanceIds=[iid])
            except Exception as exc:
                if error_code(exc) not in _GONE:
                    raise

    def reconcile(self) -> list[str]:
        return []  # EC2 itself knows when a machine is gone

    def reconcile_machine(self, run_id: str, instance_id: str) -> bool:
        return False

    def finalize(self, run_id: str) -> None:
        if run_id not in self.leftover_stacks():
            return  # nothing to do, and no Pulumi CLI needed to find that out
        try:
            self.ops.refresh(run_id)
            self.ops.destroy(run_id)
            self.ops.remove_stack(run_id)
        except StackMissing:
            return
        except ToolingMissing as exc:
            raise ProvisionError(str(exc), "tooling") from None
        except StackCommandFailed as exc:
            kind, _ = classify(exc.aws_error_codes)
            raise ProvisionError(
                f"could not remove the run stack {run_id} ({exc}); "
                "run `chronos-train verify-cleanup --fix` again once that is fixed", kind
            ) from exc

    def leftover_stacks(self) -> list[str]:
        return sorted(self.ops.list_stacks())

    def preview(self, req: ProvisionRequest):
        """The run stack as `up` would make it, previewed by the real CLI."""
        try:
            return self.ops.preview(self.stack_config(req))
        except ToolingMissing as exc:
            raise ProvisionError(str(exc), "tooling") from None
        except StackCommandFailed as exc:
            kind, code = classify(exc.aws_error_codes)
            raise ProvisionError(f"the preview of the run stack failed ({code or exc})", kind) from exc
