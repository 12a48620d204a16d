"""The lock protocol through injected S3 faults: retries are botocore's, and a lost reply to a
conditional write is recognised as our own write (write_id), never as someone else's."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from instance.protocol.aws import AwsTarget, client
from instance.protocol.state import StateStore
from instance.protocol.status import Status
from tests.conftest import ENV
from tests.faultproxy import FaultProxy


def test_lock_protocol_survives_20_percent_faults(aws, bucket):
    with FaultProxy(aws.endpoint_url, rate=0.2, seed=7, paths=("system-state.json",)) as proxy:
        s3 = client("s3", AwsTarget(aws.region, proxy.url))
        store = StateStore(s3, bucket, ENV)
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
    injected = sum(proxy.stats[f] for f in ("slowdown", "error500", "reset", "lost", "latency"))
    assert injected > 0 and proxy.stats["lost"] + proxy.stats["reset"] > 0
