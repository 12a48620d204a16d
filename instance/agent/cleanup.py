"""The last phase, run whatever happened before it, and safe to run again.

Order matters: the final training.json lands before the lock is released (whoever sees the lock
gone can read the outcome), and the machine is told to end before the last records are written
(EC2 takes far longer to stop than two small PutObjects). Each step is idempotent on its own
(a missing resource reads `not_found`), and a re-run in the same process skips steps already
done, so a retried or repeated cleanup reaches the same end state.
If the agent turns out to be fenced, it writes nothing more: it only ends its machine.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..protocol.state import Fenced, RunKilled
from ..protocol.status import Status
from ..protocol.timeutil import iso
from .context import AgentContext
from ..protocol.group import leave_group
from .selfterminate import os_shutdown, terminate_instance

log = logging.getLogger(__name__)

DONE, NOT_FOUND, ERROR = "done", "not_found", "error"


@dataclass(frozen=True)
class Outcome:
    final_status: str  # completed | failed | killed
    reason: str | None = None
    error: dict | None = None

    @classmethod
    def completed(cls) -> "Outcome":
        return cls("completed")

    @classmethod
    def killed(cls) -> "Outcome":
        return cls("killed", "killed_by_user")


@dataclass
class CleanupStep:
    resource: str
    action: str
    result: str
    detail: str
    at: str


@dataclass
class CleanupReport:
    outcome: Outcome
    steps: list[CleanupStep] = field(default_factory=list)
    fenced: bool = False
    completed_at: str | None = None
    records_written: bool = False

    @property
    def ok(self) -> bool:
        return not self.fenced and self.records_written and all(s.result != ERROR for s in self.steps)


class Cleanup:
    def __init__(
        self,
        ctx: AgentContext,
        *,
        stop_background: Callable[[], None] = lambda: None,
        upload_log: Callable[[], None] | None = None,
        shutdown: Callable[[], tuple[str, str]] = os_shutdown,
    ):
        self.ctx = ctx
        self.stop_background = stop_background
        self.upload_log = upload_log
        self.shutdown = shutdown
        self._steps: dict[tuple[str, str], CleanupStep] = {}
        self.outcome: Outcome | None = None

    def run(self, outcome: Outcome) -> CleanupReport:
        ctx = self.ctx
        self.outcome = self.outcome or outcome
        if ctx.record.running_phase() != "cleanup" and "cleanup" not in ctx.record.doc["phases"]:
            ctx.record.phase_started("cleanup")
        self.stop_background()
        report = CleanupReport(self.outcome)
        try:
            self._step("state", f"move to {Status.CLEANUP.value}", "state", self._move_to_cleanup)
            ctx.hooks.phase_started("cleanup", check=lambda: None)  # a kill is refused from here on
            self._step("evaluation folder", "upload what exists", "evaluation", self._upload_evaluation)
            self._finish_record()
            self._step("training record", "write final", "record", self._write_training_record)
            self._step("work dir", "delete", "workdir", self._delete_work_dir)
            self._step("lock", "release", "lock", self._release_lock)
        except Fenced as exc:
            log.error("fenced during cleanup: %s; writing nothing more", exc)
            report.fenced = True
        if ctx.in_group and not self._superseded():
            # Before the machine ends: a group that still wants a machine would replace it.
            self._step("group", "leave (desired capacity 0)", "group", self._leave_group)
        terminate = self._step(f"instance {ctx.instance_id or '(none)'}", "terminate", "instance", self._terminate)
        if not report.fenced:
            if self.upload_log is not None:
                self._step("agent log", "upload", "log", self._upload_log)
            report.completed_at = iso()
            failed = any(s.result == ERROR for s in self._steps.values())
            ctx.record.phase_ended("cleanup", "failed" if failed else "ok")
            try:
                # Records of the steps above, so re-written on every run rather than remembered.
                report.records_written = all(
                    step.result == DONE
                    for step in (
                        self._step("training record", "write with cleanup timing", "record", self._write_training_record, remember=False),
                        self._step("cleanup status", "write", "status", lambda: self._write_status(report.completed_at), remember=False),
                    )
                )
            except Fenced as exc:
                log.error("fenced during cleanup: %s; writing nothing more", exc)
                report.fenced = True
        if terminate.result == ERROR and not ctx.local:
            log.warning("EC2 refused the termination; falling back to an OS shutdown")
            self.shutdown()
        report.outcome = self.outcome
        report.steps = list(self._steps.values())
        return report

    # -- steps -----------------------------------------------------------------------------------
    def _step(self, resource: str, action: str, fault: str, fn: Callable[[], tuple[str, str]], remember: bool = True) -> CleanupStep:
        key = (resource, action)
        earlier = self._steps.get(key)
        if earlier is not None and earlier.result != ERROR:
            return earlier
        try:
            self.ctx.hooks.cleanup_step(fault)
            result, detail = fn()
        except Fenced:
            raise
        except Exception as exc:
            result, detail = ERROR, f"{type(exc).__name__}: {exc}"
        step = CleanupStep(resource, action, result, detail, iso())
        log.log(logging.ERROR if result == ERROR else logging.INFO, "cleanup: %s %s: %s (%s)", action, resource, result, detail)
        if remember:
            self._steps[key] = step
        return step

    def _move_to_cleanup(self) -> tuple[str, str]:
        holder = self.ctx.holder
        if holder.released:
            return NOT_FOUND, "the lock was already released by this agent"
        if holder.status == Status.CLEANUP:
            return DONE, "the state is already in cleanup"
        before = holder.status.value
        if holder.killed:
            self.outcome = Outcome.killed()
        try:
            holder.move(Status.CLEANUP, **self._outcome_fields())
        except RunKilled:
            # Killed just as the run finished: the state says killed, so the run ends killed.
            self.outcome = Outcome.killed()
            before = Status.KILLED.value
            holder.move(Status.CLEANUP, **self._outcome_fields())
        return DONE, f"{before} -> cleanup"

    def _outcome_fields(self) -> dict:
        """In the lock: a machine that replaces this one mid-cleanup finishes with this outcome."""
        return {"outcome": self.outcome.final_status, "reason": self.outcome.reason}

    def _finish_record(self) -> None:
        outcome = self.outcome
        kill = self.ctx.holder.lease.state.get("kill")
        if kill and outcome.final_status == "killed":
            self.ctx.record.update(kill=kill)
        state = self.ctx.holder.lease.state
        machines = [dict(m) for m in state.get("machines") or []]
        if machines and not machines[-1].get("ended_at"):
            machines[-1]["ended_at"] = iso()
        if machines or state.get("interruptions"):
            # Every machine the run had, for its cost; the interruptions it went through.
            self.ctx.record.update(machines=machines, interruptions=state.get("interruptions") or [],
                                   attempt=state.get("attempt"))
        self.ctx.record.finish(outcome.final_status, outcome.reason, outcome.error)

    def _write_training_record(self) -> tuple[str, str]:
        ctx, layout = self.ctx, self.ctx.layout
        ctx.record.set_artifact("log_uri", ctx.uri(layout.agent_log(ctx.run_id)))
        doc = ctx.record.snapshot()
        keys = (layout.training_record(ctx.run_id), layout.final_record(ctx.run_id))
        for key in keys:  # the logs' copy expires first; the one beside the outputs lasts as long as they do
            ctx.write_record(key, doc)
        return DONE, ", ".join(ctx.uri(k) for k in keys)

    def _delete_work_dir(self) -> tuple[str, str]:
        ctx = self.ctx
        targets = [ctx.train_dir, ctx.staging_dir, ctx.ranks_dir, ctx.base_model_dir, ctx.resume_dir,
                   ctx.evaluation_dir]
        if ctx.owns_work_dir:
            targets.append(ctx.data_dir)
        present = [p for p in targets if p.exists()]
        for path in present:
            shutil.rmtree(path)
        if not present:
            return NOT_FOUND, f"nothing left under {ctx.work_dir}"
        return DONE, ", ".join(str(p) for p in present)

    def _upload_evaluation(self) -> tuple[str, str]:
        """The loss so far of a run that failed or was killed, for its report (a completed run's
        folder is already there: results_sync uploaded it)."""
        from .evaluation_files import upload_evaluation

        sent = upload_evaluation(self.ctx)
        if not sent:
            return NOT_FOUND, "nothing new to upload"
        return DONE, ", ".join(k.rsplit("/", 1)[-1] for k in sent)

    def _release_lock(self) -> tuple[str, str]:
        if self.ctx.holder.released:
            return NOT_FOUND, "already released by this agent"
        self.ctx.holder.release()
        return DONE, f"deleted {self.ctx.uri(self.ctx.layout.state)} (If-Match)"

    def _superseded(self) -> bool:
        """Fenced by a newer machine of this same run: the group is that machine's now."""
        fenced = self.ctx.holder.fenced
        current = getattr(fenced, "current", None)
        return bool(current is not None and current.run_id == self.ctx.run_id
                    and current.state.get("instance_id") not in (None, self.ctx.instance_id))

    def _leave_group(self) -> tuple[str, str]:
        return leave_group(self.ctx.autoscaling(), self.ctx.run_id, self.ctx.instance_id)

    def _terminate(self) -> tuple[str, str]:
        ctx = self.ctx
        if not ctx.instance_id:
            return NOT_FOUND, "this agent runs without an instance"
        return terminate_instance(ctx.ec2(), ctx.instance_id)

    def _upload_log(self) -> tuple[str, str]:
        self.upload_log()
        return DONE, self.ctx.uri(self.ctx.layout.agent_log(self.ctx.run_id))

    def _write_status(self, completed_at: str) -> tuple[str, str]:
        key = self.ctx.layout.cleanup_status(self.ctx.run_id)
        doc = {
            "run_id": self.ctx.run_id,
            "final_status": self.outcome.final_status,
            "steps": [asdict(s) for s in self._steps.values()],
            "completed_at": completed_at,
            "by": "agent",
        }
        self.ctx.write_record(key, doc)
        return DONE, self.ctx.uri(key)
