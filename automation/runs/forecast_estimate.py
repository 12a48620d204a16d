"""What a forecast run (`forecast --remote`) is expected to take and cost, said before it launches.

    minutes = start + series / rate / 60        cost = the machine's hourly price x minutes / 60

start: launch to the agent's forecast phase. On AWS about 3 minutes with the Python environment
cached (docs/benchmarks.md, "Cold-start budget": run stack, boot, environment restore, imports);
a --local run starts in seconds (docs/benchmarks.md, "Orchestration overhead of a local run"),
and the AWS price it quotes beside its own $0.00 is the AWS run's: the 3 minutes' start and the
published rate on the type's GPU (not this machine's CPU speed).

rate, series a second, best first:
1. measured: the model's own run forecast every one of its series at its end, on a machine of the
   same type, and recorded how long predict took (record `forecast`: series, seconds). A forecast
   run uses that machine type (automation/runs/forecast.py remote_config), so it is the same model
   on the same hardware.
2. published: Chronos-2's authors state over 300 series a second on one A10G for the 120 M-parameter
   model. Other GPUs are scaled by their memory bandwidth (NVIDIA data sheets) against the A10G's
   600 GB/s, as a forward pass at predict's batch size reads every weight and activation once;
   smaller models (scratch:<size>) by their encoder's multiply-adds per token, at most 10x (beyond
   that the batches' own overheads dominate). Not measured here: this machine has no GPU.
Everything here is pure: the caller gathers the facts.
"""
from __future__ import annotations

from dataclasses import dataclass

from instance.protocol.pricing import PRICES
from instance.protocol.runconfig import SCRATCH_PRESETS

START_MINUTES = {"aws": 3.0, "local": 0.1}
A10G_SERIES_PER_SECOND = 300.0  # Chronos-2 (120 M parameters) on one A10G, as its authors publish it
BANDWIDTH_GB_S = {"T4": 320, "A10G": 600, "L4": 300, "L40S": 864, "V100": 900, "A100": 1555, "H100": 3350}
MAX_SMALL_MODEL_SPEEDUP = 10.0


@dataclass(frozen=True)
class ForecastEstimate:
    series: int
    series_per_second: float
    source: str  # where the rate comes from, in words
    start_minutes: float
    hourly_usd: float
    instance_type: str
    local: bool
    aws_usd: float | None = None  # a --local run: what the same forecast would cost on AWS

    @property
    def forecast_minutes(self) -> float:
        return self.series / self.series_per_second / 60

    @property
    def minutes(self) -> float:
        return self.start_minutes + self.forecast_minutes

    @property
    def usd(self) -> float:
        return self.hourly_usd * self.minutes / 60

    def sentence(self) -> str:
        start = "to start" if self.local else "to start the machine"
        cost = (f"$0.00 here (on AWS about ${self.aws_usd:.2f})" if self.local else
                f"about ${self.usd:.2f} on {self.instance_type} at ${self.hourly_usd:.3f}/h")
        return (f"estimate: {self.series:,} series in about {_minutes(self.minutes)} ({_minutes(self.start_minutes)} "
                f"{start}, {_minutes(self.forecast_minutes)} forecasting at {self.series_per_second:,.0f} series/s: "
                f"{self.source}), {cost}")


def _minutes(value: float) -> str:
    return f"{value:.1f} min" if value >= 0.1 else "under 0.1 min"


def measured_rate(record: dict | None, instance_type: str, local: bool) -> float | None:
    """Series a second of the model's own run's forecast, when it ran where this run will (the
    same instance type, or both on this machine) and recorded one."""
    record = record or {}
    forecast, host = record.get("forecast") or {}, record.get("host") or {}
    series, seconds = forecast.get("series"), forecast.get("seconds")
    if not series or not seconds or seconds <= 0:
        return None
    ran_here = host.get("executor") == "local"
    if ran_here != local or (not local and host.get("instance_type") != instance_type):
        return None
    return series / seconds


def published_rate(instance_type: str, base: str | None) -> float:
    """The A10G figure scaled to the type's GPU and to the model's size."""
    gpu = PRICES[instance_type].gpu_model
    rate = A10G_SERIES_PER_SECOND * BANDWIDTH_GB_S.get(gpu, BANDWIDTH_GB_S["A10G"]) / BANDWIDTH_GB_S["A10G"]
    size = (base or "").removeprefix("scratch:") if (base or "").startswith("scratch:") else None
    if size in SCRATCH_PRESETS:
        rate *= min(MAX_SMALL_MODEL_SPEEDUP, _macs(SCRATCH_PRESETS["base"]) / _macs(SCRATCH_PRESETS[size]))
    return rate


def _macs(preset: dict[str, int]) -> int:
    """Multiply-adds per token of a T5 encoder: attention's four projections and the feed-forward."""
    d, ff, layers = preset["d_model"], preset["d_ff"], preset["num_layers"]
    return layers * (4 * d * d + 2 * d * ff)


def estimate(series: int, instance_type: str, hourly_usd: float, local: bool, *, model_run: str,
             record: dict | None, base: str | None) -> ForecastEstimate:
    """`record`: the model's own run's record; `base`: what that run trained from."""
    rate = measured_rate(record, instance_type, local)
    where = "this machine" if local else instance_type
    if rate is not None:
        source = f"{model_run}'s own forecast on {where}"
    else:
        gpu = PRICES[instance_type].gpu_model
        rate = published_rate(instance_type, base)
        scaled = [x for x in (gpu if gpu != "A10G" else "", base if (base or "").startswith("scratch:") else "") if x]
        source = "Chronos-2's published A10G figure" + (f" scaled to {' and '.join(scaled)}" if scaled else "")
    aws_usd = None
    if local:  # on AWS: the machine's start, and its GPU's speed, not this machine's
        aws_minutes = START_MINUTES["aws"] + series / published_rate(instance_type, base) / 60
        aws_usd = hourly_usd * aws_minutes / 60
    return ForecastEstimate(series, rate, source, START_MINUTES["local" if local else "aws"], hourly_usd,
                            instance_type, local, aws_usd)
