"""The run lock: `{env}/system-state.json`, written only with conditional requests.

- acquire: create with If-None-Match: *  (exactly one of many concurrent launches wins)
- update:  compare-and-swap with If-Match: <etag>; `seq` grows on every write, so two bodies
           never share an ETag (no ABA)
- release: delete with If-Match: <etag>
- fencing: a writer whose CAS fails re-reads; if the lock now belongs to another run, or the
           run was moved on (killed, failed) by someone else, it raises and never overwrites.
- conflicts: S3 answers 412 when the condition no longer holds and 409
           ConditionalRequestConflict when a concurrent request on the key won; both mean
           "re-read, then decide" (write again after a jittered wait, busy, or fenced).
- staleness: the lock's age is S3's own: the response's `Date` minus the object's
           `LastModified`, both from S3's clock. No writer's timestamp is compared with the
           reader's clock, so a skewed laptop or instance clock cannot make a live run look dead.

The pure rules live beside this (status.py: transitions; liveness.py: when a held lock's run is
over); S3 calls stay at this edge.
"""
from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from .artifacts import dumps
from .aws import CONFLICT_BACKOFF, ConflictBackoff, is_conditional_conflict, is_not_found, is_write_conflict, server_time
from .layout import Layout
from .status import Status, check_move
from .timeutil import iso, utcnow

HTTP_DATE_RESOLUTION = timedelta(seconds=1)  # Last-Modified and Date are whole seconds
# Each body remembers the ids of its last writes. A writer whose reply was lost (botocore then
# retries and gets 412) finds its id here even if others wrote after it: never applied twice.
RECENT_WRITES = 32


@dataclass(frozen=True)
class Lease:
    """A state body together with the ETag it was read or written with, and when S3 last
    changed it and answered, both on S3's clock (None when the response did not say)."""

    etag: str
    state: Mapping[str, Any] = field(repr=False)
    last_modified: datetime | None = None
    seen_at: datetime | None = None

    @property
    def age(self) -> timedelta | None:
        """How long ago the lock was last written, at least, by S3's clock; None when unknown.
        Both headers have one-second resolution, so a second is taken off: the lower bound."""
        if self.last_modified is None or self.seen_at is None:
            return None
        return max(self.seen_at - self.last_modified - HTTP_DATE_RESOLUTION, timedelta(0))

    @property
    def run_id(self) -> str:
        return self.state["run_id"]

    @property
    def status(self) -> Status:
        return Status(self.state["status"])

    @property
    def seq(self) -> int:
        return int(self.state.get("seq", 0))


class LockError(Exception):
    """Base of every refusal by the state store."""


class LockBusy(LockError):
    def __init__(self, holder: Mapping[str, Any] | None):
        self.holder = dict(holder or {})
        if holder:
            msg = (
                f"another run holds the lock: {holder.get('run_id')} "
                f"(status {holder.get('status')}, started {holder.get('started_at')})"
            )
        else:
            msg = "the lock is busy"
        super().__init__(msg)


class Fenced(LockError):
    """This writer lost the right to write: the state moved on without it."""

    def __init__(self, message: str, current: Lease | None = None):
        super().__init__(message)
        self.current = current


class RunKilled(Fenced):
    """Someone else moved this run to `killed`; `current` is the lease to clean up with."""


class NotHolder(Fenced):
    pass


Mutation = Callable[[dict], "dict | None"]


