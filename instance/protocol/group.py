"""The run's Auto Scaling group (desired = max = 1): the only calls the agent and the CLI make to it.

The group is named after the run and tagged like every run resource. While its desired capacity
is 1 it replaces a machine that goes away; every ending of a run takes the capacity to 0 first:
- the agent takes its own machine out (DetachInstances, decrementing the desired capacity), so
  no replacement comes and this machine stays up to write its records and end itself;
- the CLI (kill, verify-cleanup --fix) sets the group to 0 machines, which also ends any machine
  in it, then ends the run's machines by tag as before.
"""
from __future__ import annotations

import logging
from typing import Any

from .aws import error_code

log = logging.getLogger(__name__)

# What Auto Scaling answers for a group it does not have or an instance not in it: a
# ValidationError (it has no more distinct code for either).
GONE_CODES = frozenset({"ValidationError"})


def group_name(run_id: str) -> str:
    return run_id


def describe_group(autoscaling, run_id: str) -> dict[str, Any] | None:
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name(run_id)])["AutoScalingGroups"]
    return groups[0] if groups else None


def wants_machine(group: dict[str, Any] | None) -> bool:
    """True when the group will (re)place a machine: it exists and wants one."""
    return bool(group) and int(group.get("DesiredCapacity", 0)) > 0 and not group.get("Status")


def leave_group(autoscaling, run_id: str, instance_id: str | None) -> tuple[str, str]:
    """Take this machine out of the run's group with the desired capacity going down by one (to 0):
    nothing replaces it, and it keeps running to finish. Never raises: (result, detail)."""
    name = group_name(run_id)
    try:
        if instance_id:
            try:
                autoscaling.detach_instances(AutoScalingGroupName=name, InstanceIds=[instance_id],
                                             ShouldDecrementDesiredCapacity=True)
                return "done", f"left group {name} (desired capacity 0)"
            except Exception as exc:
                if error_code(exc) not in GONE_CODES:
                    raise
                # Not in the group (already detached, or never was): make sure it wants nothing.
        autoscaling.update_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, DesiredCapacity=0)
        return "done", f"group {name} set to desired capacity 0"
    except Exception as exc:
        if error_code(exc) in GONE_CODES:
            return "not_found", f"no group {name}"
        return "error", f"{type(exc).__name__}: {exc}"


def end_group(autoscaling, run_id: str) -> tuple[str, str]:
    """The CLI's end: no machine wanted, none allowed. Any machine still in the group ends.
    Never raises: (result, detail)."""
    name = group_name(run_id)
    try:
        autoscaling.update_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, MaxSize=0, DesiredCapacity=0)
        return "done", f"group {name} set to 0 machines"
    except Exception as exc:
        if error_code(exc) in GONE_CODES:
            return "not_found", f"no group {name}"
        return "error", f"{type(exc).__name__}: {exc}"


def failed_launches(autoscaling, run_id: str, limit: int = 10) -> list[str]:
    """The status messages of the group's latest failed launches (capacity, quota), newest first."""
    try:
        acts = autoscaling.describe_scaling_activities(AutoScalingGroupName=group_name(run_id),
                                                       MaxRecords=limit)["Activities"]
    except Exception as exc:
        log.debug("scaling activities of %s: %s", run_id, exc)
        return []
    return [a.get("StatusMessage") or a.get("Description", "") for a in acts if a.get("StatusCode") == "Failed"]


# The group's shape, one source for the run stack (Pulumi) and the sandbox's group (boto3).
# The listed types are the user's order of preference: on-demand launches them in that order;
# spot honours it on a best-effort basis after capacity (capacity-optimized-prioritized: the
# pools least likely to be interrupted first, the order between pools alike). AWS's default
# recommendation, price-capacity-optimized, ignores the order altogether.
SPOT_ALLOCATION = "capacity-optimized-prioritized"
# Off: in a group of one, rebalancing either launches a second machine (which finds the lock
# held and leaves) and then ends the training one with no two-minute notice, or never acts at
# max size. The agent saves a checkpoint on the rebalance recommendation itself, which needs no
# group feature.
CAPACITY_REBALANCE = False
ON_DEMAND_ALLOCATION = "prioritized"


def mixed_instances_policy(launch_template: str, types: list[str], spot: bool) -> dict[str, Any]:
    """The group's MixedInstancesPolicy (Auto Scaling API form): every listed type, spot or not."""
    return {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": launch_template, "Version": "$Latest"},
            "Overrides": [{"InstanceType": t} for t in types],
        },
        "InstancesDistribution": {
            "OnDemandAllocationStrategy": ON_DEMAND_ALLOCATION,
            "OnDemandBaseCapacity": 0,
            "OnDemandPercentageAboveBaseCapacity": 0 if spot else 100,
            "SpotAllocationStrategy": SPOT_ALLOCATION,
        },
    }
