"""The instance agent: one run, from the lock the launcher created to a terminated machine.

    python -m instance.agent --env E --bucket B --run-id R [--region REG] [--endpoint-url URL]
                             [--instance-id ID] [--local] [--work-dir DIR]
                             [--shutdown-at EPOCH] [--expect-gpu auto|yes|no]

initialization → data_sync → training → results_sync → cleanup. Any failure moves the run to
`failed`, a kill (the CLI moves the state to `killed`) stops it at the next step; both then run
cleanup, which always runs. An agent that finds it is fenced (the lock was released by someone
else or belongs to another run) writes nothing more and exits 3.

Exit codes: 0 completed, 4 failed, 5 killed (cleanup done in all three); 3 not the holder or
fenced (nothing written); 1 cleanup itself could not finish.
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
from ..protocol.record import RunRecord
from ..protocol.state import Fenced, RunKilled, StateStore
from ..protocol.status import Status
from ..protocol.timeutil import parse_iso, utcnow
from .cleanup import Cleanup, CleanupReport, Outcome
from .context import AgentContext
from . import hooks
from .lockholder import Heartbeat, KilledByUser, LockHolder, StopRun
from .logshipper import LogShipper, setup_logging

log = logging.getLogger("instance.agent")

EXIT_COMPLETED, EXIT_CLEANUP_FAILED, EXIT_NOT_HOLDER, EXIT_FAILED, EXIT_KILLED = 0, 1, 3, 4, 5
EC2_WORK_DIR = Path("/opt/chronos/work")


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def deadline_margin_seconds(max_runtime_minutes: int) -> float:
    """Stop this long before the dead-man switch: time to save, upload and clean up."""
    return min(300.0, max_runtime_minutes * 60 * 0.25)


def soft_deadline(started_at: str | None, max_runtime_minutes: int, clock: Callable[[], float] = time.monotonic,
                  shutdown_at: float | None = None) -> float:
    """The deadline on `clock`. With `shutdown_at` (the dead-man switch, in epoch seconds read
    from this machine's clock when it was set), one clock decides: the agent stops a margin
    before the machine powers off. Without it, counted from the lock's creation (before the
    machine even booted), so it still falls before a switch set at boot."""
    override = os.environ.get("CHRONOS_DEADLINE_SECONDS")
    if override:
        return clock() + float(override)
    margin = deadline_margin_seconds(max_runtime_minutes)
    if shutdown_at is not None:
        return clock() + (shutdown_at - time.time()) - margin
    start = parse_iso(started_at) or utcnow()
    budget = max_runtime_minutes * 60 - margin
    return clock() + budget - (utcnow() - start).total_seconds()


@dataclass
class Phase:
    status: Status
    run: Callable[[], Any]


class Agent:
    def __init__(self, ctx: AgentContext, *, heartbeat_seconds: float, log_seconds: float, spot_probe=None):
        self.ctx = ctx
        self.heartbeat = Heartbeat(ctx.holder, heartbeat_seconds, self._beat_fields, spot_probe)
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
        self.shipper.stop()

    def run(self) -> int:
        self.heartbeat.start()
        self.shipper.start()
        outcome, fenced = self._run_phases()
        if fenced:
            return self._fenced_exit()
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
        plan = [
            Phase(Status.INITIALIZATION, lambda: ph.initialization(ctx, ph.InitInput())),
            Phase(Status.DATA_SYNC, lambda: ph.data_sync(ctx, ph.DataSyncInput(
                ctx.config.dataset, ctx.data_dir, ctx.config.training.prediction_length, ctx.config.training.context_length,
                ctx.config.evaluation.windows))),
            Phase(Status.TRAINING, lambda: ph.training(ctx, ph.TrainingInput(ctx.config, state["data_sync"].files, ctx.train_dir))),
            Phase(Status.RESULTS_SYNC, lambda: ph.results_sync(ctx, ph.ResultsInput(
                state["training"].model_dir, state["training"], state["data_sync"], ctx.config))),
        ]
        try:
            ctx.holder.check()
            for phase in plan:
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
        if phase.status != Status.INITIALIZATION:
            ctx.holder.move(phase.status)
        else:
            ctx.holder.beat(**self._beat_fields())
        log.info("phase %s", phase.status.value)
        ctx.record.phase_started(phase.status.value)
        ctx.write_record(ctx.layout.training_record(ctx.run_id), ctx.record.snapshot())
        ctx.hooks.phase_started(phase.status.value, ctx.holder.check)
        if phase.status == Status.DATA_SYNC and ctx.holder.deadline is None:
            ctx.holder.deadline = soft_deadline(ctx.holder.lease.state.get("started_at"),
                                                ctx.config.instance.max_runtime_minutes, shutdown_at=ctx.shutdown_at)
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


def _error(exc: BaseException, phase: Status) -> dict[str, str]:
    return {"class": type(exc).__name__, "message": str(exc) or type(exc).__name__, "phase": phase.value}


# -- entry ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m instance.agent", description="Run one chronos-train run on this machine.")
    p.add_argument("--env", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--region")
    p.add_argument("--endpoint-url")
    p.add_argument("--instance-id", help="EC2 (or sandbox) instance id; read from IMDSv2 on EC2 when absent")
    p.add_argument("--local", action="store_true", help="run against a sandbox on this machine: no IMDS, no OS shutdown")
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--shutdown-at", type=float,
                   help="when the dead-man switch powers the machine off (epoch seconds, this machine's clock)")
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
    lease = store.read()
    if lease is None or lease.run_id != args.run_id:
        holder = lease.run_id if lease else "nobody"
        log.error("run %s does not hold the lock (%s does); writing nothing", args.run_id, holder)
        return EXIT_NOT_HOLDER
    if lease.status not in (Status.INITIALIZATION, Status.KILLED):
        log.error("run %s is already in %s: another agent runs it; writing nothing", args.run_id, lease.status.value)
        return EXIT_NOT_HOLDER

    instance_id = args.instance_id or lease.state.get("instance_id")
    spot_probe = None
    if not args.local:
        from .selfterminate import instance_id_from_imds, spot_interruption_notice

        instance_id = args.instance_id or instance_id_from_imds()
        if lease.state.get("spot"):
            spot_probe = spot_interruption_notice
    host = {
        "instance_id": instance_id,
        "executor": "local" if args.local else "ec2",
        **{k: lease.state[k] for k in ("instance_type", "spot") if k in lease.state},
    }
    holder = LockHolder(store, lease)
    record = RunRecord(run_id=args.run_id, env=args.env, started_at=lease.state.get("started_at"), host=host)
    ctx = AgentContext(
        env=args.env, bucket=args.bucket, run_id=args.run_id, target=target, local=args.local,
        instance_id=instance_id, work_dir=work_dir, owns_work_dir=owns, s3=s3, holder=holder, record=record,
        hooks=hooks.load(os.environ.get("CHRONOS_AGENT_HOOKS")) if args.local else hooks.Hooks(), expect_gpu=args.expect_gpu,
        shutdown_at=args.shutdown_at,
    )
    signal.signal(signal.SIGTERM, lambda *_: setattr(holder, "terminated", True))
    agent = Agent(
        ctx,
        heartbeat_seconds=_seconds("CHRONOS_HEARTBEAT_SECONDS", 10.0),
        log_seconds=_seconds("CHRONOS_LOG_UPLOAD_SECONDS", 60.0),
        spot_probe=spot_probe,
    )
    code = agent.run()
    log.info("agent exits with %d", code)
    if owns:
        import shutil

        logging.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)
    return code

