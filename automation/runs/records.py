"""What the CLI knows about runs, read from S3 only: the live state and the run records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from instance.protocol.artifacts import get_json
from instance.protocol.attempts import waiting_line
from instance.protocol.liveness import Verdict
from instance.protocol.record import machines_cost
from instance.protocol.layout import RUN_ID_RE, run_started_at, s3_uri
from instance.protocol.pricing import PRICES, cost
from instance.protocol.timeutil import iso, parse_iso, utcnow

from ..context import Target
from ..errors import ChronosError, NoSuchRun


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
    zone: str | None = None
    instance_id: str | None = None
    spot: bool = False
    cost_usd: float | None = None
    progress: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # backtest: windows, series, per-window scores
    artifacts: dict = field(default_factory=dict)
    error: dict | None = None
    heartbeat_at: str | None = None
    attempt: int | None = None  # which of the run's machines runs it now
    max_machines: int | None = None
    interruptions: list = field(default_factory=list)
    waiting: str | None = None  # "interrupted at step 420, waiting for a machine (attempt 2 of 6)"
    on_demand_usd: float | None = None  # what the same hours would cost on-demand (spot runs)
    machine: str | None = None  # an active run's machine, by EC2's word: alive | gone | unknown
    machine_note: str | None = None  # "its machine i-0abc is terminated and no replacement is coming"
    lost: bool = False  # the machine is gone for good, or silent past the stale limit
    kind: str = "train"  # or forecast: a forecast-only run (the run config's kind)
    sweep: dict = field(default_factory=dict)  # a sweep's trials done / running / left and the best so far

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def judged(self, verdict: Verdict) -> "RunView":
        """With what the liveness rule says of the active run's machine."""
        self.machine, self.machine_note, self.lost = verdict.machine.value, verdict.why, verdict.stale
        self.waiting = verdict.waiting or self.waiting
        if verdict.stale:  # what the run will be recorded with (`boot_failed`: the machine's own word)
            self.reason, self.error = verdict.reason, self.error or verdict.error
        return self


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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
    by_machine = machines_cost(state.get("machines") or [], state.get("executor"))
    # The machine now running, as EC2 gave it (the group may launch any listed type); before
    # one has booted, the config's first choice.
    machine = (state.get("machines") or [{}])[-1]
    instance_type = machine.get("instance_type") or state.get("instance_type")
    return RunView(
        attempt=state.get("attempt"), max_machines=state.get("max_machines"),
        interruptions=state.get("interruptions") or [], waiting=waiting_line(state),
        on_demand_usd=by_machine[1] if by_machine else None,
        run_id=state["run_id"], active=True, status=state["status"], started_at=state.get("started_at"),
        elapsed_seconds=elapsed, executor=state.get("executor"), instance_type=instance_type,
        zone=machine.get("zone"), instance_id=state.get("instance_id"), spot=bool(state.get("spot")),
        cost_usd=by_machine[0] if by_machine else _cost(state.get("executor"), instance_type,
                                                        bool(state.get("spot")), elapsed),
        progress=state.get("progress") or {}, history=state.get("history") or [], error=state.get("error"),
        heartbeat_at=state.get("heartbeat_at"), sweep=(state.get("progress") or {}).get("sweep") or {},
    )


def from_record(record: dict) -> RunView:
    host, cost_doc = record.get("host") or {}, record.get("cost") or {}
    final = record.get("final_status")
    elapsed = record.get("duration_seconds") or _elapsed(record.get("started_at"), record.get("ended_at"))
    return RunView(
        run_id=record["run_id"], active=False, status=final or "unknown", final_status=final,
        reason=record.get("reason"), started_at=record.get("started_at"), ended_at=record.get("ended_at"),
        elapsed_seconds=elapsed, executor=host.get("executor"), instance_type=host.get("instance_type"),
        zone=host.get("zone"), instance_id=host.get("instance_id"), spot=bool(cost_doc.get("spot")),
        cost_usd=cost_doc.get("estimated_usd"), progress=record.get("training") or {},
        history=[{"status": k, "at": v.get("started_at")} for k, v in (record.get("phases") or {}).items()],
        metrics=record.get("metrics") or {}, evaluation=record.get("evaluation") or {},
        artifacts=record.get("artifacts") or {}, error=record.get("error"),
        attempt=record.get("attempt"), interruptions=record.get("interruptions") or [],
        on_demand_usd=cost_doc.get("on_demand_usd"), kind=(record.get("config") or {}).get("kind") or "train",
        sweep={k: v for k, v in (record.get("sweep") or {}).items() if k != "trials"},
    )


