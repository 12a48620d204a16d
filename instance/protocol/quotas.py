"""The account's vCPU quotas per instance family: their Service Quotas codes and names.

EC2 counts a machine's vCPUs against the quota of its family ("instance bucket"), one for
on-demand and one for spot. Read by doctor (before a launch), monitor (why the group finds no
machine) and the sandbox (which refuses a launch over the quota, as EC2 does).
"""
from __future__ import annotations

# Service Quotas codes (service code "ec2") of the vCPU quotas, by (family letter, spot).
VCPU_QUOTAS = {
    ("G", False): "L-DB2E81BA",  # Running On-Demand G and VT instances
    ("G", True): "L-3819A6DF",  # All G and VT Spot Instance Requests
    ("P", False): "L-417A185B",  # Running On-Demand P instances
    ("P", True): "L-7212CCBC",  # All P Spot Instance Requests
}


def quota_code(instance_type: str, spot: bool) -> str | None:
    return VCPU_QUOTAS.get((instance_type[:1].upper(), spot))


def quota_name(instance_type: str, spot: bool) -> str:
    family = instance_type[:1].upper()
    group = "G and VT" if family == "G" else family
    return f"All {group} Spot Instance Requests" if spot else f"Running On-Demand {group} instances"
