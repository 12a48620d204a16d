"""The instance agent: one run, from the lock the launcher created to a terminated machine.

    python -m instance.agent --env E --bucket B --run-id R [--region REG] [--endpoint-url URL]
                             [--instance-id ID] [--local] [--work-dir DIR]
                             [--shutdown-at EPOCH] [--expect-gpu auto|yes|no]

initialization → data_sync → training → forecast → results_sync → cleanup (a forecast-only run,
`kind: forecast`, skips training and uploads only its forecast). Any failure moves the run to
`failed`, a kill (the CLI moves the state to `killed`) stops it at the next step; both then run
cleanup, which always runs. An agent that finds it is fenced (the lock was released by someone
else or belongs to another run) writes nothing more and exits 3.

Every machine of a run (the run stack's Auto Scaling group replaces a lost one) first decides
from the lock whether the run goes on here (protocol/attempts.py): start, resume from the newest
checkpoint as attempt n + 1, or end it. A machine that gets a spot notice (or SIGTERM from a
shutdown it did not ask for) while a replacement may still come checkpoints, records the
interruption, keeps the lock and ends itself: the group brings the next machine.

Exit codes: 0 completed, 4 failed, 5 killed (cleanup done in all three); 3 not the holder or
fenced (nothing written); 7 interrupted, the run left to a replacement machine; 1 cleanup itself
could not finish.
Environment: CHRONOS_HEARTBEAT_SECONDS (10), CHRONOS_LOG_UPLOAD_SECONDS (60),
CHRONOS_DEADLINE_SECONDS (remaining time before the soft deadline; default: a safety margin
before --shutdown-at, the dead-man switch's time on this machine's clock, or without it
max_runtime_minutes from the lock's start), and with --local only CHRONOS_AGENT_HOOKS (the tests' seam, see
hooks.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..protocol.aws import AwsTarget, client
from ..protocol.layout import check_env, check_run_id
from ..protocol.attempts import (END, NOT_HOLDER, RESUME, TOO_MANY_INTERRUPTIONS, MAX_RUNTIME_EXCEEDED, Boot,
                                 deadline, decide_boot, interruption_entry, machine_entry, with_lost_machine)
from ..protocol.group import leave_group
from ..protocol.pricing import quoted
from ..protocol.record import RunRecord
from ..protocol.state import Fenced, Lease, RunKilled, StateStore
from ..protocol.status import MAIN_CHAIN, Status
from ..protocol.timeutil import iso, parse_iso, utcnow
from .cleanup import Cleanup, CleanupReport, Outcome
from .context import AgentContext
from . import hooks
from .lockholder import Heartbeat, KilledByUser, LockHolder, NoticeWatch, StopRun
from .selfterminate import terminate_instance
from .logshipper import LogShipper, setup_logging

log = logging.getLogger("instance.agent")
INTERRUPTED = "interrupted"  # an outcome that is no ending: the run goes on on another machine

EXIT_COMPLETED, EXIT_CLEANUP_FAILED, EXIT_NOT_HOLDER, EXIT_FAILED, EXIT_KILLED, EXIT_INTERRUPTED = 0, 1, 3, 4, 5, 7
# A lock another machine's agent wrote within this many of its heartbeats belongs to a live
# machine: a replacement that boots beside it (capacity rebalancing launches the new one first)
# waits for it to go, at most HOLDER_WAIT_S.
HOLDER_FRESH_BEATS = 4
HOLDER_WAIT_S = 6 * 60.0
EC2_WORK_DIR = Path("/opt/chronos/work")


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def deadline_margin_seconds(max_runtime_minutes: int) -> float:
    """Stop this long before the dead-man switch: time to save, upload and clean up."""
    return min(300.0, max_runtime_minutes * 60 * 0.25)


def soft_deadline(started_at: str | None, max_runtime_minutes: int, clock: Callable[[], float] = time.monotonic,
                  shutdown_at: float | None = None, run_left_s: float | None = None) -> float:
    """The deadline on `clock`. With `shutdown_at` (the dead-man switch, in epoch seconds read
    from this machine's clock when it was set), one clock decides: the agent stops a margin
    before the machine is ended. Without it, counted from the lock's creation (before the
    machine even booted), so it still falls before a switch set at boot."""
    override = os.environ.get("CHRONOS_DEADLINE_SECONDS")
    if override:
        return clock() + float(override)
    margin = deadline_margin_seconds(max_runtime_minutes)
    if shutdown_at is not None:
        # A replacement machine's switch counts from its own boot; the run's deadline may be sooner.
        left = shutdown_at - time.time()
        if run_left_s is not None:
            left = min(left, run_left_s)
        return clock() + left - margin
    if run_left_s is not None:
        return clock() + run_left_s - margin
    start = parse_iso(started_at) or utcnow()
    budget = max_runtime_minutes * 60 - margin
    return clock() + budget - (utcnow() - start).total_seconds()


@dataclass
class Phase:
    status: Status
    run: Callable[[], Any]
    when: Callable[[], bool] = lambda: True  # read once the config is known: a forecast-only run trains nothing


class Agent:
    def __init__(self, ctx: AgentContext, *, heartbeat_seconds: float, log_seconds: float, spot_probe=None,
                 rebalance_probe=None, notice_seconds: float = 5.0):
        self.ctx = ctx
        self.heartbeat = Heartbeat(ctx.holder, heartbeat_seconds, self._beat_fields)
        self.notices = NoticeWatch(ctx.holder, notice_seconds, spot_probe, rebalance_probe) if spot_probe else None
        self.shipper = LogShipper(
            ctx.s3, ctx.bucket, ctx.layout.agent_log(ctx.run_id), ctx.log_path, log_seconds, ctx.guard
        )
        self.cleanup = Cleanup(
            ctx, stop_background=self._stop_background, upload_log=lambda: self.shipper.upload(force=True)
        )

    def _beat_fields(self) -> dict:
        return {"agent": {"pid": os.getpid(), "host": self.ctx.record.doc["host"]["hostname"]}}

    def _stop_background(self) -> None:
        self.heartbeat.stop()
        if self.notices is not None:
            self.notices.stop()
        self.shipper.stop()

    def run(self) -> int:
        self.heartbeat.start()
        if self.notices is not None:
            self.notices.start()
        self.shipper.start()
        outcome, fenced = self._run_phases()
        if fenced:
            return self._fenced_exit()
        if outcome.final_status == INTERRUPTED:
            outcome = self._hand_over(outcome)
            if outcome is None:
                return EXIT_INTERRUPTED
            if outcome.final_status == "fenced":
                return self._fenced_exit()
        return self.end(outcome)

    def end(self, outcome: Outcome) -> int:
        """Cleanup (always), once more if a step failed, and the exit code."""
        report = self.cleanup.run(outcome)
        if not report.ok and not report.fenced:
            log.warning("cleanup had errors; trying the failed steps once more")
            time.sleep(2)
            report = self.cleanup.run(outcome)
        return self._exit_code(report)

    # -- phases ------------------------------------------------------------------------------
    def _run_phases(self) -> tuple[Outcome, bool]:
        from . import phases as ph

        ctx = self.ctx
        state: dict[str, Any] = {}
        current = Status.INITIALIZATION

        def training() -> bool:
            return ctx.config.kind == "train"

        plan = [
            Phase(Status.INITIALIZATION, lambda: ph.initialization(ctx, ph.InitInput())),
            Phase(Status.DATA_SYNC, lambda: ph.data_sync(ctx, ph.DataSyncInput(
                ctx.config.dataset, ctx.data_dir, ctx.config.training.prediction_length if training() else None,
                ctx.config.training.context_length, ctx.config.evaluation.windows, ctx.config.columns.names()))),
            Phase(Status.TRAINING, lambda: ph.training(ctx, ph.TrainingInput(ctx.config, state["data_sync"].files, ctx.train_dir)),
                  when=training),
            Phase(Status.FORECAST, lambda: ph.forecast(ctx, ph.ForecastInput(
                state["training"].config if training() else ctx.config, state["data_sync"].files,
                state["training"].model_dir if training() else None, state["data_sync"].fingerprint,
                state["data_sync"].columns))),
            Phase(Status.RESULTS_SYNC, lambda: ph.results_sync(ctx, ph.ResultsInput(
                state["training"].model_dir, state["training"], state["data_sync"], state["training"].config)),
                  when=training),
            Phase(Status.RESULTS_SYNC, lambda: ph.forecast_results(ctx, state["forecast"]), when=lambda: not training()),
        ]
        try:
            ctx.holder.check()
            for phase in plan:
                if not phase.when():
                    continue
                current = phase.status
                state[phase.status.value] = self._run_phase(phase)
            if ctx.holder.killed:  # killed while the last phase ran: the state says killed
                raise KilledByUser("the run was killed during results_sync")
            return Outcome.completed(), False
        except RunKilled:
            outcome = Outcome.killed()
        except Fenced as exc:
            log.error("fenced: %s", exc)
            return Outcome("failed", "fenced"), True
        except StopRun as stop:
            if stop.final_status == "killed":
                outcome = Outcome.killed()
            elif getattr(stop, "interruption", False) and ctx.replaceable:
                log.warning("interrupted in %s: %s; a replacement machine goes on", current.value, stop)
                return Outcome(INTERRUPTED, stop.reason, _error(stop, current)), False
            elif getattr(stop, "interruption", False) and int(ctx.holder.lease.state.get("max_machines", 1)) > 1:
                outcome = Outcome("failed", TOO_MANY_INTERRUPTIONS, _error(stop, current))
            else:
                outcome = Outcome("failed", stop.reason, _error(stop, current))
        except Exception as exc:
            log.error("phase %s failed:\n%s", current.value, traceback.format_exc())
            outcome = Outcome("failed", type(exc).__name__, _error(exc, current))
        self._end_running_phase(outcome)
        return self._record_failure(outcome)

    def _run_phase(self, phase: Phase) -> Any:
        ctx = self.ctx
        ctx.holder.check()
        if phase.status != Status.INITIALIZATION and is_ahead(phase.status, ctx.holder.status):
            ctx.holder.move(phase.status)
        else:  # the first phase, or one a replacement machine does again: the status stays
            ctx.holder.beat(**self._beat_fields())
        log.info("phase %s", phase.status.value)
        ctx.record.phase_started(phase.status.value)
        ctx.write_record(ctx.layout.training_record(ctx.run_id), ctx.record.snapshot())
        ctx.hooks.phase_started(phase.status.value, ctx.holder.check)
        if phase.status == Status.DATA_SYNC and ctx.holder.deadline is None:
            ctx.holder.deadline = soft_deadline(ctx.holder.lease.state.get("started_at"),
                                                ctx.config.instance.max_runtime_minutes, shutdown_at=ctx.shutdown_at,
                                                run_left_s=ctx.run_left_s)
        out = phase.run()
        ctx.record.phase_ended(phase.status.value, "ok", out.summary())
        return out

    def _end_running_phase(self, outcome: Outcome) -> None:
        name = self.ctx.record.running_phase()
        if name:
            self.ctx.record.phase_ended(name, outcome.final_status if outcome.final_status == "killed" else "failed")

    def _record_failure(self, outcome: Outcome) -> tuple[Outcome, bool]:
        """Move the state to failed with the error; a kill that landed first wins."""
        holder = self.ctx.holder
        if outcome.final_status != "failed" or holder.killed:
            return (Outcome.killed() if holder.killed else outcome), False
        try:
            holder.move(Status.FAILED, error=outcome.error or {"class": outcome.reason, "message": outcome.reason, "phase": None})
        except RunKilled:
            return Outcome.killed(), False
        except Fenced as exc:
            log.error("fenced: %s", exc)
            return outcome, True
        except Exception as exc:  # S3 unreachable: cleanup still runs and says what it could not do
            log.error("could not record the failure in the state: %s: %s", type(exc).__name__, exc)
        return outcome, False

    # -- endings -----------------------------------------------------------------------------
    def _hand_over(self, outcome: Outcome) -> Outcome | None:
        """Leave the run to the next machine: the interruption recorded in the lock (which stays
        held), the records and log uploaded, this machine ended; the group replaces it. None when
        handed over; else the outcome to end the run with (a kill that came first, or fenced)."""
        ctx = self.ctx
        self._stop_background()
        now = utcnow()
        progress = ctx.holder.lease.state.get("progress") or {}
        entry = interruption_entry(progress.get("step"), ctx.instance_id, ctx.record.doc["host"].get("instance_type"),
                                   ctx.record.doc["host"].get("zone"), ctx.holder.spot_notice or outcome.reason, now)
        entry["checkpoint_step"] = ctx.last_checkpoint_step

        def note(state: dict) -> dict:
            machines = list(state.get("machines") or [])
            if machines:
                machines[-1] = {**machines[-1], "ended_at": iso(now)}
            return {**state, "interruptions": [*(state.get("interruptions") or []), entry],
                    "awaiting_machine": True, "machines": machines}

        try:
            ctx.holder.amend(note)
        except RunKilled:
            return Outcome.killed()  # killed meanwhile: this machine ends the run after all
        except Fenced as exc:
            log.error("fenced: %s", exc)
            return Outcome("fenced")
        name = ctx.record.running_phase()
        if name:
            ctx.record.phase_ended(name, "interrupted")
        ctx.record.update(interruptions=ctx.holder.lease.state["interruptions"])
        for what, action in (("training record", lambda: ctx.write_record(ctx.layout.training_record(ctx.run_id),
                                                                           ctx.record.snapshot())),
                             ("agent log", lambda: self.shipper.upload(force=True))):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the lock holds what the next machine needs
                log.warning("interrupted: could not upload the %s: %s", what, exc)
        result, detail = terminate_instance(ctx.ec2(), ctx.instance_id) if ctx.instance_id else ("not_found", "")
        log.warning("interrupted at step %s (checkpoint %s); this machine ends (%s: %s), the group replaces it",
                    entry["step"], entry["checkpoint_step"], result, detail)
        return None

    def _fenced_exit(self) -> int:
        self._stop_background()
        report = self.cleanup.run(Outcome("failed", "fenced"))  # only terminates: nothing is written
        log.error("fenced: wrote nothing more; instance termination: %s", report.steps[-1].result if report.steps else "-")
        return EXIT_NOT_HOLDER

    def _exit_code(self, report: CleanupReport) -> int:
        if report.fenced:
            return EXIT_NOT_HOLDER
        if not report.ok:
            return EXIT_CLEANUP_FAILED
        return {"completed": EXIT_COMPLETED, "killed": EXIT_KILLED}.get(report.outcome.final_status, EXIT_FAILED)


def is_ahead(target: Status, current: Status) -> bool:
    return target in MAIN_CHAIN and current in MAIN_CHAIN and MAIN_CHAIN.index(target) > MAIN_CHAIN.index(current)


def _error(exc: BaseException, phase: Status) -> dict[str, str]:
    return {"class": type(exc).__name__, "message": str(exc) or type(exc).__name__, "phase": phase.value}


# -- entry ---------------------------------------------------------------------------------------
def await_machine_gone(store: StateStore, lease: Lease | None, instance_id: str | None, fresh_s: float,
                       clock: Callable[[], float] = time.monotonic) -> Lease | None:
    """While another machine's agent still writes the run's lock (the group launched this one
    before the old one went, as capacity rebalancing does), wait for it to stop, at most
    HOLDER_WAIT_S; its next heartbeat would otherwise be the last word."""
    waited = clock()
    while lease is not None and not lease.state.get("awaiting_machine") and lease.state.get("instance_id") \
            and lease.state.get("instance_id") != instance_id and lease.age is not None \
            and lease.age.total_seconds() < fresh_s and clock() - waited < HOLDER_WAIT_S \
            and not Status(lease.state["status"]).is_terminal and lease.state.get("group"):
        log.info("machine %s still writes the lock (%.0f s ago); waiting for it to go",
                 lease.state["instance_id"], lease.age.total_seconds())
        time.sleep(min(5.0, fresh_s / 4))
        lease = store.read()
    return lease


def begin(agent: Agent, boot: Boot, now) -> int | None:
    """Act on the boot decision before any phase: end the run here (an exit code), or record this
    machine in the lock (None: go on with the phases, from the start or resumed)."""
    ctx = agent.ctx
    holder = ctx.holder
    if boot.action == END:
        earlier = ctx.read_record(ctx.layout.training_record(ctx.run_id))
        if earlier:
            # The machine before this one got this far (its metrics, maybe its final outcome):
            # finish its cleanup with that record, not a poorer one.
            ctx.record.doc.update(earlier)
        if boot.final_status == "killed":
            return None  # the phases stop at their first check; cleanup records the kill
        if not holder.status.is_terminal:
            error = {"class": boot.reason, "message": _END_MESSAGES.get(boot.reason, boot.reason), "phase": None}
            try:
                holder.move(Status.FAILED, error=error, reason=boot.reason)
            except RunKilled:
                return None
            except Fenced as exc:
                log.error("fenced: %s", exc)
                return agent._fenced_exit()
        return agent.end(Outcome(boot.final_status, boot.reason,
                                 holder.lease.state.get("error") if boot.final_status == "failed" else None))
    host, spot = ctx.record.doc["host"], bool(holder.lease.state.get("spot"))
    machine = machine_entry(ctx.instance_id, host.get("instance_type"), host.get("zone"), "spot" if spot else "on-demand",
                            boot.attempt, now, quoted(holder.lease.state.get("spot_prices"), host.get("instance_type"),
                                                      host.get("zone")) if spot else None)
    earlier = ctx.read_record(ctx.layout.training_record(ctx.run_id)) if boot.action == RESUME else None
    if earlier:
        ctx.record.update(earlier_machines=[*(earlier.get("earlier_machines") or []),
                                            {k: earlier.get(k) for k in ("host", "phases", "training")}])

    def enter(state: dict) -> dict:
        state = with_lost_machine(state, ctx.instance_id, now) if boot.action == RESUME else state
        return {**state, "attempt": boot.attempt, "instance_id": ctx.instance_id, "awaiting_machine": False,
                "machines": [*(state.get("machines") or []), machine]}

    try:
        holder.amend(enter)
    except RunKilled:
        return None
    except Fenced as exc:
        log.error("fenced: %s", exc)
        return agent._fenced_exit()  # writes nothing; ends this machine through EC2
    ctx.record.update(attempt=boot.attempt, interruptions=holder.lease.state.get("interruptions") or [])
    if boot.last_machine and ctx.in_group:
        # The last machine the run may have: out of the group now, so that nothing replaces it,
        # whatever happens to it (attempts.py: the bound on machines).
        for tries_left in reversed(range(LEAVE_TRIES)):
            result, detail = leave_group(ctx.autoscaling(), ctx.run_id, ctx.instance_id)
            if result != "error" or not tries_left:
                break
            log.warning("leaving the group failed (%s); trying again", detail)
            time.sleep(LEAVE_RETRY_S)
        log.info("last machine of the run (attempt %d of %d): %s (%s)", boot.attempt,
                 holder.lease.state.get("max_machines", 1), result, detail)
    if boot.action == RESUME:
        log.warning("attempt %d: resuming run %s after %d interruption(s)", boot.attempt, ctx.run_id,
                    len(holder.lease.state.get("interruptions") or []))
    return None


# The last machine leaves its group before it trains; a refused call is tried again a few times,
# else a replacement could follow it (decide_boot would still end the run on that machine).
LEAVE_TRIES, LEAVE_RETRY_S = 3, 1.0

_END_MESSAGES = {
    TOO_MANY_INTERRUPTIONS: "the run lost every machine it may have (instance.max_interruptions)",
    MAX_RUNTIME_EXCEEDED: "the run reached instance.max_runtime_minutes while waiting for a machine",
}


# What the agent needs before it can count itself as an attempt and report anything. A machine
# whose environment lacks one cannot start its agent: the bootstrap checks first and ends the
# run as boot_failed. The model stack (torch, chronos, ...) is imported inside the phases, where
# a missing piece fails the run with its error, recorded and cleaned up like any other.
START_MODULES = ("boto3", "botocore", "pydantic", "yaml")


class CheckEnvironment(argparse.Action):
    """`--check-environment`: import what the agent needs to start, then exit 0 (a traceback and
    exit 1 name what is missing)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import importlib

        for name in START_MODULES:
            importlib.import_module(name)
        from . import phases  # noqa: F401 - the agent's own modules import too
        from ..protocol import runconfig  # noqa: F401
        parser.exit(0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m instance.agent", description="Run one chronos-train run on this machine.")
    p.add_argument("--check-environment", action=CheckEnvironment, nargs=0,
                   help="import what the agent needs to start and exit (0: it can start)")
    p.add_argument("--env", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--region")
    p.add_argument("--endpoint-url")
    p.add_argument("--instance-id", help="EC2 (or sandbox) instance id; read from IMDSv2 on EC2 when absent")
    p.add_argument("--local", action="store_true", help="run against a sandbox on this machine: no IMDS, no OS shutdown")
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--shutdown-at", type=float,
                   help="when the dead-man switch ends the machine (epoch seconds, this machine's clock)")
    p.add_argument("--expect-gpu", choices=("auto", "yes", "no"), default="auto",
                   help="end the run as gpu_unavailable unless a working GPU is found (auto: on EC2)")
    return p.parse_args(argv)


def _work_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return args.work_dir, False
    if args.local:
        return Path(tempfile.mkdtemp(prefix=f"chronos-{args.run_id}-")), True
    EC2_WORK_DIR.mkdir(parents=True, exist_ok=True)
    return EC2_WORK_DIR, False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_env(args.env)
    check_run_id(args.run_id)
    if args.endpoint_url:
        # Chronos's s3:// model loader builds its own boto3 client: the variable reaches it too.
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    # Progress bars would fill agent.log with carriage returns; progress goes to the state file.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    work_dir, owns = _work_dir(args)
    setup_logging(work_dir / "agent.log")
    log.info("agent for %s in %s (pid %d, work dir %s)", args.run_id, args.env, os.getpid(), work_dir)
    target = AwsTarget.from_env(args.region, args.endpoint_url)
    s3 = client("s3", target)
    store = StateStore(s3, args.bucket, args.env)

    instance_id = args.instance_id
    spot_probe = rebalance_probe = None
    facts: dict[str, str] = {}
    imds_here = not args.local or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    if imds_here:
        from .selfterminate import (instance_id_from_imds, machine_facts, rebalance_recommendation,
                                    spot_interruption_notice)

        instance_id = instance_id or instance_id_from_imds()
        facts = machine_facts()
    heartbeat_s = _seconds("CHRONOS_HEARTBEAT_SECONDS", 10.0)
    lease = await_machine_gone(store, store.read(), instance_id, HOLDER_FRESH_BEATS * heartbeat_s)
    now = (lease.seen_at if lease is not None and lease.seen_at else None) or utcnow()
    boot = decide_boot(lease.state if lease is not None else None, args.run_id, now)
    log.info("boot: %s (attempt %d%s)", boot.action, boot.attempt, f", {boot.reason}" if boot.reason else "")
    if boot.action == NOT_HOLDER:
        holder_id = lease.run_id if lease else "nobody"
        log.error("run %s does not hold the lock (%s does); writing nothing", args.run_id, holder_id)
        if lease is None or lease.run_id != args.run_id:
            # No run for this machine: a group that would replace it must want nothing more.
            result, detail = leave_group(client("autoscaling", target), args.run_id, instance_id)
            log.info("group: %s (%s)", result, detail)
        if instance_id:
            # Through EC2, never by powering off: a group's machine that powers itself off may
            # only stop, and go on billing its volume (docs/reliability.md).
            result, detail = terminate_instance(client("ec2", target), instance_id)
            log.info("instance %s: %s (%s)", instance_id, result, detail)
        return EXIT_NOT_HOLDER
    state = lease.state
    instance_id = instance_id or state.get("instance_id")
    if state.get("spot") and imds_here:
        spot_probe, rebalance_probe = spot_interruption_notice, rebalance_recommendation
    host = {
        "instance_id": instance_id,
        "executor": "local" if args.local else "ec2",
        **{k: state[k] for k in ("instance_type", "spot") if k in state},
        **facts,  # what EC2 gave, over the config's first choice
    }
    holder = LockHolder(store, lease)
    record = RunRecord(run_id=args.run_id, env=args.env, started_at=state.get("started_at"), host=host)
    due = deadline(state)
    ctx = AgentContext(
        env=args.env, bucket=args.bucket, run_id=args.run_id, target=target, local=args.local,
        instance_id=instance_id, work_dir=work_dir, owns_work_dir=owns, s3=s3, holder=holder, record=record,
        hooks=hooks.for_agent(args.local, os.environ), expect_gpu=args.expect_gpu,
        shutdown_at=args.shutdown_at, attempt=max(boot.attempt, 1), in_group=bool(state.get("group")),
        replaceable=bool(state.get("group")) and boot.works and not boot.last_machine,
        run_left_s=(due - now).total_seconds() if due is not None and state.get("group") else None,
    )
    signal.signal(signal.SIGTERM, lambda *_: setattr(holder, "terminated", True))
    agent = Agent(
        ctx,
        heartbeat_seconds=heartbeat_s,
        log_seconds=_seconds("CHRONOS_LOG_UPLOAD_SECONDS", 60.0),
        spot_probe=spot_probe,
        rebalance_probe=rebalance_probe,
        notice_seconds=_seconds("CHRONOS_NOTICE_SECONDS", 5.0),
    )
    code = begin(agent, boot, now)
    if code is None:
        code = agent.run()
    log.info("agent exits with %d", code)
    if owns:
        import shutil

        logging.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)
    return code

