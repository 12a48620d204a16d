"""What the CLI knows about runs, read from S3 only: the live state and the run records."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from instance.protocol.artifacts import get_json, put_json
from instance.protocol.layout import run_started_at, s3_uri
from instance.protocol.pricing import PRICES, cost
from instance.protocol.timeutil import iso, parse_iso, utcnow

from .context import Target
from .errors import NoSuchRun


@dataclass
class RunView:
    run_id: str
    active: bool
    status: str
    final_status: str | None = None
    reason: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    elapsed_seconds: float | None = None
    executor: str | None = None
    instance_type: str | None = None
    instance_id: str | None = None
    spot: bool = False
    cost_usd: float | None = None
    progress: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    error: dict | None = None
    heartbeat_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _elapsed(start: str | None, end: str | None = None) -> float | None:
    began = parse_iso(start)
    if not began:
        return None
    return round(((parse_iso(end) if end else utcnow()) - began).total_seconds(), 1)


def _cost(executor: str | None, instance_type: str | None, spot: bool, seconds: float | None) -> float | None:
    if executor == "local":
        return 0.0
    if instance_type in PRICES and seconds is not None:
        return cost(instance_type, spot, seconds)
    return None


def from_state(state: dict) -> RunView:
    elapsed = _elapsed(state.get("started_at"))
    return RunView(
        run_id=state["run_id"], active=True, status=state["status"], started_at=state.get("started_at"),
        elapsed_seconds=elapsed, executor=state.get("executor"), instance_type=state.get("instance_type"),
        instance_id=state.get("instance_id"), spot=bool(state.get("spot")),
        cost_usd=_cost(state.get("executor"), state.get("instance_type"), bool(state.get("spot")), elapsed),
        progress=state.get("progress") or {}, history=state.get("history") or [], error=state.get("error"),
        heartbeat_at=state.get("heartbeat_at"),
    )


def from_record(record: dict) -> RunView:
    host, cost_doc = record.get("host") or {}, record.get("cost") or {}
    final = record.get("final_status")
    elapsed = record.get("duration_seconds") or _elapsed(record.get("started_at"), record.get("ended_at"))
    return RunView(
        run_id=record["run_id"], active=False, status=final or "unknown", final_status=final,
        reason=record.get("reason"), started_at=record.get("started_at"), ended_at=record.get("ended_at"),
        elapsed_seconds=elapsed, executor=host.get("executor"), instance_type=host.get("instance_type"),
        instance_id=host.get("instance_id"), spot=bool(cost_doc.get("spot")),
        cost_usd=cost_doc.get("estimated_usd"), progress=record.get("training") or {},
        history=[{"status": k, "at": v.get("started_at")} for k, v in (record.get("phases") or {}).items()],
        metrics=record.get("metrics") or {}, artifacts=record.get("artifacts") or {}, error=record.get("error"),
    )


def view(target: Target, run_id: str | None = None) -> RunView:
    """The active run (one GET), a named run, or the latest one."""
    lease = target.state_store().read()
    if lease and (run_id is None or lease.run_id == run_id):
        return from_state(dict(lease.state))
    run_id = run_id or latest_run_id(target)
    if run_id is None:
        raise NoSuchRun(f"no run has been launched in env {target.env} yet; start one with `chronos-train launch CONFIG`")
    record = get_json(target.s3, target.bucket, target.layout.training_record(run_id))
    if record is None:
        raise NoSuchRun(f"run {run_id} is neither active nor recorded in env {target.env}; list runs with `chronos-train runs`")
    return from_record(record)


def run_ids(target: Target) -> list[str]:
    pages = target.s3.get_paginator("list_objects_v2").paginate(
        Bucket=target.bucket, Prefix=target.layout.logs_root, Delimiter="/"
    )
    ids = [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for page in pages for p in page.get("CommonPrefixes", [])]
    return sorted(i for i in ids if i.startswith("run-"))


def latest_run_id(target: Target) -> str | None:
    ids = run_ids(target)
    return ids[-1] if ids else None


def history(target: Target, limit: int = 50) -> list[RunView]:
    ids = run_ids(target)[-limit:]
    lease = target.state_store().read()
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(lambda r: get_json(target.s3, target.bucket, target.layout.training_record(r)), ids))
    views = {r["run_id"]: from_record(r) for r in records if r}
    for rid in ids:
        views.setdefault(rid, RunView(run_id=rid, active=False, status="unknown", started_at=iso(run_started_at(rid))))
    if lease:
        views[lease.run_id] = from_state(dict(lease.state))
    return sorted(views.values(), key=lambda v: v.run_id, reverse=True)


def record_end_from_cli(target: Target, run_id: str, final_status: str, reason: str, state: dict | None,
                        steps: list[dict]) -> dict:
    """When the agent cannot (it was killed hard or died): write the run's record ourselves.

    Keeps whatever the agent already recorded (interim training.json) and only closes it.
    """
    layout = target.layout
    record = get_json(target.s3, target.bucket, layout.training_record(run_id)) or {}
    if record.get("final_status"):
        return record
    state = state or {}
    ended = iso()
    started = record.get("started_at") or state.get("started_at") or iso(run_started_at(run_id))
    seconds = _elapsed(started, ended)
    record.update(
        run_id=run_id, env=target.env, final_status=final_status, reason=reason,
        error=record.get("error") or state.get("error"), started_at=started, ended_at=ended,
        duration_seconds=seconds, recorded_by="cli",
    )
    record.setdefault("host", {"executor": state.get("executor"), "instance_id": state.get("instance_id"),
                               "instance_type": state.get("instance_type")})
    est = _cost(state.get("executor"), state.get("instance_type"), bool(state.get("spot")), seconds)
    record.setdefault("cost", {"instance_type": state.get("instance_type"), "spot": bool(state.get("spot")),
                               "estimated_usd": est})
    record.setdefault("artifacts", {"log_uri": s3_uri(target.bucket, layout.agent_log(run_id))})
    put_json(target.s3, target.bucket, layout.training_record(run_id), record)
    agent_cleanup = get_json(target.s3, target.bucket, layout.cleanup_status(run_id)) or {}
    put_json(target.s3, target.bucket, layout.cleanup_status(run_id), {
        "run_id": run_id,
        "steps": (agent_cleanup.get("steps") or []) + steps,
        "completed_at": ended,
        "by": "agent+cli" if agent_cleanup else "cli",
    })
    return record


def step(resource: str, action: str, result: str, detail: str = "") -> dict:
    return {"resource": resource, "action": action, "result": result, "detail": detail, "at": iso()}
