"""What EC2 and Auto Scaling do with a machine that ends by itself, played on the worse reading.

- A machine whose OS powers off without having been terminated through the API is `stopped`, not
  terminated. EC2 stops an EBS-backed instance on an OS shutdown unless its
  InstanceInitiatedShutdownBehavior says terminate, and older editions of the Auto Scaling user
  guide say a launch template's shutdown behaviour is ignored for a group's machines: a stopped
  machine keeps billing its volume (docs/reliability.md).
- A group replaces a member that is not running (stopped, or terminated behind its back) while it
  still wants a machine: its default health check (Amazon EC2 status checks) "checks that the
  instance is running", and an unhealthy InService member is terminated and replaced.

The --local group player (automation/executors/localgroup.py) and the bootstrap tests' `shutdown`
stand-in call these as the EC2 service (`strictmoto.EC2_SERVICE`).
"""
from __future__ import annotations

from instance.protocol.ec2 import instance_state

RUNNING = frozenset({"pending", "running"})


def power_off(ec2, instance_id: str) -> str | None:
    """The machine's OS powered off: a running machine stops; one already ending (terminated
    through the API) is left as it is. Returns the state EC2 reports now."""
    state = instance_state(ec2, instance_id)
    if state in RUNNING:
        ec2.stop_instances(InstanceIds=[instance_id])
        return "stopped"
    return state


def replace_unhealthy(autoscaling, ec2, group: dict, candidates: set[str]) -> list[str]:
    """The group's health check over `candidates` (members whose machine may have ended): while
    the group wants a machine, a member that is not running is terminated through Auto Scaling
    without decrementing the desired capacity, so the group launches its replacement. Returns
    the members replaced."""
    if int(group.get("DesiredCapacity", 0)) <= 0:
        return []
    members = {i["InstanceId"] for i in group.get("Instances", []) if i.get("LifecycleState") == "InService"}
    replaced = []
    for instance_id in sorted(members & candidates):
        if instance_state(ec2, instance_id) not in RUNNING:
            autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=False)
            replaced.append(instance_id)
    return replaced
