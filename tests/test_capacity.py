"""Capacity or quota: the waiting line tells them apart by Service Quotas' numbers, not by text."""
from __future__ import annotations

import pytest

from automation.context import Target
from automation.runs.capacity import quota_short, why_no_machine

TYPES = ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]  # 4 vCPUs each, family G


@pytest.mark.parametrize("quotas,spot,expected", [
    ({t: 0.0 for t in TYPES}, True,
     "the vCPU quota \"All G and VT Spot Instance Requests\" (L-3819A6DF) is 0 vCPUs and g6.xlarge needs 4: "
     "no machine can start until it is raised (`chronos-train doctor` shows the request)"),
    ({t: 0.0 for t in TYPES}, False,
     "the vCPU quota \"Running On-Demand G and VT instances\" (L-DB2E81BA) is 0 vCPUs and g6.xlarge needs 4: "
     "no machine can start until it is raised (`chronos-train doctor` shows the request)"),
    ({t: 4.0 for t in TYPES}, True, None),  # room for one machine: it is capacity
    ({**{t: 0.0 for t in TYPES}, "g4dn.xlarge": None}, True, None),  # one quota unknown: cannot say quota
], ids=["spot quota 0", "on-demand quota 0", "quota fits", "quota unknown"])
def test_quota_is_named_only_when_it_blocks_every_type(quotas, spot, expected):
    assert quota_short(quotas, TYPES, spot) == expected


def test_the_sandbox_has_no_quotas_so_it_says_capacity():
    local = Target(env="dev", local=True, region="us-east-1", bucket="b", endpoint_url="http://127.0.0.1:1")
    line = why_no_machine(local, {"instance_types": TYPES, "spot": True}, "Launching a new EC2 instance. Status Reason: ...")
    assert line == "waiting for capacity; the group's last failed launch: Launching a new EC2 instance. Status Reason: ..."
