"""S3's 409 ConditionalRequestConflict, injected by the fault proxy on conditional writes of the
lock: a conflict like 412 (re-read, then write again, busy or fenced), never an error.

Real S3 answers 409 when conditional requests on one key race (S3 API reference, PutObject:
"If a conflicting operation occurs during the upload S3 returns a 409 ConditionalRequestConflict
response. On a 409 failure you should fetch the object's ETag and retry the upload."). moto
serialises conditional requests, so only the proxy can show one.
"""
from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from instance.protocol.aws import AwsTarget, ConflictBackoff, client, is_conditional_conflict, is_write_conflict
from instance.protocol.state import LockBusy, StateStore
from instance.protocol.status import Status
from tests.conftest import ENV
from tests.faultproxy import CONFLICT, FaultProxy

RID_A = "run-20261128-100000-aaaa"
RID_B = "run-20261128-110000-bbbb"
FAST = ConflictBackoff(attempts=8, base_s=0.01, cap_s=0.05)
STATE = f"{ENV}/system-state.json"


# The deployer's named keys: these test the protocol and the proxy, not anyone's rights (and write
# keys, "plain" and "guarded", that no policy grants).
def proxied_store(proxy: FaultProxy, aws, bucket: str, backoff: ConflictBackoff = FAST) -> StateStore:
    return StateStore(client("s3", AwsTarget(aws.region, proxy.url, aws.credentials)), bucket, ENV, backoff=backoff)


def test_the_proxy_answers_409_only_to_conditional_writes(aws, bucket):
    with FaultProxy(aws.endpoint_url, rate=1.0, faults=(CONFLICT,)) as proxy:
        s3 = client("s3", AwsTarget(aws.region, proxy.url, aws.credentials))
        s3.put_object(Bucket=bucket, Key="plain", Body=b"x")  # unconditional: never a 409
        s3.get_object(Bucket=bucket, Key="plain")
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=bucket, Key="guarded", Body=b"x", IfNoneMatch="*")
    exc = err.value
    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert is_conditional_conflict(exc) and is_write_conflict(exc)
    assert exc.response["ResponseMetadata"]["RetryAttempts"] == 0, "botocore must not retry a 409 by itself"
    assert proxy.stats[CONFLICT] == 1 and proxy.failed_calls == 1


@pytest.mark.parametrize("op", ["acquire", "move", "heartbeat", "release"])
def test_one_409_on_each_kind_of_lock_write_is_retried(aws, bucket, op):
    steps = {
        "acquire": lambda store, lease: store.acquire(RID_A),  # re-read finds no holder: creates again
        "move": lambda store, lease: store.move(lease, Status.DATA_SYNC),
        "heartbeat": lambda store, lease: store.heartbeat(lease, progress={"step": 1}),
        "release": lambda store, lease: store.release(lease),
    }
    with FaultProxy(aws.endpoint_url) as proxy:
        store = proxied_store(proxy, aws, bucket)
        lease = None
        for name, step in steps.items():
            if name == op:
                proxy.configure(rate=1.0, faults=(CONFLICT,), paths=(STATE,), max_faults=1)
            result = step(store, lease)
            lease = result if name != "release" else lease
            if name == op:
                assert proxy.stats[CONFLICT] == 1, f"no 409 reached {op}"
                proxy.configure(rate=0.0)
        assert result is True  # the release deleted the lock
        assert lease.seq == 3
    assert StateStore(client("s3", aws), bucket, ENV).read() is None


def test_a_409_while_another_run_holds_the_lock_is_busy(aws, bucket):
    StateStore(client("s3", aws), bucket, ENV).acquire(RID_A)
    with FaultProxy(aws.endpoint_url, rate=1.0, faults=(CONFLICT,), paths=(STATE,)) as proxy:
        with pytest.raises(LockBusy) as err:
            proxied_store(proxy, aws, bucket).acquire(RID_B)
    assert RID_A in str(err.value) and proxy.stats[CONFLICT] == 1


def test_a_kill_request_through_a_409_still_lands(aws, bucket):
    lease = StateStore(client("s3", aws), bucket, ENV).acquire(RID_A)
    with FaultProxy(aws.endpoint_url, rate=1.0, faults=(CONFLICT,), paths=(STATE,), max_faults=2) as proxy:
        killed = proxied_store(proxy, aws, bucket).request_kill(RID_A, requested_by="test")
    assert killed.status is Status.KILLED and killed.seq == lease.seq + 1
    assert proxy.stats[CONFLICT] == 2


def test_conflicts_beyond_the_budget_surface_as_the_409(aws, bucket):
    lease = StateStore(client("s3", aws), bucket, ENV).acquire(RID_A)
    with FaultProxy(aws.endpoint_url, rate=1.0, faults=(CONFLICT,), paths=(STATE,)) as proxy:
        with pytest.raises(ClientError) as err:
            proxied_store(proxy, aws, bucket).move(lease, Status.DATA_SYNC)
    assert is_conditional_conflict(err.value) and proxy.stats[CONFLICT] == FAST.attempts


def test_backoff_is_jittered_and_bounded():
    import random

    rng = random.Random(3)
    delays = [FAST.delay(n, rng) for n in range(1, 20)]
    assert all(0 <= d <= FAST.cap_s for d in delays) and len(set(delays)) == len(delays)
    default = ConflictBackoff()
    assert sum(min(default.cap_s, default.base_s * 2 ** n) for n in range(1, default.attempts)) < 10
