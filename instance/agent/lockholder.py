"""The agent's hold on the run lock: every state write, kill discovery, stop reasons and fencing.

The main thread, the heartbeat thread and the training callback all write the state; a mutex
serialises them so they never race each other's compare-and-swap. Whatever a write or a read
learns (killed, fenced) is remembered here and surfaces at the next `check()`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from ..protocol.aws import is_not_found
from ..protocol.state import Fenced, Lease, RunKilled, StateStore
from ..protocol.status import Status
from .periodic import Periodic

log = logging.getLogger(__name__)


class StopRun(Exception):
    """The run must stop early; `final_status` and `reason` go to training.json."""

    final_status = "failed"
    reason = "stopped"


class KilledByUser(StopRun):
    final_status = "killed"
    reason = "killed_by_user"


class MaxRuntimeExceeded(StopRun):
    reason = "max_runtime_exceeded"


class SpotInterrupted(StopRun):
    reason = "spot_interrupted"
    interruption = True  # the machine goes away: a replacement may resume the run


class AgentTerminated(StopRun):
    """SIGTERM from outside (an OS shutdown) that is neither the deadline nor a spot notice."""

    reason = "AgentTerminated"
    interruption = True


class LockHolder:
    def __init__(self, store: StateStore, lease: Lease, *, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self._lease = lease
        self._mutex = threading.RLock()
        self._clock = clock
        self.fenced: Fenced | None = None
        self.released = False
        self.deadline: float | None = None  # on `clock`
        self.spot_notice: str | None = None
        self.rebalance: str | None = None  # EC2's rebalance recommendation, once seen
        self._rebalance_saved = False
        self.terminated = False

    # -- what we know ------------------------------------------------------------------------
    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def status(self) -> Status:
        return self._lease.status

    @property
    def killed(self) -> bool:
        return self._lease.status == Status.KILLED

    def pending_stop(self) -> BaseException | None:
        """What should stop the run now, without any I/O (cheap enough for every training step)."""
        if self.fenced is not None:
            return self.fenced
        if self.killed:
            return KilledByUser("the run was killed (kill requested through the state file)")
        if self.spot_notice:
            return SpotInterrupted(f"EC2 is reclaiming this spot instance ({self.spot_notice})")
        if self.deadline is not None and self._clock() >= self.deadline:
            return MaxRuntimeExceeded("the run reached its soft deadline before max_runtime_minutes")
        if self.terminated:
            return AgentTerminated("the agent received SIGTERM (the machine is shutting down)")
        return None

    def take_rebalance(self) -> bool:
        """True once after a rebalance recommendation: training saves a full checkpoint at its next
        step and goes on (no I/O; the training thread asks at every step)."""
        if self.rebalance is None or self._rebalance_saved:
            return False
        self._rebalance_saved = True
        return True

    def check(self) -> None:
        stop = self.pending_stop()
        if stop is not None:
            raise stop

    # -- writes --------------------------------------------------------------------------------
    def _write(self, op: Callable[[Lease], Lease]) -> Lease:
        with self._mutex:
            if self.fenced is not None:
                raise self.fenced
            try:
                self._lease = op(self._lease)
            except RunKilled as exc:
                # Adopt the killed state as our lease: cleanup moves it on from there.
                self._lease = exc.current
                raise
            except Fenced as exc:
                self.fenced = exc
                raise
            except Exception as exc:
                # A compare-and-swap on a deleted lock answers 404, not 412: someone released it.
                if not is_not_found(exc):
                    raise
                self.fenced = Fenced(f"the lock of run {self._lease.run_id} was released by someone else; not writing")
                raise self.fenced from None
            return self._lease

    def move(self, status: Status, **fields: Any) -> Lease:
        return self._write(lambda lease: self.store.move(lease, status, phase=status.value, **fields))

    def amend(self, mutate: Callable[[dict], dict | None]) -> Lease:
        """Any change to the state that is not a move (pinned to the current status)."""
        return self._write(lambda lease: self.store.update(lease, mutate))

    def beat(self, **fields: Any) -> Lease:
        """Heartbeat (and progress). A kill found this way is remembered, not raised."""
        try:
            return self._write(lambda lease: self.store.heartbeat(lease, phase=lease.status.value, **fields))
        except RunKilled:
            log.warning("the run was killed; stopping at the next step")
            return self._lease

    def poll(self) -> None:
        """One GET of the state: notice a kill or a takeover that no write of ours has hit yet."""
        with self._mutex:
            if self.fenced is not None or self.released:
                return
            current = self.store.read()
            if current is None:
                self.fenced = Fenced(f"the lock of run {self._lease.run_id} was released by someone else; not writing")
            elif current.run_id != self._lease.run_id:
                self.fenced = Fenced(
                    f"the lock now belongs to run {current.run_id}; run {self._lease.run_id} stops writing", current
                )
            elif current.status == Status.KILLED and not self.killed:
                log.warning("the run was killed; stopping at the next step")
                self._lease = current
            elif current.status != self._lease.status and current.status != Status.KILLED:
                self.fenced = Fenced(
                    f"run {self._lease.run_id} was moved to {current.status.value} by another writer", current
                )

    def ensure_holder(self) -> None:
        """Before any write outside the state file: re-read, raise if we no longer hold the lock."""
        self.poll()
        if self.fenced is not None:
            raise self.fenced

    def release(self) -> bool:
        """True when this call deleted the lock; False when it was already gone.

        A lock that someone else deleted before this run reached cleanup means we were fenced
        (kill --force, verify-cleanup); in cleanup, a lock already gone counts as released.
        """
        with self._mutex:
            if self.released:
                return False
            if self.fenced is not None:
                raise self.fenced
            try:
                deleted = self.store.release(self._lease)
            except Fenced as exc:
                self.fenced = exc
                raise
            if not deleted and self._lease.status != Status.CLEANUP:
                self.fenced = Fenced(f"the lock of run {self._lease.run_id} was released by someone else")
                raise self.fenced
            if not deleted:
                # In cleanup the outcome is decided: a lock already gone is most often our own
                # delete whose reply was lost (botocore's retry then finds nothing). Records stay
                # conditional writes, so a cleaner that released it first is never overwritten.
                log.warning("the lock of run %s was already gone when released (a lost reply to our delete?)",
                            self._lease.run_id)
            self.released = True
            return deleted


class Heartbeat(Periodic):
    """heartbeat_at every `interval` seconds in every phase."""

    name = "heartbeat"

    def __init__(self, holder: LockHolder, interval: float, fields: Callable[[], dict] = dict):
        super().__init__(interval)
        self.holder = holder
        self.fields = fields

    def tick(self) -> None:
        self.holder.beat(**self.fields())


class NoticeWatch(Periodic):
    """Asks the instance metadata every `interval` seconds whether EC2 is taking the machine back
    (a spot notice: two minutes left); the answer stops the run at its next step, checkpointed.
    A rebalance recommendation (elevated risk, before any notice) makes training save a full
    checkpoint at once and go on: the group may replace the machine (capacity rebalancing), or
    EC2 may take it, either way with little work lost; or nothing happens, and nothing was moved."""

    name = "spot-notice"

    def __init__(self, holder: LockHolder, interval: float, probe: Callable[[], str | None],
                 rebalance_probe: Callable[[], str | None] | None = None):
        super().__init__(interval)
        self.holder = holder
        self.probe = probe
        self.rebalance_probe = rebalance_probe

    def tick(self) -> None:
        if self.holder.spot_notice:
            return
        notice = self._ask(self.probe)
        if notice:
            log.warning("spot interruption notice: %s", notice)
            self.holder.spot_notice = notice
            return
        if self.holder.rebalance is None and self.rebalance_probe is not None:
            advice = self._ask(self.rebalance_probe)
            if advice:
                log.warning("rebalance recommendation: %s; a full checkpoint is saved at the next step", advice)
                self.holder.rebalance = advice

    @staticmethod
    def _ask(probe: Callable[[], str | None]) -> str | None:
        try:
            return probe()
        except Exception as exc:  # best effort: a machine lost unwarned resumes from the last checkpoint
            log.debug("instance metadata probe failed: %s", exc)
            return None


class TrainingWatch(Periodic):
    """Keeps the state I/O of the training phase off the training thread.

    The training callback only reads flags and hands over progress (no I/O per step); this
    thread does the kill check (one GET every `poll_every` s) and writes the progress it was
    handed, so a slow S3 can delay a kill by a few seconds but never slows training.
    """

    name = "training-watch"

    def __init__(self, holder: LockHolder, poll_every: float = 2.0):
        super().__init__(poll_every)
        self.holder = holder
        self._progress: dict | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "TrainingWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._flush()

    def offer(self, progress: dict) -> None:
        with self._lock:
            self._progress = progress

    def _flush(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, None
        if progress is not None and self.holder.fenced is None:
            try:
                self.holder.beat(progress=progress)
            except Fenced:
                pass  # surfaces through pending_stop
            except Exception as exc:
                log.warning("progress report failed: %s: %s", type(exc).__name__, exc)

    def tick(self) -> None:
        try:
            self.holder.poll()
        finally:
            self._flush()  # hand over progress even when the kill check failed
