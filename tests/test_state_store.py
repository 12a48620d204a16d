"""The lock against moto server over HTTP: acquire, CAS, fencing, release, races."""
from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from instance.protocol.aws import client
from instance.protocol.liveness import judge
from instance.protocol.state import Fenced, LockBusy, NotHolder, RunKilled, StateStore
from instance.protocol.status import IllegalTransition, Status
from instance.protocol.timeutil import parse_iso, utcnow
from tests import _race_worker
from tests.conftest import ENV

RID_A = "run-20261128-100000-aaaa"
RID_B = "run-20261128-110000-bbbb"


@pytest.fixture
def store(s3, bucket):
    return StateStore(s3, bucket, ENV)


def test_acquire_then_busy_names_the_holder(store):
    lease = store.acquire(RID_A, instance_id="i-123")
    assert lease.status is Status.INITIALIZATION and lease.seq == 1
    with pytest.raises(LockBusy) as err:
        store.acquire(RID_B)
    msg = str(err.value)
    assert RID_A in msg and "initialization" in msg and lease.state["started_at"] in msg
    assert store.read().run_id == RID_A


def test_moves_follow_the_table_and_seq_grows(store):
    lease = store.acquire(RID_A)
    etags = {lease.etag}
    for status in (Status.DATA_SYNC, Status.TRAINING):
        lease = store.move(lease, status)
        etags.add(lease.etag)
    lease = store.heartbeat(lease, progress={"step": 3})
    etags.add(lease.etag)
    with pytest.raises(IllegalTransition):
        store.move(lease, Status.INITIALIZATION)
    current = store.read()
    assert current.seq == 4 and current.state["progress"] == {"step": 3}
    assert [h["status"] for h in current.state["history"]] == ["initialization", "data_sync", "training"]
    assert len(etags) == 4
    for field in ("seq", "updated_at", "heartbeat_at"):
        assert field in current.state


def test_cas_16_concurrent_updaters_lose_no_update(store):
    store.acquire(RID_A, counter=0)
    per_writer = 8

    def writer(_):
        for _ in range(per_writer):
            store.update(store.read(), lambda s: {**s, "counter": s["counter"] + 1})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(writer, range(16)))
    final = store.read().state
    assert final["counter"] == 16 * per_writer
    assert final["seq"] == 1 + 16 * per_writer


def test_fencing_after_kill_old_holder_cannot_overwrite(store):
    agent = store.move(store.acquire(RID_A), Status.DATA_SYNC)
    killed = store.request_kill(RID_A, requested_by="cli")
    assert killed.status is Status.KILLED and killed.state["kill"]["requested_by"] == "cli"
    with pytest.raises(RunKilled) as err:
        store.heartbeat(agent, progress={"step": 99})
    assert store.read().state == killed.state
    # The agent adopts the killed state it was handed and goes on to cleanup.
    cleaned = store.move(err.value.current, Status.CLEANUP)
    assert store.release(cleaned) is True


def test_fencing_after_takeover_zombie_cannot_overwrite_new_run(store):
    zombie = store.acquire(RID_A)
    store.release(zombie)  # e.g. verify-cleanup --fix released it as stale
    newer = store.acquire(RID_B)
    with pytest.raises(Fenced, match=RID_B):
        store.move(zombie, Status.DATA_SYNC)
    with pytest.raises(NotHolder, match=RID_B):
        store.release(zombie)
    assert store.read().state == newer.state


def test_writer_fenced_when_run_moved_to_failed_by_someone_else(store):
    agent = store.acquire(RID_A)
    other = store.read()
    store.move(other, Status.FAILED, reason="lost")
    with pytest.raises(Fenced, match="failed"):
        store.heartbeat(agent)
    assert store.read().status is Status.FAILED


def test_release_by_non_holder_refused_and_double_release_is_noop(store):
    lease = store.acquire(RID_A)
    assert store.release(lease) is True
    assert store.release(lease) is False
    assert store.read() is None
    assert store.acquire(RID_B).run_id == RID_B


def test_kill_of_other_or_finished_run_writes_nothing(store):
    lease = store.acquire(RID_A)
    assert store.request_kill(RID_B, requested_by="cli") is None
    failed = store.move(lease, Status.FAILED)
    again = store.request_kill(RID_A, requested_by="cli")
    assert again.etag == failed.etag and store.read().status is Status.FAILED


@pytest.mark.parametrize("skew", [timedelta(minutes=10), -timedelta(minutes=10)], ids=["writer+10min", "writer-10min"])
def test_staleness_reads_s3s_clock_not_the_writers(store, skew):
    """A writer whose clock is 10 minutes off (either way) writes heartbeat_at 10 minutes off;
    the lock's age still comes from S3 (Date - LastModified), so it is fresh right after the
    write and stale only once S3 says nobody wrote it for the limit."""
    skewed = lambda: utcnow() + skew  # noqa: E731
    lease = store.acquire(RID_A, now=skewed())
    store.update(lease, lambda s: {**s, "progress": {"step": 1}}, now=skewed)
    current = store.read()
    assert abs(parse_iso(current.state["heartbeat_at"]) - utcnow() - skew) < timedelta(seconds=5)
    assert current.age < timedelta(seconds=3)
    assert not _stale(current, None), "a lock written a moment ago is never stale"
    time.sleep(3.1)  # LastModified and Date have one-second resolution: the age is at least 2 s now
    aged = store.read()
    assert aged.age >= timedelta(seconds=2)
    assert _stale(aged, None, stale_after=timedelta(seconds=2))
    assert not _stale(aged, "running", stale_after=timedelta(seconds=2))


def _stale(lease, instance_state, stale_after=timedelta(minutes=5)) -> bool:
    return judge(lease.state, lease.age, lease.seen_at, instance_state, False, stale_after).stale


@pytest.mark.parametrize("rounds", [pytest.param(5, id="5-rounds"),
                                    pytest.param(20, id="20-rounds", marks=pytest.mark.reliability)])
def test_race_16_acquirers_threads_and_processes(aws, bucket, store, rounds):
    threads, procs = 8, 8
    ctx = multiprocessing.get_context("spawn")
    # The deployer's named keys: the race tests the protocol, not anyone's rights.
    with ctx.Pool(procs, initializer=_race_worker.init, initargs=(aws.endpoint_url, aws.region, bucket, ENV, aws.credentials)) as pool:
        for rnd in range(rounds):
            go_at = time.time() + (3.0 if rnd == 0 else 0.5)  # round 0 waits for spawned workers
            ids = [f"run-20261128-{rnd:06d}-{i:04x}" for i in range(threads + procs)]
            futures = [pool.apply_async(_race_worker.contend, (rid, go_at)) for rid in ids[threads:]]
            local_results: list = [None] * threads
            local_store = StateStore(client("s3", aws), bucket, ENV)

            def run(i):
                from instance.protocol.state import LockBusy as Busy

                time.sleep(max(0.0, go_at - time.time()))
                try:
                    local_store.acquire(ids[i])
                    local_results[i] = ("won", ids[i], "")
                except Busy as exc:
                    local_results[i] = ("busy", exc.holder.get("run_id", ""), str(exc))

            ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            results = local_results + [f.get(timeout=60) for f in futures]
            winners = [r for r in results if r[0] == "won"]
            assert len(winners) == 1, f"round {rnd}: {winners}"
            winner = winners[0][1]
            assert store.read().run_id == winner
            for kind, holder, msg in results:
                if kind == "busy":
                    assert holder == winner and winner in msg
            assert store.release(store.read())
