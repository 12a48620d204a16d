"""The persistent stack's configuration: parsed and checked before any resource is declared.

A wrong value here would otherwise surface minutes later as an AWS error in the middle of
`pulumi up` (S3 refuses an IA transition before day 30; AWS refuses a /12 VPC). Each check
ends the program with one sentence that names the key and what to set instead.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Mapping

from instance.protocol.layout import KNOWN_ENVS, is_region_name

from ..infra_record import DEFAULT_AMI_PARAMETER

PROJECT = "chronos-training"
COST_CENTERS = ("collect", "train", "serve")
# S3's own floors: STANDARD_IA accepts objects 30 days after creation at the earliest, and an
# expiration must come after the last transition, or the whole lifecycle configuration is refused.
S3_MIN_IA_DAYS = 30
MULTIPART_ABORT_DAYS = 1
# AWS accepts VPCs from /16 to /28; each zone gets a subnet 4 bits longer, so /24 is the longest
# VPC that still leaves a /28 (the smallest subnet AWS allows) for up to 16 zones.
VPC_PREFIX_RANGE = (16, 24)
SUBNET_EXTRA_BITS = 4
MAX_ZONES = 2**SUBNET_EXTRA_BITS


class StackConfigError(ValueError):
    """A stack setting the program refuses. The message is one sentence saying what to fix."""


@dataclass(frozen=True)
class PersistentConfig:
    environment: str
    region: str
    cost_center: str = "train"
    vpc_cidr: str = "10.42.0.0/16"
    availability_zones: tuple[str, ...] | None = None  # None: every standard zone of the region
    log_retention_days: int = 14
    run_transition_days: int = S3_MIN_IA_DAYS
    run_expiration_days: int = 60
    ami_ssm_parameter: str = DEFAULT_AMI_PARAMETER

    def subnet_cidrs(self, zones: tuple[str, ...]) -> dict[str, str]:
        """One non-overlapping CIDR per zone, carved in order from the VPC range."""
        if len(zones) > MAX_ZONES:
            raise StackConfigError(
                f"{PROJECT}:availabilityZones: {len(zones)} zones do not fit in {self.vpc_cidr} "
                f"(at most {MAX_ZONES}); list the zones you want instead of \"all\""
            )
        network = ipaddress.IPv4Network(self.vpc_cidr)
        blocks = network.subnets(prefixlen_diff=SUBNET_EXTRA_BITS)
        return {zone: str(next(blocks)) for zone in zones}


def _key(name: str) -> str:
    return f"{PROJECT}:{name}"


def _days(raw: Mapping[str, Any], name: str, default: int) -> int:
    value = raw.get(name)
    if value is None or value == "":
        return default
    try:
        days = int(str(value).strip())
    except ValueError:
        raise StackConfigError(f"{_key(name)} must be a whole number of days, not {value!r}") from None
    if days < 1:
        raise StackConfigError(f"{_key(name)} must be at least 1 day, not {days}")
    return days


def _zones(value: Any, region: str) -> tuple[str, ...] | None:
    if value is None or value == "" or value == "all":
        return None
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if isinstance(value, str):
        value = [z.strip() for z in value.split(",") if z.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise StackConfigError(
            f"{_key('availabilityZones')} must be \"all\" or a list of zones such as [{region}a, {region}b]"
        )
    zones = tuple(str(z) for z in value)
    wrong = [z for z in zones if not (z.startswith(region) and len(z) > len(region))]
    if wrong:
        raise StackConfigError(
            f"{_key('availabilityZones')}: {', '.join(wrong)} not in region {region}; "
            f"use zones such as {region}a"
        )
    if len(set(zones)) != len(zones):
        raise StackConfigError(f"{_key('availabilityZones')} lists a zone twice; list each zone once")
    if len(zones) > MAX_ZONES:
        raise StackConfigError(f"{_key('availabilityZones')} lists {len(zones)} zones; at most {MAX_ZONES} fit")
    return zones


def _cidr(value: Any) -> str:
    text = str(value or "").strip()
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        raise StackConfigError(
            f"{_key('vpcCidr')} {text!r} is not an IPv4 network with its host bits zero, such as 10.42.0.0/16"
        ) from None
    low, high = VPC_PREFIX_RANGE
    if not low <= network.prefixlen <= high:
        raise StackConfigError(
            f"{_key('vpcCidr')} {text} must be between /{low} and /{high}, such as 10.42.0.0/16"
        )
    if not network.is_private:
        raise StackConfigError(
            f"{_key('vpcCidr')} {text} is not a private range; use one inside 10.0.0.0/8, "
            "172.16.0.0/12 or 192.168.0.0/16"
        )
    return str(network)


def parse_config(raw: Mapping[str, Any], region: str | None) -> PersistentConfig:
    """Turn the stack's config (camelCase keys, string or native values) into a checked config."""
    region = (region or "").strip()
    if not is_region_name(region):
        raise StackConfigError(
            f"aws:region {region!r} is not an AWS region; set it with `pulumi config set aws:region us-east-1`"
        )
    env = str(raw.get("environment") or "").strip()
    if env not in KNOWN_ENVS:
        raise StackConfigError(
            f"{_key('environment')} {env!r} is not a known environment; use one of: {', '.join(KNOWN_ENVS)}"
        )
    cost_center = str(raw.get("costCenter") or "train").strip()
    if cost_center not in COST_CENTERS:
        raise StackConfigError(
            f"{_key('costCenter')} {cost_center!r} is not a cost center; use one of: {', '.join(COST_CENTERS)}"
        )
    logs = _days(raw, "logRetentionDays", 14)
    transition = _days(raw, "runTransitionDays", S3_MIN_IA_DAYS)
    expiration = _days(raw, "runExpirationDays", 60)
    if transition < S3_MIN_IA_DAYS:
        raise StackConfigError(
            f"{_key('runTransitionDays')} is {transition}, but S3 refuses a STANDARD_IA transition "
            f"before day {S3_MIN_IA_DAYS}; set it to {S3_MIN_IA_DAYS} or more"
        )
    if expiration <= transition:
        raise StackConfigError(
            f"{_key('runExpirationDays')} ({expiration}) must be later than runTransitionDays "
            f"({transition}), or S3 refuses the lifecycle rule"
        )
    return PersistentConfig(
        environment=env,
        region=region,
        cost_center=cost_center,
        vpc_cidr=_cidr(raw.get("vpcCidr") or PersistentConfig.vpc_cidr),
        availability_zones=_zones(raw.get("availabilityZones"), region),
        log_retention_days=logs,
        run_transition_days=transition,
        run_expiration_days=expiration,
        ami_ssm_parameter=str(raw.get("amiSsmParameter") or DEFAULT_AMI_PARAMETER),
    )


