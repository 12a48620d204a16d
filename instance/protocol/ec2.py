"""EC2 facts both sides read: an instance's state, and the tags that name a run's resources."""
from __future__ import annotations

from .aws import error_code
from .layout import PROJECT_TAG


def run_tags(run_id: str, env: str, executor: str) -> list[dict]:
    return [
        {"Key": "Project", "Value": PROJECT_TAG},
        {"Key": "Environment", "Value": env},
        {"Key": "CostCenter", "Value": "train"},
        {"Key": "RunId", "Value": run_id},
        {"Key": "Executor", "Value": executor},
        {"Key": "Name", "Value": f"chronos-{run_id}"},
    ]


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def instance_state(ec2, instance_id: str) -> str | None:
    """EC2's word on the instance: its state name, or None when EC2 has no such instance."""
    try:
        resp = ec2.describe_instances(InstanceIds=[instance_id])
    except Exception as exc:
        if error_code(exc).startswith("InvalidInstanceID"):
            return None
        raise
    for reservation in resp.get("Reservations", []):
        for inst in reservation.get("Instances", []):
            if inst["InstanceId"] == instance_id:
                return inst["State"]["Name"]
    return None


# The states in which an instance bills (or its volume does: stopped). EC2 stops charging once
# an instance is shutting-down, so a terminating machine is no leftover.
LIVE_STATES = ("pending", "running", "stopping", "stopped")


def instances_by_tag(ec2, tags: dict[str, str], states=LIVE_STATES) -> list[dict]:
    """Every instance carrying all of `tags` (key -> value) in one of `states`, across pages."""
    filters = [{"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()]
    filters.append({"Name": "instance-state-name", "Values": list(states)})
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [inst for page in pages for res in page.get("Reservations", []) for inst in res.get("Instances", [])]
