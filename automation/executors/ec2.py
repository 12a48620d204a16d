"""EC2 executor: one Pulumi run stack per run, holding one self-terminating GPU instance.

The orchestration lives here and talks to Pulumi only through `StackOps` (run_stacks.py), so
nothing in this module imports pulumi; the stack program itself is imported only by the seam.
"""
from __future__ import annotations

import logging
import re
from typing import Callable

from instance.protocol.aws import AwsTarget, client, error_code

from .base import ProvisionError, ProvisionRequest, Provisioned
from .run_stacks import PulumiStackOps, StackMissing, StackOps, ToolingMissing

log = logging.getLogger(__name__)

# EC2 error codes, as they appear in the Pulumi CLI's output ("api error <Code>: ...").
QUOTA_CODES = ("VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded")
CAPACITY_CODES = ("InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported", "SpotMaxPriceTooLow")
PERMISSION_CODES = ("UnauthorizedOperation", "AccessDeniedException", "AccessDenied")
_KINDS = (("quota", QUOTA_CODES), ("capacity", CAPACITY_CODES), ("permissions", PERMISSION_CODES))
_GONE = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")


def classify(text: str) -> tuple[str, str]:
    """(kind, code) of a failed `up`; quota first, since a quota error also says "capacity"."""
    for kind, codes in _KINDS:
        for code in codes:
            if re.search(rf"\b{re.escape(code)}\b", text):
                return kind, code
    return "other", ""


def _quota_name(instance_type: str, spot: bool) -> str:
    family = instance_type[:1].upper()
    group = "G and VT" if family == "G" else family
    return f"All {group} Spot Instance Requests" if spot else f"Running On-Demand {group} instances"


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line.lower():
            return line[:300]
    return (lines[-1] if lines else "no output")[:300]


class Ec2Executor:
    """Runs the agent on an EC2 instance declared by a per-run Pulumi stack.

    The environment (env, bucket, region) locates the run stacks' backend; everything else a
    launch needs comes with the request's infra record. `ops` defaults to the Automation API
    seam; `render_user_data` defaults to instance.boot.bootstrap.render_bootstrap.
    """

    name = "ec2"

    def __init__(self, env: str, bucket: str, region: str, *, target: AwsTarget | None = None,
                 ops: StackOps | None = None, render_user_data: Callable[..., str] | None = None):
        self.env, self.bucket, self.region = env, bucket, region
        self.target = target or AwsTarget(region=region)
        self.ops = ops or PulumiStackOps(bucket, env, region, self.target)
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

    def _stack_config(self, req: ProvisionRequest, zone: str, user_data: str):
        from ..stacks.run import RunStackConfig

        return RunStackConfig(
            run_id=req.run_id,
            env=req.env,
            region=req.infra.region,
            instance_type=req.config.instance.type,
            spot=req.config.instance.spot,
            subnet_id=req.infra.subnets[zone],
            zone=zone,
            security_group_id=req.infra.security_group_id,
            instance_profile=req.infra.instance_profile,
            ami_ssm_parameter=req.infra.ami_ssm_parameter,
            user_data=user_data,
            tags={"Name": f"chronos-{req.run_id}"},
        )

    def provision(self, req: ProvisionRequest) -> Provisioned:
        if req.endpoint_url:
            raise ProvisionError("the EC2 executor launches on AWS only; use --local for the sandbox", "other")
        zones = sorted(req.infra.subnets)
        if not zones:
            raise ProvisionError(f"{req.env}/infra.json lists no subnet; run `pulumi up` for the {req.env} stack")
        user_data = self._user_data(req)
        tried: list[str] = []
        for zone in zones:
            tried.append(zone)
            try:
                outputs = self.ops.up(req.run_id, self._stack_config(req, zone, user_data))
            except ToolingMissing as exc:
                raise ProvisionError(str(exc), "tooling") from None
            except Exception as exc:  # noqa: BLE001 - the CLI's failures are all CommandError text
                kind, code = classify(str(exc))
                if kind == "capacity" and len(tried) < len(zones):
                    # Nothing was created in this zone; the next `up` moves the same stack on.
                    log.warning("no %s capacity in %s (%s); trying the next zone", req.config.instance.type,
                                zone, code)
                    continue
                self._discard(req.run_id)
                raise ProvisionError(self._message(req, kind, code, tried, str(exc)), kind) from exc
            instance_id = outputs.get("instance_id")
            if not instance_id:
                self._discard(req.run_id)
                raise ProvisionError(f"the run stack {req.run_id} came up without an instance id; launch again")
            return Provisioned(instance_id=str(instance_id), zone=str(outputs.get("zone") or zone),
                               stack_name=req.run_id)
        raise AssertionError("unreachable: the last zone either returns or raises")

    @staticmethod
    def _message(req: ProvisionRequest, kind: str, code: str, zones: list[str], text: str) -> str:
        itype, spot = req.config.instance.type, req.config.instance.spot
        market = "spot" if spot else "on-demand"
        if kind == "quota":
            return (f"AWS refused {itype} ({market}) because the account's EC2 quota is too low ({code}); "
                    f"ask for more vCPUs of \"{_quota_name(itype, spot)}\" in Service Quotas for "
                    f"{req.infra.region}, or choose a smaller instance type")
        if kind == "capacity":
            other = "on-demand (spot: false)" if spot else "spot (spot: true)"
            return (f"AWS has no {market} capacity for {itype} in {', '.join(zones)} right now ({code}); "
                    f"launch again later, try {other}, or choose another instance type")
        if kind == "permissions":
            return (f"AWS denied the launch ({code}); these credentials need ec2:RunInstances, "
                    "ec2:TerminateInstances, iam:PassRole on the instance role, ssm:GetParameter and "
                    "access to the bucket, so fix the IAM policy and launch again")
        return f"provisioning {req.run_id} failed: {_first_error_line(text)}"

    def _discard(self, run_id: str) -> None:
        """Undo a failed launch; a stack that cannot be destroyed stays for verify-cleanup."""
        try:
            self.ops.destroy(run_id)
            self.ops.remove_stack(run_id)
        except StackMissing:
            pass
        except Exception as exc:  # noqa: BLE001 - the original failure is what the user must see
            log.error("could not remove the run stack %s (%s); `chronos-train verify-cleanup --fix` will",
                      run_id, _first_error_line(str(exc)))

    def terminate(self, run_id: str, instance_id: str | None) -> None:
        if instance_id:
            # Straight to EC2 first: this works even when the Pulumi CLI or its state does not.
            try:
                client("ec2", self.target).terminate_instances(InstanceIds=[instance_id])
            except Exception as exc:
                if error_code(exc) not in _GONE:
                    raise
        self.finalize(run_id)

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
        except Exception as exc:  # noqa: BLE001 - CommandError text, told apart like a launch's
            kind, _ = classify(str(exc))
            raise ProvisionError(
                f"could not remove the run stack {run_id} ({_first_error_line(str(exc))}); "
                "run `chronos-train verify-cleanup --fix` again once that is fixed", kind
            ) from exc

    def leftover_stacks(self) -> list[str]:
        return sorted(self.ops.list_stacks())
