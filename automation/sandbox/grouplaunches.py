"""How the sandbox's Auto Scaling groups launch machines: as AWS does, short of quota or capacity.

Stock moto (5.2.5) launches a group's machine whenever the group wants one and records no
scaling activity (DescribeScalingActivities answers an empty list). On AWS a launch can fail:
over the account's vCPU quota of the type's family, or with no capacity for the type right now.
The group then records a failed scaling activity in EC2's words and tries again later; nothing
is refused to the caller who created or resized the group.

The sandbox plays that, for every group in it (the run stack's on the AWS path, the --local one):
- `LaunchConditions`: the account's vCPU quotas (Service Quotas codes; a quota nobody set is not
  enforced) and the instance types EC2 has no capacity for now. Tests set them through the one
  control endpoint (`set_launch_conditions`); a reset of the server clears them.
- each launch tries the group's types in its order (the mixed instances policy's overrides, else
  the template's type) and takes the first that fits; none fitting, a failed activity is recorded
  with the first type's reason, and the group stays short of its desired capacity;
- the group tries again when asked for its state (DescribeAutoScalingGroups) at least
  `RETRY_S` after its last failure (on AWS it retries on its own schedule);
- Service Quotas answers GetServiceQuota for a quota set here, as AWS shapes the answer.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from instance.protocol.pricing import PRICES
from instance.protocol.quotas import VCPU_QUOTAS, quota_code, quota_name

CONTROL_PATH = "/_sandbox/launch-conditions"
RETRY_S = 5.0
FAILED_SUFFIX = "Launching EC2 instance failed."


@dataclass
class LaunchConditions:
    vcpu_quotas: dict[str, float] = field(default_factory=dict)  # Service Quotas code -> vCPUs
    no_capacity: list[str] = field(default_factory=list)  # instance types with no capacity now

    @classmethod
    def from_json(cls, doc: dict) -> "LaunchConditions":
        return cls(vcpu_quotas={k: float(v) for k, v in (doc.get("vcpu_quotas") or {}).items()},
                   no_capacity=list(doc.get("no_capacity") or []))


@dataclass(frozen=True)
class Refusal:
    instance_type: str
    code: str  # EC2's error code, for the record; the activity carries only the message
    message: str  # the activity's StatusMessage, as AWS words it


def refusal(instance_type: str, spot: bool, zones: list[str], conditions: LaunchConditions,
            used_vcpus: dict[str, float]) -> Refusal | None:
    """Why EC2 would refuse to launch one machine of this type now; None when it would not.
    `used_vcpus`: vCPUs already running per quota code."""
    code = quota_code(instance_type, spot)
    limit = conditions.vcpu_quotas.get(code) if code else None
    need = PRICES[instance_type].vcpus if instance_type in PRICES else 0
    if limit is not None and used_vcpus.get(code, 0.0) + need > limit:
        if spot:
            return Refusal(instance_type, "MaxSpotInstanceCountExceeded", "Could not launch Spot Instances. "
                           f"MaxSpotInstanceCountExceeded - Max spot instance count exceeded. {FAILED_SUFFIX}")
        return Refusal(instance_type, "VcpuLimitExceeded",
                       f"You have requested more vCPU capacity than your current vCPU limit of {limit:g} allows "
                       "for the instance bucket that the specified instance type belongs to. Please visit "
                       f"http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit. {FAILED_SUFFIX}")
    if instance_type in conditions.no_capacity:
        if spot:
            return Refusal(instance_type, "InsufficientInstanceCapacity",
                           "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity "
                           f"available that matches your request. {FAILED_SUFFIX}")
        return Refusal(instance_type, "InsufficientInstanceCapacity",
                       f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you "
                       f"requested ({zones[0] if zones else 'us-east-1a'}). Our system will be working on provisioning "
                       f"additional capacity. {FAILED_SUFFIX}")
    return None


def choose(types: list[str], spot: bool, zones: list[str], conditions: LaunchConditions,
           used_vcpus: dict[str, float]) -> tuple[str | None, Refusal | None]:
    """The first listed type EC2 would launch, or (None, the first type's refusal)."""
    first = None
    for instance_type in types:
        refused = refusal(instance_type, spot, zones, conditions, used_vcpus)
        if refused is None:
            return instance_type, None
        first = first or refused
    return None, first


def service_quota(code: str, value: float, region: str, account: str) -> dict[str, Any]:
    """GetServiceQuota's `Quota`, shaped as AWS documents it (`aws service-quotas get-service-quota`)."""
    family, spot = next(key for key, known in VCPU_QUOTAS.items() if known == code)
    return {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{region}:{account}:ec2/{code}", "QuotaCode": code,
            "QuotaName": quota_name(family, spot), "Value": value, "Unit": "None", "Adjustable": True,
            "GlobalQuota": False}


# -- installed into the moto server process ------------------------------------------------------
_state = {"conditions": LaunchConditions()}
_lock = threading.Lock()


def conditions() -> LaunchConditions:
    with _lock:
        return _state["conditions"]


def set_conditions(new: LaunchConditions) -> None:
    with _lock:
        _state["conditions"] = new


class LaunchControl:
    """The sandbox's one control point for launches: POST CONTROL_PATH with the conditions as
    JSON (GET reads them). Not an AWS API: it stands for the account's state and EC2's capacity."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != CONTROL_PATH:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            set_conditions(LaunchConditions.from_json(json.loads(environ["wsgi.input"].read(length) or b"{}")))
        body = json.dumps(asdict(conditions())).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _activity(group, status: str, description: str, message: str | None, cause: str, zone: str,
              subnet: str | None) -> dict[str, Any]:
    now = _now()
    doc = {"ActivityId": str(uuid.uuid4()), "AutoScalingGroupName": group.name, "AutoScalingGroupARN": group.arn,
           "Description": description, "Cause": cause, "StartTime": now, "EndTime": now, "StatusCode": status,
           "Progress": 100, "Details": json.dumps({"Subnet ID": subnet, "Availability Zone": zone})}
    if message:
        doc["StatusMessage"] = message
    return doc


def activities(group) -> list[dict[str, Any]]:
    """The group's scaling activities the sandbox recorded, newest first."""
    return group.__dict__.setdefault("sandbox_activities", [])


def _group_shape(group) -> tuple[list[str], bool]:
    policy = group.mixed_instances_policy or {}
    overrides = [o["InstanceType"] for o in (policy.get("LaunchTemplate") or {}).get("Overrides") or []
                 if o.get("InstanceType")]
    distribution = policy.get("InstancesDistribution") or {}
    spot = bool(policy) and int(distribution.get("OnDemandPercentageAboveBaseCapacity", 100)) == 0 \
        and int(distribution.get("OnDemandBaseCapacity", 0)) == 0
    return overrides or [group.instance_type], spot


def _used_vcpus(ec2_backend, spot: bool) -> dict[str, float]:
    used: dict[str, float] = {}
    for reservation in ec2_backend.reservations.values():
        for instance in reservation.instances:
            code = quota_code(instance.instance_type, spot)
            if code and instance.state in ("pending", "running") and instance.instance_type in PRICES:
                used[code] = used.get(code, 0.0) + PRICES[instance.instance_type].vcpus
    return used


def install() -> None:
    """Patch moto's Auto Scaling and Service Quotas in this process."""
    from moto.autoscaling.models import AutoScalingBackend, FakeAutoScalingGroup
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import ActionResult
    from moto.servicequotas.models import ServiceQuotasBackend

    original_replace = FakeAutoScalingGroup.replace_autoscaling_group_instances

    def replace(self, count_needed: int, propagated_tags: dict[str, str]) -> None:
        types, spot = _group_shape(self)
        zones = list(self.availability_zones or [])
        subnet = (self.vpc_zone_identifier or "").split(",")[0] or None
        before = len(self.active_instances())
        cause = (f"At {_now().strftime('%Y-%m-%dT%H:%M:%SZ')} an instance was started in response to a difference "
                 f"between desired and actual capacity, increasing the capacity from {before} to {before + count_needed}.")
        chosen, refused = choose(types, spot, zones, conditions(), _used_vcpus(self.ec2_backend, spot))
        if chosen is None:
            activities(self).insert(0, _activity(self, "Failed", f"Launching a new EC2 instance. Status Reason: "
                                                 f"{refused.message}", refused.message, cause,
                                                 zones[0] if zones else "", subnet))
            self.__dict__["sandbox_failed_at"] = time.monotonic()
            return
        known = {state.instance.id for state in self.instance_states}
        original_replace(self, count_needed, propagated_tags)
        for state in self.instance_states:
            if state.instance.id in known:
                continue
            # The group launches the first type that has room (moto: always the template's).
            state.instance.instance_type = state.instance_type = chosen
            activities(self).insert(0, _activity(self, "Successful", f"Launching a new EC2 instance: {state.instance.id}",
                                                 None, cause, state.instance.placement.zone, subnet))
        self.__dict__.pop("sandbox_failed_at", None)

    FakeAutoScalingGroup.replace_autoscaling_group_instances = replace

    original_describe = AutoScalingBackend.describe_auto_scaling_groups

    def describe(self, names, filters=None):
        groups = original_describe(self, names, filters)
        for group in groups:
            failed_at = group.__dict__.get("sandbox_failed_at")
            if failed_at is not None and time.monotonic() - failed_at >= RETRY_S \
                    and (group.desired_capacity or 0) > len(group.active_instances()):
                group.set_desired_capacity(group.desired_capacity)  # the group tries again
        return groups

    AutoScalingBackend.describe_auto_scaling_groups = describe

    def describe_scaling_activities(self) -> ActionResult:
        name = self._get_param("AutoScalingGroupName")
        limit = int(self._get_param("MaxRecords") or 100)
        groups = [g for g in self.autoscaling_backend.autoscaling_groups.values() if not name or g.name == name]
        found = sorted((a for g in groups for a in activities(g)), key=lambda a: a["StartTime"], reverse=True)
        return ActionResult({"Activities": found[:limit]})

    AutoScalingResponse.describe_scaling_activities = describe_scaling_activities

    original_quota = ServiceQuotasBackend.get_service_quota

    def get_service_quota(self, service_code: str, quota_code: str) -> dict[str, Any]:
        value = conditions().vcpu_quotas.get(quota_code) if service_code == "ec2" else None
        if value is None:
            return original_quota(self, service_code, quota_code)
        return service_quota(quota_code, value, self.region_name, self.account_id)

    ServiceQuotasBackend.get_service_quota = get_service_quota
