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
    gpus: int  # how many GPUs the type has: `instance.gpus: auto` trains on all of them
    gpu_model: str
    gpu_memory_gb: int  # per GPU
    vcpus: int  # what the type counts against the account's vCPU quota of its family

    @property
    def gpu(self) -> str:
        return f"{self.gpus}x {self.gpu_model} {self.gpu_memory_gb} GB"


PRICES: dict[str, Price] = {
    "g4dn.xlarge": Price(0.526, 0.22, 1, "T4", 16, 4),
    "g4dn.2xlarge": Price(0.752, 0.30, 1, "T4", 16, 8),
    "g4dn.4xlarge": Price(1.204, 0.48, 1, "T4", 16, 16),
    "g4dn.8xlarge": Price(2.176, 0.87, 1, "T4", 16, 32),
    "g4dn.12xlarge": Price(3.912, 1.60, 4, "T4", 16, 48),
    "g5.xlarge": Price(1.006, 0.42, 1, "A10G", 24, 4),
    "g5.2xlarge": Price(1.212, 0.50, 1, "A10G", 24, 8),
    "g5.4xlarge": Price(1.624, 0.68, 1, "A10G", 24, 16),
    "g5.12xlarge": Price(5.672, 2.30, 4, "A10G", 24, 48),
    "g5.48xlarge": Price(16.288, 6.50, 8, "A10G", 24, 192),
    "g6.xlarge": Price(0.805, 0.35, 1, "L4", 24, 4),
    "g6.2xlarge": Price(0.978, 0.42, 1, "L4", 24, 8),
    "g6.12xlarge": Price(4.602, 1.90, 4, "L4", 24, 48),
    "g6e.xlarge": Price(1.861, 0.80, 1, "L40S", 48, 4),
    "g6e.2xlarge": Price(2.242, 0.95, 1, "L40S", 48, 8),
    "p3.2xlarge": Price(3.060, 1.10, 1, "V100", 16, 8),
    "p4d.24xlarge": Price(32.773, 12.00, 8, "A100", 40, 96),
    "p5.48xlarge": Price(55.040, 25.00, 8, "H100", 80, 192),
}
# 100 GB gp3 root volume: $0.08 per GB-month.
EBS_PER_HOUR = 100 * 0.08 / 730


def hourly(instance_type: str, spot: bool) -> float:
    price = PRICES[instance_type]
    return (price.spot if spot else price.on_demand) + EBS_PER_HOUR


def quoted(spot_prices: dict | None, instance_type: str | None, zone: str | None) -> float | None:
    """The spot price AWS quoted at launch for this type in this zone (USD an hour), if any: the
    lock's `spot_prices`, {type: {zone: price}} from DescribeSpotPriceHistory."""
    price = ((spot_prices or {}).get(instance_type or "") or {}).get(zone or "")
    return float(price) if price is not None else None


def cost(instance_type: str, spot: bool, seconds: float, quote: float | None = None) -> float:
    """What the machine costs for `seconds`: AWS's quoted spot price when there is one (plus its
    root volume), else the table's."""
    per_hour = quote + EBS_PER_HOUR if quote is not None else hourly(instance_type, spot)
    return round(per_hour * max(seconds, 0.0) / 3600.0, 4)
