"""training.json, the complete record of one run, built up phase by phase."""
from __future__ import annotations

import copy
import importlib.metadata
import platform
import socket
import sys
from datetime import datetime
from typing import Any

from .pricing import PRICES, cost, hourly
from .timeutil import iso, parse_iso, utcnow


def versions() -> dict[str, str | None]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = gpu = None
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.version.cuda
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return {
        "python": platform.python_version(),
        "torch": dist("torch"),
        "chronos": dist("chronos-forecasting"),
        "transformers": dist("transformers"),
        "peft": dist("peft"),
        "cuda": cuda,
        "gpu": gpu,
    }


class RunRecord:
    def __init__(self, *, run_id: str, env: str, started_at: str, host: dict[str, Any]):
        self.doc: dict[str, Any] = {
            "run_id": run_id,
            "env": env,
            "final_status": None,
            "reason": None,
            "error": None,
            "started_at": started_at,
            "ended_at": None,
            "duration_seconds": None,
            "phases": {},
            "metrics": None,
            "evaluation": None,
            "training": None,
            "data": None,
            "versions": versions(),
            "host": {"hostname": socket.gethostname(), **host},
            "cost": None,
            "artifacts": {"model_uri": None, "checkpoints_uri": None, "metadata_uri": None, "log_uri": None},
            "config": None,
        }

    # -- phases -------------------------------------------------------------------------------
    def phase_started(self, name: str, now: datetime | None = None) -> None:
        self.doc["phases"][name] = {"started_at": iso(now), "ended_at": None, "seconds": None, "result": "running"}

    def phase_ended(self, name: str, result: str, detail: dict[str, Any] | None = None, now: datetime | None = None) -> None:
        entry = self.doc["phases"].setdefault(name, {"started_at": iso(now)})
        end = now or utcnow()
        entry.update(ended_at=iso(end), result=result)
        entry["seconds"] = round((end - parse_iso(entry["started_at"])).total_seconds(), 3)
        if detail:
            entry["detail"] = detail

    def running_phase(self) -> str | None:
        for name, entry in self.doc["phases"].items():
            if entry.get("result") == "running":
                return name
        return None

    # -- content --------------------------------------------------------------------------------
    def update(self, **fields: Any) -> None:
        self.doc.update(fields)

    def set_artifact(self, name: str, uri: str | None) -> None:
        self.doc["artifacts"][name] = uri

    def refresh_versions(self) -> None:
        self.doc["versions"] = versions()

    def finish(self, final_status: str, reason: str | None, error: dict | None, now: datetime | None = None) -> None:
        """Decide the outcome once; a second call (cleanup retried) keeps the first decision so the
        record written by a retry is the same record."""
        if self.doc["final_status"] is not None:
            return
        end = now or utcnow()
        self.doc.update(final_status=final_status, reason=reason, error=error, ended_at=iso(end))
        start = parse_iso(self.doc["started_at"]) or end
        self.doc["duration_seconds"] = round((end - start).total_seconds(), 3)
        self.doc["cost"] = estimate_cost(self.doc["host"], self.doc["duration_seconds"], self.doc.get("machines"))
        share_sweep_cost(self.doc.get("sweep"), self.doc["cost"].get("estimated_usd"))

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)


def share_sweep_cost(sweep: dict[str, Any] | None, usd: float | None) -> None:
    """Each trial of a sweep gets the share of the run's cost its training and backtest took."""
    trials = (sweep or {}).get("trials") or []
    total = sum(t.get("seconds") or 0 for t in trials)
    for t in trials:
        share = (t.get("seconds") or 0) / total if total else 0.0
        t["cost_share"] = round(share, 4)
        t["cost_usd"] = round(usd * share, 4) if usd is not None else None


def machines_cost(machines: list[dict], executor: str | None, now: datetime | None = None) -> tuple[float, float] | None:
    """(cost, on-demand cost of the same hours) of a run's machines, each at its own type and
    market, from the lock's `machines` list; None when none is known or a type has no price."""
    if executor == "local":
        return 0.0, 0.0
    if not machines or any(m.get("instance_type") not in PRICES for m in machines):
        return None
    end_default = now or utcnow()
    paid = demand = 0.0
    for m in machines:
        start, end = parse_iso(m.get("started_at")), parse_iso(m.get("ended_at")) or end_default
        seconds = (end - start).total_seconds() if start else 0.0
        paid += cost(m["instance_type"], m.get("market") == "spot", seconds, m.get("hourly_usd"))
        demand += cost(m["instance_type"], False, seconds)
    return round(paid, 4), round(demand, 4)


def estimate_cost(host: dict[str, Any], seconds: float, machines: list[dict] | None = None) -> dict[str, Any]:
    instance_type, spot = host.get("instance_type"), bool(host.get("spot"))
    if host.get("executor") == "local":
        return {
            "instance_type": instance_type,
            "spot": spot,
            "hourly_usd": 0.0,
            "estimated_usd": 0.0,
            "note": "local executor: the run used this machine, no AWS instance was billed",
        }
    by_machine = machines_cost(machines or [], host.get("executor"))
    if by_machine and len(machines) > 1:
        return {"instance_type": instance_type, "spot": spot, "hourly_usd": None, "estimated_usd": by_machine[0],
                "on_demand_usd": by_machine[1], "machines": len(machines),
                "note": "estimate from the built-in price table, each machine at its own type, market and hours"}
    if instance_type not in PRICES:
        return {"instance_type": instance_type, "spot": spot, "hourly_usd": None, "estimated_usd": None,
                "note": f"no price known for {instance_type}"}
    return {
        "instance_type": instance_type,
        "spot": spot,
        "hourly_usd": round(hourly(instance_type, spot), 4),
        "estimated_usd": cost(instance_type, spot, seconds),
        "on_demand_usd": cost(instance_type, False, seconds),
        "note": "estimate from the built-in price table (instance + 100 GB gp3), not the AWS bill",
    }
