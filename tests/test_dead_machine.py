"""A dead machine is seen at once, a replaced one is waited for (instance/protocol/liveness.py).

The real CLI against the tests' moto server; the agent is SIGKILLed as a machine dies. No knob
shortens the stale limit: EC2's word on the machine, and its group's, decide.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from automation.cli.render import verify_lines
from automation.runs.verify import verify
from automation.sandbox import motoserver
from instance.protocol.aws import client
from instance.protocol.ec2 import instances_by_tag
from instance.protocol.group import describe_group, failed_launches
from instance.protocol.layout import bucket_name
from instance.protocol.state import StateStore
from tests.cli_helpers import (
    agent_pid,
    launched_run_id,
    live_state,
    pid_running,
    reached_phase,
    run_cli,
    start_cli,
    wait_until,
)
from tests.test_cli_flows import local_config
from tests.test_reliability_crash import env, home  # noqa: F401 - fixtures
from tests.test_verify import RUN, executor, target  # noqa: F401 - fixtures

BUCKET = bucket_name("dev", "123456789012", "us-east-1")
ALL_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")


def _kill_agent(home_dir, run_id: str) -> float:
    pid = agent_pid(home_dir, run_id)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: not pid_running(pid), timeout=10, what=f"agent {pid} to die")
    return killed_at


def _bucket_made(s3) -> bool:
    """The launch seeds the sandbox (and its bucket) itself, a moment after it starts."""
    return any(b["Name"] == BUCKET for b in s3.list_buckets().get("Buckets", []))


@pytest.mark.slow
def test_a_follower_ends_with_exit_4_within_a_poll_of_the_machine_dying(env, home, aws, tmp_path):  # noqa: F811
    s3 = client("s3", aws)
    config = local_config(tmp_path, instance={"max_interruptions": 0})
    follower = start_cli({**env, "CHRONOS_PAUSE": "data_sync:300"}, "--local", "launch", config, "--follow",
                         "--no-download", cwd=tmp_path)
    try:
        in_data_sync = reached_phase(s3, BUCKET, "data_sync")
        wait_until(lambda: _bucket_made(s3) and in_data_sync(), timeout=180, what="the run to reach data_sync")
        run_id = live_state(s3, BUCKET)["run_id"]
        killed_at = _kill_agent(home, run_id)
        out, err = follower.communicate(timeout=60)
        ended_after = time.monotonic() - killed_at
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 4, err[-3000:]
    # Its process ended without a termination through EC2: a power-off, which (on the worse
    # reading the sandbox plays) stops the machine. It bills its volume until --fix ends it.
    assert f"run {run_id} is lost: its machine i-" in err and "is stopped and no replacement is coming" in err
    assert "verify-cleanup --fix" in err and "Traceback" not in err
    # One poll (0.5 s locally) plus the EC2 check, and the CLI's own start-up on a busy machine.
    assert ended_after < 10, f"the follower took {ended_after:.1f} s"
    print(f"\nlaunch --follow ended {ended_after:.1f} s after the kill")
    assert run_cli(env, "--local", "verify-cleanup", "--fix").returncode == 0
    assert live_state(s3, BUCKET) is None
    ec2 = client("ec2", aws)
    states = {i["State"]["Name"] for i in instances_by_tag(ec2, {"RunId": run_id}, states=ALL_STATES)}
    assert states == {"terminated"}, states


@pytest.mark.slow
def test_a_machine_with_a_replacement_coming_is_waited_for_not_declared_dead(env, home, aws, tmp_path):  # noqa: F811
    s3 = client("s3", aws)
    # Two machines allowed; the sandbox's machines take 12 s to boot, the window in which the
    # group has launched the replacement and its agent has not yet written the lock.
    slow_boot = {**env, "CHRONOS_SANDBOX_BOOT_SECONDS": "12"}
    config = local_config(tmp_path, instance={"max_interruptions": 1})
    run_id = launched_run_id(run_cli({**slow_boot, "CHRONOS_PAUSE": "data_sync:300"}, "--local", "launch", config,
                                     cwd=tmp_path))
    wait_until(reached_phase(s3, BUCKET, "data_sync"), timeout=180, what="the run to reach data_sync")
    first = live_state(s3, BUCKET)["instance_id"]
    _kill_agent(home, run_id)

    seen = run_cli(slow_boot, "--local", "verify-cleanup")
    assert seen.returncode == 0, seen.stdout + seen.stderr
    assert f"active run: {run_id} (data_sync): its machine {first} is terminated; " \
           "waiting for a replacement machine (attempt 2 of 2)" in seen.stdout, seen.stdout
    assert seen.stdout.rstrip().endswith("1 run active; nothing else bills") and "clean" not in seen.stdout
    shown = json.loads(run_cli(slow_boot, "--local", "monitor", run_id, "--json").stdout)
    assert (shown["machine"], shown["lost"], shown["waiting"]) == \
        ("gone", False, "waiting for a replacement machine (attempt 2 of 2)"), shown

    # The replacement boots, resumes the run as attempt 2 and names its own machine.
    wait_until(lambda: (live_state(s3, BUCKET) or {}).get("attempt") == 2, timeout=120,
               what="the replacement machine to take the run")
    assert live_state(s3, BUCKET)["instance_id"] != first
    assert run_cli(env, "--local", "kill", "--force").returncode == 0
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0


@pytest.mark.slow
def test_a_replacement_the_group_cannot_launch_is_waited_for_with_awss_words(env, home, aws, tmp_path):  # noqa: F811
    """The machine dies and EC2 has no capacity for its replacement now: the group records the
    failed launch, monitor says the run waits for a replacement and why, in AWS's words, and
    kill --force ends the run with nothing left."""
    s3 = client("s3", aws)
    config = local_config(tmp_path, instance={"max_interruptions": 1})
    run_id = launched_run_id(run_cli({**env, "CHRONOS_PAUSE": "data_sync:300"}, "--local", "launch", config,
                                     cwd=tmp_path))
    wait_until(reached_phase(s3, BUCKET, "data_sync"), timeout=180, what="the run to reach data_sync")
    first = live_state(s3, BUCKET)["instance_id"]
    motoserver.set_launch_conditions(aws.endpoint_url, no_capacity=["g4dn.xlarge"])
    _kill_agent(home, run_id)
    autoscaling = client("autoscaling", aws)
    wait_until(lambda: failed_launches(autoscaling, run_id), timeout=30, what="the group's replacement to fail")

    shown = json.loads(run_cli(env, "--local", "monitor", run_id, "--json").stdout)
    assert (shown["machine"], shown["lost"]) == ("gone", False), shown
    assert shown["waiting"].startswith("waiting for a replacement machine (attempt 2 of 2); waiting for capacity: "
                                       "the group keeps trying every listed type in every zone"), shown["waiting"]
    assert shown["waiting"].endswith("the group's last failed launch: We currently do not have sufficient g4dn.xlarge "
                                     "capacity in the Availability Zone you requested (us-east-1a). Our system will be "
                                     "working on provisioning additional capacity. Launching EC2 instance failed.")
    assert [i["InstanceId"] for i in describe_group(autoscaling, run_id)["Instances"]] == [], "no replacement"
    assert live_state(s3, BUCKET)["instance_id"] == first

    assert run_cli(env, "--local", "kill", "--force").returncode == 0
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0
    assert live_state(s3, BUCKET) is None and describe_group(autoscaling, run_id) is None


def test_a_just_launched_instance_ec2_does_not_know_yet_is_not_dead(target, executor):  # noqa: F811
    StateStore(target.s3, target.bucket, "dev").acquire(RUN, executor="ec2", instance_id="i-0123456789abcdef0")
    report = verify(target, executor, do_fix=False)
    assert report.clean and report.active_run == RUN and report.findings == []
    assert report.active["machine"] == "unknown" and not report.active["stale"]
    lines = verify_lines(report)
    assert lines[-1] == "1 run active; nothing else bills"
    assert f"active run: {RUN} (initialization): its machine i-0123456789abcdef0 is not known to EC2" in lines[0]


def test_a_run_that_ends_while_its_machine_is_judged_is_not_called_lost(target, executor, monkeypatch):  # noqa: F811
    """The agent writes its final record, releases the lock, then its machine ends. A follower that
    read the lock just before the release and sees the machine gone just after must report how
    the run ended, not "lost" (exit 4 for a completed run)."""
    from automation.cli import follow as following
    from automation.runs import runcheck
    from instance.protocol.artifacts import put_json

    store = StateStore(target.s3, target.bucket, "dev")
    lease = store.acquire(RUN, executor="ec2", instance_id="i-0123456789abcdef0")

    def the_run_ends_meanwhile(target_, instance_id):
        put_json(target.s3, target.bucket, target.layout.training_record(RUN),
                 {"run_id": RUN, "final_status": "completed", "started_at": "2026-11-28T08:00:00Z"})
        store.release(lease)
        return "terminated"

    monkeypatch.setattr(runcheck, "instance_state", the_run_ends_meanwhile)
    final = following.follow(target, executor, RUN, on_update=lambda view: None, interval=0.01)
    assert final.final_status == "completed"


def test_a_replacement_that_takes_the_run_while_it_is_judged_is_not_called_lost(target, executor,  # noqa: F811
                                                                                  monkeypatch):
    """A monitor reads the lock (attempt 1, the machine that died), then the replacement takes the
    run over and, as its last machine, leaves the group (desired capacity 0): the old machine
    gone and a group that wants nothing read as "lost". Seen under load in
    test_a_machine_with_a_replacement_coming_is_waited_for_not_declared_dead (monitor --json said
    lost while the replacement trained); verify-cleanup --fix would have ended the replacement's
    run."""
    from automation.runs import runcheck

    store = StateStore(target.s3, target.bucket, "dev")
    store.acquire(RUN, executor="ec2", instance_id="i-0000000000000dead", attempt=1, max_machines=2)
    replacement = "i-00000000000000new"

    def the_replacement_takes_over(target_, instance_id):
        if instance_id == replacement:
            return "running"
        held = store.read()
        if held.state["instance_id"] != replacement:
            store.update(held, lambda st: {**st, "attempt": 2, "instance_id": replacement})
        return "terminated"

    monkeypatch.setattr(runcheck, "instance_state", the_replacement_takes_over)
    verdict = runcheck.check_run(target, executor, store.read())
    assert not verdict.stale and verdict.machine.value == "alive", verdict
    report = verify(target, executor, do_fix=True)
    assert report.active_run == RUN and not report.active["stale"]
    assert store.read().state["instance_id"] == replacement


def test_a_machine_just_started_is_not_taken_for_dead():
    """Right after Popen returns, a new process may not show its arguments yet (the kernel sets
    them up after letting the parent go). A launch that looked then called its group's player
    dead ("the group's player exited"): about 4 times in 10 on this machine under load."""
    import subprocess
    import sys

    from automation.executors.local import process_alive

    for i in range(40):
        run_id = f"run-20261128-090000-{i:04x}"
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", run_id], start_new_session=True)
        try:
            assert process_alive(proc.pid, run_id), f"start {i}: a process that runs was called dead"
        finally:
            proc.kill()
            proc.wait()
        assert not process_alive(proc.pid, run_id)