class StateStore:
    def __init__(self, s3, bucket: str, env: str, backoff: ConflictBackoff = CONFLICT_BACKOFF):
        self.s3 = s3
        self.bucket = bucket
        self.key = Layout(env).state
        self.backoff = backoff

    # -- reads -----------------------------------------------------------------------------
    def read(self) -> Lease | None:
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        return Lease(etag=resp["ETag"], state=json.loads(resp["Body"].read()),
                     last_modified=resp.get("LastModified"), seen_at=server_time(resp))

    # -- acquire ---------------------------------------------------------------------------
    def acquire(self, run_id: str, now: datetime | None = None, **fields: Any) -> Lease:
        now_s = iso(now or utcnow())
        write_id = uuid.uuid4().hex
        body = {
            **fields,
            "run_id": run_id,
            "status": Status.INITIALIZATION.value,
            "seq": 1,
            "started_at": now_s,
            "updated_at": now_s,
            "heartbeat_at": now_s,
            "history": [{"status": Status.INITIALIZATION.value, "at": now_s}],
            "recent_writes": [write_id],
        }
        # A refused create is re-read: a holder makes us busy; no holder (it released between
        # our create and our read, or a 409 raced a delete) means try again, a few times.
        for attempt in range(1, self.backoff.attempts + 1):
            try:
                return self._put(body, IfNoneMatch="*")
            except Exception as exc:
                if not is_write_conflict(exc):
                    raise
            current = self.read()
            if current is not None:
                if _wrote(current, write_id):
                    return current  # our create landed; only its reply was lost (retried request)
                raise LockBusy(current.state)
            self.backoff.wait(attempt)
        raise LockBusy(None)

    # -- compare-and-swap ------------------------------------------------------------------
    def update(
        self,
        lease: Lease,
        mutate: Mutation,
        *,
        pin_status: bool = True,
        heartbeat: bool = True,
        now: Callable[[], datetime] = utcnow,
    ) -> Lease:
        """Apply `mutate` to the state and write it back with If-Match.

        On a lost race the state is re-read; the mutation is re-applied only if the lock still
        belongs to the same run and (with `pin_status`) the run is still in the status this writer
        knew. Otherwise the writer is fenced. `mutate` may return None to write nothing.
        """
        write_id = uuid.uuid4().hex
        base = lease
        conflicts = 0
        while True:
            body = mutate(copy.deepcopy(dict(base.state)))
            if body is None:
                return base
            now_s = iso(now())
            recent = (list(base.state.get("recent_writes") or []) + [write_id])[-RECENT_WRITES:]
            body.update(seq=base.seq + 1, updated_at=now_s, recent_writes=recent)
            if heartbeat:
                body["heartbeat_at"] = now_s
            try:
                return self._put(body, IfMatch=base.etag)
            except Exception as exc:
                # S3 answers a CAS on a deleted object with 404 rather than 412: same conflict.
                if not (is_write_conflict(exc) or is_not_found(exc)):
                    raise
                conflicts = self._wait_if_409(exc, conflicts)
            base = self._after_conflict(lease, base, write_id, pin_status)
            if _wrote(base, write_id):
                return base

    def move(self, lease: Lease, status: Status | str, **fields: Any) -> Lease:
        """Change status (checked against the transition table) and merge `fields`."""
        return self.update(lease, lambda state: _moved(state, Status(status), **fields))

    def heartbeat(self, lease: Lease, **fields: Any) -> Lease:
        return self.update(lease, lambda s: {**s, **fields})

    def request_kill(self, run_id: str, requested_by: str, reason: str = "user") -> Lease | None:
        """Move a live run to `killed` (a CLI write: no heartbeat). None when no such live run."""
        current = self.read()
        if current is None or current.run_id != run_id:
            return None

        def mutate(state: dict) -> dict | None:
            if Status(state["status"]).is_terminal:
                return None
            return _moved(state, Status.KILLED, kill={"requested_by": requested_by, "reason": reason, "at": iso()})

        return self.update(current, mutate, pin_status=False, heartbeat=False)

    # -- release ---------------------------------------------------------------------------
    def release(self, lease: Lease) -> bool:
        """Conditional delete. True if this call deleted it, False if it was already gone."""
        base = lease
        conflicts = 0
        while True:
            try:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=base.etag)
                return True
            except Exception as exc:
                if not (is_write_conflict(exc) or is_not_found(exc)):
                    raise
                conflicts = self._wait_if_409(exc, conflicts)
            current = self.read()
            if current is None:
                return False
            if current.run_id != lease.run_id:
                raise NotHolder(
                    f"run {lease.run_id} does not hold the lock; {current.run_id} does "
                    f"(status {current.status.value})",
                    current,
                )
            if current.status != base.status:
                raise Fenced(
                    f"run {lease.run_id} was moved to {current.status.value} by another writer; "
                    "not releasing its lock",
                    current,
                )
            base = current

    # -- internals -------------------------------------------------------------------------
    def _put(self, body: dict, **condition: str) -> Lease:
        resp = self.s3.put_object(
            Bucket=self.bucket, Key=self.key, Body=dumps(body), ContentType="application/json", **condition
        )
        written = server_time(resp)
        return Lease(etag=resp["ETag"], state=body, last_modified=written, seen_at=written)

    def _wait_if_409(self, exc: BaseException, conflicts: int) -> int:
        """After a 409 the object may be unchanged: wait (jittered) before trying again; give the
        error up once the conflicts in a row exceed the backoff's budget. 412s do not count:
        each one means another write landed, so the next try works from newer state."""
        if not is_conditional_conflict(exc):
            return conflicts
        conflicts += 1
        if conflicts >= self.backoff.attempts:
            raise exc
        self.backoff.wait(conflicts)
        return conflicts

    def _after_conflict(self, lease: Lease, base: Lease, write_id: str, pin_status: bool) -> Lease:
        current = self.read()
        if current is None:
            raise Fenced(f"the lock of run {lease.run_id} was released by someone else; not writing")
        if _wrote(current, write_id):
            return current
        if current.run_id != lease.run_id:
            raise Fenced(
                f"the lock now belongs to run {current.run_id} (status {current.status.value}); "
                f"run {lease.run_id} stops writing",
                current,
            )
        if pin_status and current.status != base.status:
            if current.status == Status.KILLED:
                raise RunKilled(f"run {lease.run_id} was killed", current)
            raise Fenced(
                f"run {lease.run_id} was moved to {current.status.value} by another writer; not overwriting",
                current,
            )
        return current


def _wrote(lease: Lease, write_id: str) -> bool:
    return write_id in (lease.state.get("recent_writes") or ())


def _moved(state: dict, target: Status, **fields: Any) -> dict:
    check_move(state["status"], target)
    state.update(fields, status=target.value)
    state.setdefault("history", []).append({"status": target.value, "at": iso()})
    return state
