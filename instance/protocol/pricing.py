"""Hourly prices of common GPU instance types (us-east-1, Linux, USD), for estimates only.

Spot prices move; the figure here is a typical recent level, shown as an estimate. The real
bill is whatever AWS charges; `runs` and `monitor` say "estimated" wherever these are used.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    on_demand: float
    spot: float
    gpu: str
    vcpus: int  # what the type counts against the account's vCPU quota of its family


PRICES: dict[str, Price] = {
    "g4dn.xlarge": Price(0.526, 0.22, "1x T4 16 GB", 4),
    "g4dn.2xlarge": Price(0.752, 0.30, "1x T4 16 GB", 8),
    "g4dn.4xlarge": Price(1.204, 0.48, "1x T4 16 GB", 16),
    "g4dn.8xlarge": Price(2.176, 0.87, "1x T4 16 GB", 32),
    "g4dn.12xlarge": Price(3.912, 1.60, "4x T4 16 GB", 48),
    "g5.xlarge": Price(1.006, 0.42, "1x A10G 24 GB", 4),
    "g5.2xlarge": Price(1.212, 0.50, "1x A10G 24 GB", 8),
    "g5.4xlarge": Price(1.624, 0.68, "1x A10G 24 GB", 16),
    "g5.12xlarge": Price(5.672, 2.30, "4x A10G 24 GB", 48),
    "g6.xlarge": Price(0.805, 0.35, "1x L4 24 GB", 4),
    "g6.2xlarge": Price(0.978, 0.42, "1x L4 24 GB", 8),
    "g6e.xlarge": Price(1.861, 0.80, "1x L40S 48 GB", 4),
    "g6e.2xlarge": Price(2.242, 0.95, "1x L40S 48 GB", 8),
    "p3.2xlarge": Price(3.060, 1.10, "1x V100 16 GB", 8),
    "p4d.24xlarge": Price(32.773, 12.00, "8x A100 40 GB", 96),
    "p5.48xlarge": Price(55.040, 25.00, "8x H100 80 GB", 192),
}
# 100 GB gp3 root volume: $0.08 per GB-month.
EBS_PER_HOUR = 100 * 0.08 / 730


def hourly(instance_type: str, spot: bool) -> float:
    price = PRICES[instance_type]
    return (price.spot if spot else price.on_demand) + EBS_PER_HOUR


def cost(instance_type: str, spot: bool, seconds: float) -> float:
    return round(hourly(instance_type, spot) * max(seconds, 0.0) / 3600.0, 4)