def view(target: Target, run_id: str | None = None, check: Callable[[Any], Verdict] | None = None) -> RunView:
    """The active run (one GET), a named run, or the latest one. `check` judges the active run's
    lease (automation/runs/runcheck.py: EC2's word on its machine)."""
    lease = target.state_store().read()
    if lease and (run_id is None or lease.run_id == run_id):
        shown = from_state(dict(lease.state))
        if check is not None:
            shown.judged(check(lease))
        if shown.waiting:
            # What the group says about its failed launches (AWS's own words: capacity or quota).
            from instance.protocol.group import failed_launches

            reasons = failed_launches(target.autoscaling, lease.run_id, limit=5)
            if reasons:
                from .capacity import why_no_machine

                shown.waiting += f"; {why_no_machine(target, lease.state, reasons[0])}"
        return shown
    run_id = run_id or latest_run_id(target)
    if run_id is None:
        raise NoSuchRun(f"no run has been launched in env {target.env} yet; start one with `chronos-train launch CONFIG`")
    record = read_record(target, run_id)
    if record is None:
        raise NoSuchRun(f"run {run_id} is neither active nor recorded in env {target.env}; list runs with `chronos-train runs`")
    return from_record(record)


def read_record(target: Target, run_id: str) -> dict | None:
    """A run's record: the final copy kept beside its outputs, else the one under logs/ (a run
    still going, or one that ended before runs kept a copy). None: no record at all."""
    layout = target.layout
    return (get_json(target.s3, target.bucket, layout.final_record(run_id))
            or get_json(target.s3, target.bucket, layout.training_record(run_id)))


def run_ids(target: Target) -> list[str]:
    """Every run with outputs ({env}/run-*/, kept 60 days) or logs ({env}/logs/run-*/, 14 days)."""
    ids: set[str] = set()
    for prefix in (f"{target.env}/", target.layout.logs_root):
        pages = target.s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix, Delimiter="/")
        ids |= {p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for page in pages for p in page.get("CommonPrefixes", [])}
    return sorted(i for i in ids if RUN_ID_RE.match(i))


def latest_run_id(target: Target) -> str | None:
    ids = run_ids(target)
    return ids[-1] if ids else None


def history(target: Target, limit: int = 50) -> list[RunView]:
    from concurrent.futures import ThreadPoolExecutor

    ids = run_ids(target)[-limit:]
    lease = target.state_store().read()
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(lambda r: read_record(target, r), ids))
    views = {r["run_id"]: from_record(r) for r in records if r}
    for rid in ids:
        views.setdefault(rid, RunView(run_id=rid, active=False, status="unknown", started_at=iso(run_started_at(rid))))
    if lease:
        views[lease.run_id] = from_state(dict(lease.state))
    return sorted(views.values(), key=lambda v: v.run_id, reverse=True)


# A record the CLI closes is re-read after every refused write; each refusal means someone
# (the agent, another cleaner) wrote it meanwhile, and a few are all a run ever sees.
RECORD_WRITE_TRIES = 5


def record_end_from_cli(target: Target, run_id: str, final_status: str, reason: str, state: dict | None,
                        steps: list[dict]) -> dict:
    """When the agent cannot (it was killed hard or died): close the run's records ourselves.

    Both writes are conditional (create if absent, else replace only the version read), and a
    record the agent already finished is never replaced: its training.json with a final status
    and its cleanup_status.json stay as the agent wrote them. Returns the training record that
    stands.
    """
    layout = target.layout
    ended = iso()
    record = _close_conditionally(
        target, layout.training_record(run_id),
        lambda current: None if (current or {}).get("final_status") else
        _closed_record(target, run_id, final_status, reason, state or {}, current or {}, ended))
    # The copy that lasts as long as the outputs: the record that stands, unless the agent kept its own.
    _close_conditionally(target, layout.final_record(run_id),
                         lambda current: None if (current or {}).get("final_status") else record)
    _close_conditionally(
        target, layout.cleanup_status(run_id),
        lambda current: None if (current or {}).get("by") == "agent" else {
            "run_id": run_id,
            "final_status": record.get("final_status"),
            "steps": list((current or {}).get("steps") or []) + steps,
            "completed_at": ended,
            "by": "cli",
        })
    return record


def _close_conditionally(target: Target, key: str, build) -> dict:
    """Read `key`, let `build` make its new body (None: leave it as it is), write it back only if
    nobody wrote in between; on a refusal read again. Returns the body that stands."""
    from instance.protocol.artifacts import dumps, get_json_versioned, put_if

    for _ in range(RECORD_WRITE_TRIES):
        current, etag = get_json_versioned(target.s3, target.bucket, key)
        doc = build(current)
        if doc is None:
            return current
        if put_if(target.s3, target.bucket, key, dumps(doc), etag) is not None:
            return doc
    raise ChronosError(f"{s3_uri(target.bucket, key)} kept changing while it was being closed; "
                       "run `chronos-train verify-cleanup --fix` again")


def _closed_record(target: Target, run_id: str, final_status: str, reason: str, state: dict, record: dict,
                   ended: str) -> dict:
    """The run's training.json closed by the CLI, keeping whatever the agent recorded so far."""
    record = dict(record)
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
    record.setdefault("artifacts", {"log_uri": s3_uri(target.bucket, target.layout.agent_log(run_id))})
    return record


def step(resource: str, action: str, result: str, detail: str = "") -> dict:
    return {"resource": resource, "action": action, "result": result, "detail": detail, "at": iso()}
