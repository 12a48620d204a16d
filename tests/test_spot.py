"""Spot runs through the real CLI against the sandbox, its Auto Scaling group played by the local
executor: a notice (`sandbox interrupt`) checkpoints and hands the run to a replacement machine,
which resumes it from the checkpoint; the run's machines are bounded; a run waiting for its
next machine can be killed. verify-cleanup after each."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from automation.sandbox import motoserver
from instance.protocol.aws import client
from instance.protocol.ec2 import instance_state, instances_by_tag
from instance.protocol.group import describe_group
from instance.protocol.layout import Layout, bucket_name
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet
from tests.cli_helpers import cli_env, launched_run_id, run_cli, wait_until

BUCKET = bucket_name("dev", "123456789012", "us-east-1")
LAYOUT = Layout("dev")
pytestmark = pytest.mark.slow


@pytest.fixture
def env(aws, tmp_path):
    # EC2 gives two minutes' notice and boots in one or two; the sandbox, seconds.
    return cli_env(aws.endpoint_url, tmp_path / "home", CHRONOS_HEARTBEAT_SECONDS="0.5",
                   CHRONOS_NOTICE_SECONDS="0.2", CHRONOS_SPOT_NOTICE_SECONDS="30", CHRONOS_KILL_GRACE_SECONDS="60")


def spot_config(tmp_path, max_interruptions: int = 5, **training) -> str:
    data = write_parquet(tmp_path / "data" / "train.parquet", synthetic_frame(n_items=6, length=96))
    doc = run_config(dataset=str(data), **training)
    doc["instance"].update(spot=True, types=["g6.xlarge", "g5.xlarge", "g4dn.xlarge"], max_interruptions=max_interruptions)
    del doc["instance"]["type"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def lock(s3) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.state)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def record(s3, run_id: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.training_record(run_id))["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def training_at(s3, run_id: str, step: int, attempt: int):
    state = lock(s3)
    return bool(state and state["run_id"] == run_id and state.get("attempt") == attempt
                and state["status"] == "training" and (state.get("progress") or {}).get("step", 0) >= step)


def ended(s3, run_id: str):
    doc = record(s3, run_id)
    return doc if doc and doc.get("final_status") and lock(s3) is None else None


def machines_of(aws, run_id: str) -> list[str]:
    return [i["InstanceId"] for i in instances_by_tag(client("ec2", aws), {"RunId": run_id},
                                                      states=("pending", "running", "shutting-down", "terminated"))]


def interrupt(env, run_id: str) -> None:
    result = run_cli(env, "--local", "sandbox", "interrupt", run_id)
    assert result.returncode == 0, result.stderr
    assert "spot notice" in result.stdout


def test_an_interrupted_spot_run_resumes_on_a_new_machine_and_completes(env, aws, tmp_path):
    s3 = client("s3", aws)
    num_steps = 400
    run_id = launched_run_id(run_cli(env, "--local", "launch", spot_config(tmp_path, num_steps=num_steps), cwd=tmp_path))
    wait_until(lambda: training_at(s3, run_id, 10, attempt=1), 180, what="training on the first machine")
    # The group launches the first listed type EC2 has capacity for: now the config's third choice.
    motoserver.set_launch_conditions(aws.endpoint_url, no_capacity=["g6.xlarge", "g5.xlarge"])
    interrupt(env, run_id)

    waiting = wait_until(lambda: (lock(s3) or {}).get("interruptions"), 60, 0.1, what="the interruption recorded")
    assert waiting[0]["checkpoint_step"] >= 10, waiting
    doc = wait_until(lambda: ended(s3, run_id), 300, what="the run to end")
    assert doc["final_status"] == "completed", doc.get("error")
    [gone] = doc["interruptions"]
    assert gone["step"] >= 10 and gone["checkpoint_step"] >= gone["step"] - 1
    # The second machine went on from the checkpoint: it did only the steps left, not all of them.
    assert doc["attempt"] == 2 and doc["resumed_from"]["step"] == gone["checkpoint_step"]
    assert doc["training"]["steps_done"] == num_steps and doc["training"]["resumed_from_step"] == gone["checkpoint_step"]
    assert [m["attempt"] for m in doc["machines"]] == [1, 2] and all(m["market"] == "spot" for m in doc["machines"])
    assert len(machines_of(aws, run_id)) == 2, "one machine per attempt, no more"
    # Each machine is recorded as EC2 launched it (type and zone, from its metadata), not as the
    # config listed it first: its cost and the spot quote follow.
    launched = {i["InstanceId"]: (i["InstanceType"], i["Placement"]["AvailabilityZone"])
                for i in instances_by_tag(client("ec2", aws), {"RunId": run_id}, states=("terminated", "running"))}
    assert {m["instance_id"]: (m["instance_type"], m["zone"]) for m in doc["machines"]} == launched
    assert [m["instance_type"] for m in doc["machines"]] == ["g6.xlarge", "g4dn.xlarge"]
    assert doc["host"]["instance_type"] == "g4dn.xlarge" and doc["host"]["zone"] == launched[doc["host"]["instance_id"]][1]
    assert describe_group(client("autoscaling", aws), run_id) is None or \
        describe_group(client("autoscaling", aws), run_id)["DesiredCapacity"] == 0

    shown = json.loads(run_cli(env, "--local", "monitor", run_id, "--json").stdout)
    assert shown["final_status"] == "completed" and len(shown["interruptions"]) == 1
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_a_run_past_its_interruptions_ends_failed_with_no_machine_left(env, aws, tmp_path):
    """max_interruptions 1: two machines in all. The second is the last: it leaves the group when
    it boots, so its interruption ends the run and nothing replaces it."""
    s3 = client("s3", aws)
    config = spot_config(tmp_path, max_interruptions=1, num_steps=100_000)
    run_id = launched_run_id(run_cli(env, "--local", "launch", config, cwd=tmp_path))
    wait_until(lambda: training_at(s3, run_id, 3, attempt=1), 180, what="training on the first machine")
    interrupt(env, run_id)
    [gone] = wait_until(lambda: (lock(s3) or {}).get("interruptions"), 60, 0.1, what="the interruption recorded")
    # Past the checkpoint the first machine left: the lock keeps its last progress once the second
    # machine has written attempt 2, before that one has left the group or trained a step.
    wait_until(lambda: training_at(s3, run_id, gone["checkpoint_step"] + 3, attempt=2), 180,
               what="training on the second machine")
    assert describe_group(client("autoscaling", aws), run_id)["DesiredCapacity"] == 0, "the last machine left"
    interrupt(env, run_id)

    doc = wait_until(lambda: ended(s3, run_id), 180, what="the run to end")
    assert (doc["final_status"], doc["reason"]) == ("failed", "too_many_interruptions")
    time.sleep(2)  # a third machine would have been launched by now
    assert len(machines_of(aws, run_id)) == 2
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_killed_while_waiting_for_its_next_machine(env, aws, tmp_path):
    s3 = client("s3", aws)
    slow_boot = {**env, "CHRONOS_SANDBOX_BOOT_SECONDS": "12"}
    run_id = launched_run_id(run_cli(slow_boot, "--local", "launch", spot_config(tmp_path, num_steps=100_000),
                                     cwd=tmp_path, timeout=120))
    wait_until(lambda: training_at(s3, run_id, 3, attempt=1), 180, what="training on the first machine")
    interrupt(slow_boot, run_id)
    wait_until(lambda: (lock(s3) or {}).get("awaiting_machine"), 60, 0.1, what="the run to wait for a machine")
    shown = run_cli(env, "--local", "monitor", run_id)
    assert "waiting for a machine (attempt 2 of 6)" in shown.stdout, shown.stdout

    killed = run_cli(env, "--local", "kill", run_id, timeout=120)
    assert killed.returncode == 0, killed.stderr
    doc = wait_until(lambda: ended(s3, run_id), 30, what="the record")
    assert doc["final_status"] == "killed"
    time.sleep(15)  # longer than the boot: no machine may start the run again
    # The group may have launched the replacement before the kill reached it (it never booted):
    # one or two machines, every one ended, and the run never went past its first attempt.
    ids = machines_of(aws, run_id)
    assert lock(s3) is None and len(ids) in (1, 2), ids
    assert {instance_state(client("ec2", aws), i) for i in ids} == {"terminated"}
    assert ended(s3, run_id).get("attempt") in (None, 1), "a second machine started the run again"
    assert describe_group(client("autoscaling", aws), run_id) is None or \
        describe_group(client("autoscaling", aws), run_id)["DesiredCapacity"] == 0
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr


@pytest.mark.parametrize("phase", [
    "results_sync",
    pytest.param("data_sync", marks=pytest.mark.reliability),
    pytest.param("cleanup", marks=pytest.mark.reliability),
])
def test_interrupted_outside_training_the_run_still_completes(env, aws, tmp_path, phase):
    """A notice in data_sync or results_sync hands over like one in training (results_sync: the
    last step's checkpoint means the next machine trains nothing); one in cleanup lets the machine
    be taken mid-cleanup, and the next machine finishes that cleanup with the outcome decided."""
    s3 = client("s3", aws)
    paused = {**env, "CHRONOS_PAUSE": f"{phase}:6", "CHRONOS_SPOT_NOTICE_SECONDS": "2" if phase == "cleanup" else "30"}
    run_id = launched_run_id(run_cli(paused, "--local", "launch", spot_config(tmp_path, num_steps=30), cwd=tmp_path))
    wait_until(lambda: (lock(s3) or {}).get("status") == phase, 180, 0.1, what=f"the run in {phase}")
    interrupt(paused, run_id)
    doc = wait_until(lambda: ended(s3, run_id), 300, what="the run to end")
    assert doc["final_status"] == "completed", doc.get("error")
    assert len(machines_of(aws, run_id)) == 2
    if phase != "cleanup":
        [gone] = doc["interruptions"]
        assert doc["attempt"] == 2
        # Taken before training began, the interruption has no step; later, the step it came at.
        assert (gone["step"] is None) == (phase == "data_sync"), gone
    if phase == "results_sync":
        assert doc["training"]["resumed_from_step"] == 30 and doc["training"]["steps_done"] == 30
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.models(run_id)).get("KeyCount", 0) > 0
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_a_rebalance_recommendation_saves_a_checkpoint_at_once_and_the_run_goes_on(env, aws, tmp_path):
    """EC2's rebalance recommendation (elevated risk, no notice yet): a full checkpoint reaches S3
    within seconds, long before checkpoint_minutes (15), and the run stays on its machine."""
    s3 = client("s3", aws)
    run_id = launched_run_id(run_cli(env, "--local", "launch", spot_config(tmp_path, num_steps=100_000), cwd=tmp_path))
    wait_until(lambda: training_at(s3, run_id, 3, attempt=1), 180, what="training on the first machine")
    assert not complete_checkpoints(s3, run_id), "no periodic checkpoint is due yet"
    # The launch asked AWS (here moto, as the operator, IAM enforced) what spot costs now, per zone.
    quotes = lock(s3)["spot_prices"]
    assert set(quotes) == {"g6.xlarge", "g5.xlarge", "g4dn.xlarge"} and all(quotes.values()), quotes
    advised = run_cli(env, "--local", "sandbox", "interrupt", "--rebalance", run_id)
    assert advised.returncode == 0 and "rebalance recommendation given" in advised.stdout, advised.stderr
    saved = wait_until(lambda: complete_checkpoints(s3, run_id), 60, 0.2, what="a checkpoint in S3")
    state = lock(s3)
    assert (state["attempt"], state["status"], state.get("interruptions") or []) == (1, "training", []), state
    step = (state.get("progress") or {}).get("step", 0)
    wait_until(lambda: training_at(s3, run_id, step + 5, attempt=1), 60, what="training to go on")
    assert len(complete_checkpoints(s3, run_id)) == len(saved), "one checkpoint per recommendation"
    assert run_cli(env, "--local", "kill", "--force").returncode == 0
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0


def complete_checkpoints(s3, run_id: str) -> list[str]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.checkpoints(run_id)).get("Contents", [])]
    return [k for k in keys if k.endswith("/_COMPLETE")]
