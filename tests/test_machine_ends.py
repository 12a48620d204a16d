"""Every way a run's machine ends goes through EC2, never only through a power-off.

The sandbox plays the worse reading of AWS (automation/sandbox/poweroff.py): a group's machine
whose agent exits without having terminated it through EC2 is `stopped`, not terminated, and
the group replaces a member that is not running while it still wants a machine. A machine that
merely powered off would therefore show up here as a stopped instance, a second machine, or both.

Each end path of a --local run, through the real CLI, on a run that may have two machines
(`max_interruptions: 1`: its first machine stays in its group, so a power-off would be replaced):
completed, failed, killed, past its time limit, fenced (another run took the lock). After each:
exactly one machine ever, terminated; the group wants none; verify-cleanup clean.
"""
from __future__ import annotations

import json
import time

import pytest

from instance.protocol.aws import client
from instance.protocol.ec2 import instances_by_tag
from instance.protocol.group import describe_group
from instance.protocol.layout import Layout, bucket_name
from instance.protocol.state import StateStore
from tests.cli_helpers import cli_env, launched_run_id, live_state, reached_phase, run_cli, wait_until
from tests.test_cli_flows import local_config

BUCKET = bucket_name("dev", "123456789012", "us-east-1")
LAYOUT = Layout("dev")
ALL_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")
OTHER_RUN = "run-20991231-000000-beef"
pytestmark = pytest.mark.slow


@pytest.fixture
def env(aws, tmp_path):
    return cli_env(aws.endpoint_url, tmp_path / "home", CHRONOS_HEARTBEAT_SECONDS="0.5",
                   CHRONOS_LOG_UPLOAD_SECONDS="1", CHRONOS_KILL_GRACE_SECONDS="60")


def machines(aws, run_id: str) -> dict[str, str]:
    found = instances_by_tag(client("ec2", aws), {"RunId": run_id}, states=ALL_STATES)
    return {i["InstanceId"]: i["State"]["Name"] for i in found}


def record(s3, run_id: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.training_record(run_id))["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _fence(s3) -> None:
    """Another run takes the lock from under the agent (as verify-cleanup --fix and a new launch
    would): its next write is refused and it must write nothing more."""
    store = StateStore(s3, BUCKET, "dev")
    store.release(store.read())
    store.acquire(OTHER_RUN, instance_id="i-0123456789abcdef0", executor="local")


# path -> (extra environment, what the test does once the run is under way, the outcome recorded)
PATHS = {
    "completed": ({}, None, ("completed", None)),
    "failed": ({"CHRONOS_FAULT": "data_sync"}, None, ("failed", "InjectedFault")),
    "killed": ({"CHRONOS_PAUSE": "data_sync:300"}, "kill", ("killed", "killed_by_user")),
    "max runtime": ({"CHRONOS_DEADLINE_SECONDS": "0"}, None, ("failed", "max_runtime_exceeded")),
    "fenced": ({"CHRONOS_PAUSE": "data_sync:300"}, "fence", None),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_end_of_a_machine_goes_through_ec2(env, aws, tmp_path, path):
    extra, act, outcome = PATHS[path]
    s3 = client("s3", aws)
    config = local_config(tmp_path, instance={"max_interruptions": 1})
    run_id = launched_run_id(run_cli({**env, **extra}, "--local", "launch", config, cwd=tmp_path))
    if act:
        wait_until(reached_phase(s3, BUCKET, "data_sync"), timeout=180, what="the run to reach data_sync")
    if act == "kill":
        assert run_cli(env, "--local", "kill", run_id, "--wait", timeout=120).returncode == 0
    elif act == "fence":
        _fence(s3)

    def over() -> bool:
        ended = (record(s3, run_id) or {}).get("final_status") if outcome else True
        lock = live_state(s3, BUCKET)
        return bool(ended and (lock is None or lock["run_id"] != run_id)
                    and "running" not in machines(aws, run_id).values())
    wait_until(over, timeout=180, what=f"the {path} run to end")
    time.sleep(2)  # ten polls of the group's player: a replacement would have been launched by now

    assert list(machines(aws, run_id).values()) == ["terminated"], machines(aws, run_id)
    group = describe_group(client("autoscaling", aws), run_id)
    assert group is None or group["DesiredCapacity"] == 0, group
    if outcome:
        doc = record(s3, run_id)
        assert (doc["final_status"], doc["reason"]) == outcome, doc.get("error")
    else:
        assert record(s3, run_id) is None or not record(s3, run_id).get("final_status"), "a fenced agent writes nothing"
        StateStore(s3, BUCKET, "dev").release(StateStore(s3, BUCKET, "dev").read())  # the other run's lock
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr
