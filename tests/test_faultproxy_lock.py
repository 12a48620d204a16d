"""The lock protocol through injected S3 faults: retries are botocore's, a lost reply to a
conditional write is recognised as our own write (write_id), never as someone else's, and a 409
ConditionalRequestConflict is re-read and written again (see tests/test_conflicts.py)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from instance.protocol.aws import AwsTarget, ConflictBackoff, client
from instance.protocol.state import StateStore
from instance.protocol.status import Status
from tests.conftest import ENV
from tests.faultproxy import ALL_FAULTS, CONFLICT, FaultProxy

FAST = ConflictBackoff(attempts=8, base_s=0.01, cap_s=0.05)


@pytest.fixture
def bucket(deployed):
    """Deployed: the lock's writers are the operator, as the CLI is."""
    return deployed.bucket


@pytest.mark.parametrize("faults,seed", [(ALL_FAULTS, 7), ((CONFLICT,), 11)], ids=["errors-resets-replies", "409s"])
def test_lock_protocol_survives_20_percent_faults(aws, bucket, faults, seed):
    """4 writers bump a counter 5 times each: no bump is lost or applied twice."""
    with FaultProxy(aws.endpoint_url, rate=0.2, faults=faults, seed=seed, paths=("system-state.json",)) as proxy:
        store = StateStore(client("s3", AwsTarget(aws.region, proxy.url)), bucket, ENV, backoff=FAST)  # the operator
        lease = store.acquire("run-20261128-100000-aaaa", counter=0)
        for status in (Status.DATA_SYNC, Status.TRAINING):
            lease = store.move(lease, status)

        def bump(_):
            for _ in range(5):
                store.update(store.read(), lambda s: {**s, "counter": s["counter"] + 1})

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(bump, range(4)))
        final = store.read()
        assert final.state["counter"] == 20
        assert final.status is Status.TRAINING
        store.release(final)  # True, or False when the reply to our own delete was the lost one
        assert store.read() is None
    if CONFLICT in faults:
        assert proxy.stats[CONFLICT] > 0 and proxy.stats["retries"] == 0, "botocore never retries a 409"
    else:
        assert proxy.injected > 0 and proxy.stats["lost"] + proxy.stats["reset"] > 0