CONFIG_KEYS = (
    "environment", "costCenter", "vpcCidr", "availabilityZones",
    "logRetentionDays", "runTransitionDays", "runExpirationDays", "amiSsmParameter",
)


def config_from_pulumi() -> PersistentConfig:
    """Read the current stack's config (inside a Pulumi program)."""
    import pulumi

    project = pulumi.Config()
    raw = {key: project.get(key) for key in CONFIG_KEYS}
    return parse_config(raw, pulumi.Config("aws").get("region"))


def lifecycle_rules(cfg: PersistentConfig) -> list[dict]:
    """Rules by prefix; `cached-datasets/` has none, so datasets stay until deleted by hand."""
    env = cfg.environment
    return [
        {
            "id": "expire-logs",
            "status": "Enabled",
            "filter": {"prefix": f"{env}/logs/"},
            "expiration": {"days": cfg.log_retention_days},
        },
        {
            "id": "age-run-outputs",
            "status": "Enabled",
            "filter": {"prefix": f"{env}/run-"},
            # 30 days is S3's minimum before STANDARD_IA: the seed's 7 days is refused by S3.
            "transitions": [{"days": cfg.run_transition_days, "storage_class": "STANDARD_IA"}],
            "expiration": {"days": cfg.run_expiration_days},
        },
        {
            # Parts of an interrupted upload are billed but invisible in a listing; whole bucket.
            "id": "abort-incomplete-uploads",
            "status": "Enabled",
            "filter": {},
            "abort_incomplete_multipart_upload": {"days_after_initiation": MULTIPART_ABORT_DAYS},
        },
    ]
