"""Why a run's group finds no machine: capacity or quota. Told apart by Service Quotas (a quota
code and a number of vCPUs), never by the wording of Auto Scaling's failed-launch messages; those
are shown as they are, AWS's own words. The sandbox plays both (automation/sandbox/grouplaunches.py)."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping

from instance.protocol.attempts import NO_CAPACITY
from instance.protocol.aws import client, error_code
from instance.protocol.liveness import Verdict
from instance.protocol.pricing import PRICES
from instance.protocol.quotas import quota_code, quota_name

from ..context import Target

log = logging.getLogger(__name__)


def quota_short(quotas: Mapping[str, float | None], types: list[str], spot: bool) -> str | None:
    """A sentence when every listed type is over its family's vCPU quota; None when one fits, or
    a quota is unknown (then it is capacity, or we cannot tell)."""
    if not types:
        return None
    for instance_type in types:
        value = quotas.get(instance_type)
        if value is None or instance_type not in PRICES or value >= PRICES[instance_type].vcpus:
            return None
    first = types[0]
    code, need = quota_code(first, spot), PRICES[first].vcpus
    return (f"the vCPU quota \"{quota_name(first, spot)}\" ({code}) is {quotas[first]:g} vCPUs and {first} needs "
            f"{need}: no machine can start until it is raised (`chronos-train doctor` shows the request)")


def vcpu_quotas(target: Target, types: list[str], spot: bool) -> dict[str, float | None]:
    """Each type's family quota in vCPUs; None where unknown (no code, refused, or a quota the
    sandbox was not given)."""
    quotas: dict[str, float | None] = {}
    by_code: dict[str, float | None] = {}
    service = client("service-quotas", target.aws)
    for instance_type in types:
        code = quota_code(instance_type, spot)
        if code is not None and code not in by_code:
            try:
                by_code[code] = service.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
            except Exception as exc:  # noqa: BLE001 - unknown quota: the line then says capacity
                log.debug("quota %s: %s", code, error_code(exc) or exc)
                by_code[code] = None
        quotas[instance_type] = by_code.get(code) if code else None
    return quotas


def why_no_machine(target: Target, state: Mapping[str, Any], last_failure: str, ended: bool = False) -> str:
    """What `monitor` adds to its waiting line once the group has failed to launch; `ended`: what
    a run that waited out instance.capacity_wait_minutes ends with (the follower, verify-cleanup)."""
    types, spot = list(state.get("instance_types") or [state.get("instance_type")]), bool(state.get("spot"))
    short = quota_short(vcpu_quotas(target, types, spot), types, spot)
    if short:
        return f"{short}; the group's last failed launch: {last_failure}"
    if ended:
        other = "on-demand (spot: false)" if spot else "spot (spot: true)"
        return (f"AWS had no {'spot' if spot else 'on-demand'} capacity for {', '.join(types)}: launch again later, "
                f"list more types in instance.types or try {other}; the group's last failed launch: {last_failure}")
    return (f"waiting for capacity: the group keeps trying every listed type in every zone (list more types in "
            f"instance.types to widen the search, or end the run with `chronos-train kill`); "
            f"the group's last failed launch: {last_failure}")


def explain_no_capacity(target: Target, lease, verdict: Verdict) -> Verdict:
    """A run ended `no_capacity` says why, from its group's scaling activities (where AWS
    reports a launch it refused: quota or capacity): the one sentence the follower exits with
    and verify-cleanup --fix records."""
    if not (verdict.stale and verdict.reason == NO_CAPACITY):
        return verdict
    from instance.protocol.group import failed_launches

    failed = failed_launches(target.autoscaling, lease.run_id, limit=5)
    if not failed:
        return verdict
    said = why_no_machine(target, lease.state, failed[0], ended=True)
    # The record's error (phase: the launch, no machine ran): what `monitor` and the report show.
    error = {"class": NO_CAPACITY, "message": said, "phase": "launch"}
    return replace(verdict, why=f"{verdict.why}; {said}", error=error)
