"""Whole local runs with S3 (and EC2) faults injected between BOTH the CLI and the agent and
moto: `chronos-train --local launch CFG --follow` reaches the sandbox only through FaultProxy.

Figures (docs/reliability.md) come from the proxy's counters: `calls` (API calls made),
`retries` (attempts beyond the first, read from botocore's amz-sdk-request header), one count
per fault kind, `failed_calls` (calls whose last attempt failed: what the code saw as an error)
and `exhausted` (those that spent all 6 attempts).

Beyond the retry budget a run must end `failed` with the error class recorded and cleanup done;
when S3 itself stays unreachable, the honest end is a lock that stays until verify-cleanup finds
it stale. Every subprocess has a timeout and every wait a bound: nothing may hang.
"""
from __future__ import annotations

import json
import math
import time

import pytest
import yaml

from automation.sandbox import motoserver
from automation.sandbox.control import REGION, SandboxInfo, seed
from instance.protocol.aws import RETRIES, client
from instance.protocol.layout import DATASETS_PREFIX, Layout, bucket_name
from tests.agent_fixtures import (DATA_PREFIX, instance_state, keys_under, parquet_bytes, run_config, synthetic_frame,
                                  write_parquet)
from tests.cli_helpers import (agent_pid, cli_env, launched_run_id, live_state, pid_running, run_cli, start_cli,
                               wait_until)
from tests.faultproxy import CONFLICT, FAILING_FAULTS, FaultProxy

ENV = "dev"
BUCKET = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
LAYOUT = Layout(ENV)
RUN_TIMEOUT_S = 240  # a tiny run takes ~15 s here, ~20 s through faults; near this is a hang


@pytest.fixture
def sandbox(aws):
    """moto seeded the way `pulumi up` leaves AWS, directly (the seeding is not under test)."""
    seed(SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), ENV)
    return client("s3", aws)  # direct: the test's own view, never faulted


def faulty_env(proxy: FaultProxy, home, **extra: str) -> dict:
    return cli_env(proxy.url, home, CHRONOS_HEARTBEAT_SECONDS="1", CHRONOS_LOG_UPLOAD_SECONDS="2", **extra)


def local_config(tmp_path) -> str:
    data = write_parquet(tmp_path / "data" / "train.parquet", synthetic_frame(n_items=4, length=96))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(dataset=str(data), num_steps=10)))
    return str(path)


def get_json(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def assert_completed_intact(s3, run_id: str, cwd) -> dict:
    record = get_json(s3, LAYOUT.training_record(run_id))
    assert record["final_status"] == "completed", record.get("error")
    for name in ("finetuned", "seasonal_naive"):
        assert record["metrics"][name] and all(math.isfinite(v) for v in record["metrics"][name].values())
    meta = get_json(s3, LAYOUT.model_metadata(run_id))
    assert meta["run_id"] == run_id and meta["metrics"] == record["metrics"]
    cleanup = get_json(s3, LAYOUT.cleanup_status(run_id))
    assert cleanup["final_status"] == "completed"
    assert [s for s in cleanup["steps"] if s["result"] == "error"] == []
    models = keys_under(s3, BUCKET, LAYOUT.models(run_id))
    assert {LAYOUT.models(run_id) + n for n in ("config.json", "model.safetensors")} <= set(models)
    assert (cwd / "runs" / run_id / "model" / "config.json").exists()
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.state)
    return record


def completed_run_through(aws, sandbox, tmp_path, **faults) -> dict:
    """launch --follow and verify-cleanup through a FaultProxy(**faults); the run must complete
    intact. Returns the proxy's figures."""
    with FaultProxy(aws.endpoint_url, **faults) as proxy:
        env = faulty_env(proxy, tmp_path / "home")
        run_id = launched_run_id(run_cli(env, "--local", "launch", local_config(tmp_path), "--follow", cwd=tmp_path,
                                         timeout=RUN_TIMEOUT_S))
        clean = run_cli(env, "--local", "verify-cleanup", timeout=120)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        stats = {**proxy.stats, "failed_calls": proxy.failed_calls}
    assert_completed_intact(sandbox, run_id, tmp_path)
    figures = {"run_id": run_id, **{k: stats.get(k, 0) for k in (
        "requests", "calls", "retries", "failed_calls", "exhausted", *FAILING_FAULTS, "unnumbered", "latency",
        "upstream_5xx", CONFLICT, "conditional_writes")}}
    print("FAULTS", json.dumps({"seed": faults.get("seed"), **figures}))
    # Every failed attempt (injected, or moto's own 5xx) cost botocore exactly one retry, except
    # the last attempt of a call that failed outright. A 409 is never retried by botocore: each
    # one is a call the code saw fail (and answered by re-reading and writing again). Failed
    # attempts of obstore's requests (the dataset sync, checkpoints), injected or moto's own 5xx,
    # are retried by obstore, unseen by these counts: "unnumbered" counts both kinds.
    failed_attempts = sum(figures[f] for f in FAILING_FAULTS) + figures["upstream_5xx"] - figures["unnumbered"]
    assert figures["retries"] == failed_attempts - (figures["failed_calls"] - figures[CONFLICT]), figures
    return figures


def test_run_completes_through_20_percent_faults(aws, sandbox, tmp_path):
    figures = completed_run_through(aws, sandbox, tmp_path, rate=0.2, seed=1)
    assert figures["retries"] > 0


@pytest.mark.reliability
@pytest.mark.parametrize("seed", range(101, 111))
def test_ten_runs_complete_through_20_percent_faults(aws, sandbox, tmp_path, seed):
    completed_run_through(aws, sandbox, tmp_path, rate=0.2, seed=seed)


def test_run_completes_through_20_percent_409s_on_its_state_writes(aws, sandbox, tmp_path):
    """Real S3 answers 409 ConditionalRequestConflict when conditional writes on one key race;
    every write of the lock (launch, agent, follower) meets one 20 % of the time here."""
    figures = completed_run_through(aws, sandbox, tmp_path, rate=0.2, faults=(CONFLICT,), seed=5,
                                    paths=(LAYOUT.state,))
    assert figures[CONFLICT] > 0 and figures["retries"] == 0


@pytest.mark.reliability
@pytest.mark.parametrize("seed", range(201, 211))
def test_ten_runs_complete_through_20_percent_409s_on_every_conditional_write(aws, sandbox, tmp_path, seed):
    """The lock and the records (training.json, cleanup_status.json) alike."""
    figures = completed_run_through(aws, sandbox, tmp_path, rate=0.2, faults=(CONFLICT,), seed=seed)
    assert figures[CONFLICT] > 0


def test_lost_reply_to_the_lock_release_still_completes_every_record(aws, sandbox, tmp_path):
    # The agent's conditional DELETE of the lock lands, its reply is lost; botocore's retry then
    # finds no lock. That is our own release, not a takeover: the run must end with every record.
    figures = completed_run_through(aws, sandbox, tmp_path, rate=1.0, faults=("lost",), paths=(LAYOUT.state,),
                                    methods=("DELETE",), max_faults=1)
    assert figures["lost"] == 1 and figures["retries"] >= 1


# -- beyond the retry budget -------------------------------------------------------------------------
def bucket_config(sandbox, tmp_path, **training) -> str:
    """A run on a dataset already in the bucket (the CLI uploads nothing)."""
    sandbox.put_object(Bucket=BUCKET, Key=DATA_PREFIX + "train.parquet", Body=parquet_bytes(synthetic_frame(4, 96)))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(dataset=DATA_PREFIX, **{"num_steps": 10, **training})))
    return str(path)


def assert_failed_and_cleaned(aws, s3, run_id: str, error_class: str, phase: str) -> dict:
    record = get_json(s3, LAYOUT.training_record(run_id))
    assert record["final_status"] == "failed" and record["reason"] == error_class, record.get("error")
    assert record["error"]["class"] == error_class and record["error"]["phase"] == phase
    cleanup = get_json(s3, LAYOUT.cleanup_status(run_id))
    assert cleanup["final_status"] == "failed" and cleanup["steps"]
    assert [s for s in cleanup["steps"] if s["result"] == "error"] == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.state)
    assert instance_state(aws, record["host"]["instance_id"]) == "terminated"
    return record


@pytest.mark.parametrize("where", [
    # Both go through the one transfer path (instance/protocol/transfer.py): its TransferFailed
    # names the key and keeps botocore's error (here InternalError, after 6 attempts).
    pytest.param(dict(paths=("/" + DATASETS_PREFIX,), methods=("GET",), error="TransferFailed", phase="data_sync"),
                 id="dataset-downloads"),
    pytest.param(dict(paths=("/models/",), methods=("PUT",), error="TransferFailed", phase="results_sync"),
                 id="model-uploads", marks=pytest.mark.reliability),
])
def test_faults_beyond_the_retry_budget_fail_the_run_and_clean_up(aws, sandbox, tmp_path, where):
    # Every attempt at these keys fails (500) once the run is launched (launch itself reads a
    # bucket dataset's parquet footers: see the test below): botocore gives up after 6 attempts.
    with FaultProxy(aws.endpoint_url, rate=0.0, faults=("error500",), paths=where["paths"],
                    methods=where["methods"]) as proxy:
        env = faulty_env(proxy, tmp_path / "home")
        began = time.monotonic()
        follower = start_cli(env, "--local", "launch", bucket_config(sandbox, tmp_path), "--follow", cwd=tmp_path)
        try:
            run_id = follower.stdout.readline().strip()
            assert run_id.startswith("run-"), follower.stderr.read() if follower.poll() is not None else run_id
            proxy.configure(rate=1.0, faults=("error500",), paths=where["paths"], methods=where["methods"])
            out, err = follower.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if follower.poll() is None:
                follower.kill()
        took = time.monotonic() - began
        assert follower.returncode == 4, err[-3000:]  # the followed run failed
        # Every attempt of the retry budget was made at the key before the run failed (botocore
        # tags its attempts, so the proxy also counts its exhausted calls; obstore, which fetches
        # the small dataset files, tags none).
        assert proxy.stats["error500"] >= RETRIES["total_max_attempts"]
        if where["phase"] != "data_sync":
            assert proxy.stats["exhausted"] >= 1 and proxy.failed_calls >= 1
        clean = run_cli(env, "--local", "verify-cleanup", timeout=120)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        print("BEYOND", json.dumps({"where": where["phase"], "seconds": round(took, 1),
                                    "failed_calls": proxy.failed_calls,
                                    **{k: proxy.stats[k] for k in ("calls", "retries", "exhausted", "error500")}}))
    assert_failed_and_cleaned(aws, sandbox, run_id, where["error"], where["phase"])
    if where["phase"] == "data_sync":
        assert not keys_under(sandbox, BUCKET, LAYOUT.models(run_id))


def test_a_launch_whose_dataset_s3_keeps_failing_says_so_and_takes_nothing(aws, sandbox, tmp_path):
    """launch reads a bucket dataset's parquet footers before the lock: S3 failing those reads
    beyond botocore's retries ends the launch with one sentence naming the call, and no lock."""
    with FaultProxy(aws.endpoint_url, rate=1.0, faults=("error500",), paths=("/" + DATASETS_PREFIX,),
                    methods=("GET",)) as proxy:
        result = run_cli(faulty_env(proxy, tmp_path / "home"), "--local", "launch", bucket_config(sandbox, tmp_path),
                         cwd=tmp_path, timeout=180)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: AWS answered s3:GetObject with InternalError (HTTP 500) 6 time(s) in a row, its retries spent; " \
           "try again in a few minutes" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ClientError" not in result.stderr
    assert live_state(sandbox, BUCKET) is None


# -- S3 unreachable mid-run: the honest end states -------------------------------------------------
def _outage_in_training(proxy: FaultProxy, sandbox, tmp_path, home, **outage) -> tuple[str, dict, float]:
    """A followed run whose network fails from the start of training on: the follower exits 1
    (it cannot read the state: an error, not a hang) and the first machine's agent ends (both
    bounded). (run id, the follower's env, seconds from the outage to the agent's end)."""
    # Paused 3 s at the start of training (the state already says training): the outage starts there.
    env = faulty_env(proxy, home, CHRONOS_PAUSE="training:3", CHRONOS_STALE_SECONDS="2")
    follower = start_cli(env, "--local", "launch", bucket_config(sandbox, tmp_path), "--follow", cwd=tmp_path)
    try:
        run_id = follower.stdout.readline().strip()
        assert run_id.startswith("run-"), follower.stderr.read() if follower.poll() is not None else run_id
        wait_until(lambda: (live_state(sandbox, BUCKET) or {}).get("status") == "training", 120, what="training")
        pid = agent_pid(home, run_id)
        proxy.configure(rate=1.0, **outage)
        began = time.monotonic()
        assert follower.wait(timeout=120) == 1
        assert "error:" in follower.stderr.read()
        wait_until(lambda: not pid_running(pid), 180, what="the agent process to end")
        return run_id, env, time.monotonic() - began
    finally:
        if follower.poll() is None:
            follower.kill()


@pytest.mark.reliability
def test_the_state_file_unreachable_leaves_a_lock_that_verify_cleanup_finds_stale(aws, sandbox, tmp_path):
    """Only the state file fails, for good: the agent records its failure (the records are other
    keys) and ends its machine, but can neither move the state nor release the lock. Once S3
    answers again verify-cleanup finds the lock stale (exit 6), --fix releases it (exit 0), and a
    re-check is clean."""
    with FaultProxy(aws.endpoint_url) as proxy:
        run_id, env, ended_after = _outage_in_training(proxy, sandbox, tmp_path, tmp_path / "home",
                                                       paths=(LAYOUT.state,), faults=("reset",))
        stuck = live_state(sandbox, BUCKET)
        assert stuck and stuck["run_id"] == run_id  # the lock stays: nobody could delete it
        record = get_json(sandbox, LAYOUT.training_record(run_id))
        assert record["final_status"] == "failed" and record["error"]["class"] == "ConnectionClosedError"
        releases = [s for s in get_json(sandbox, LAYOUT.cleanup_status(run_id))["steps"] if s["resource"] == "lock"]
        assert [s["result"] for s in releases] == ["error"]
        assert instance_state(aws, stuck["instance_id"]) == "terminated"

        proxy.configure(rate=0.0)  # S3 answers again
        found = run_cli(env, "--local", "verify-cleanup", "--json", timeout=120)
        assert found.returncode == 6, found.stdout + found.stderr
        assert "stale_lock" in {f["kind"] for f in json.loads(found.stdout)["findings"]}
        fixed = run_cli(env, "--local", "verify-cleanup", "--fix", timeout=120)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert run_cli(env, "--local", "verify-cleanup", timeout=120).returncode == 0
        print("OUTAGE", json.dumps({"outage": "state-file", "agent_ended_after_s": round(ended_after, 1),
                                    "failed_calls": proxy.failed_calls,
                                    **{k: proxy.stats[k] for k in ("calls", "retries", "exhausted", *FAILING_FAULTS)}}))
    assert live_state(sandbox, BUCKET) is None
    record = get_json(sandbox, LAYOUT.training_record(run_id))
    assert (record["final_status"], record["reason"]) == ("failed", "ConnectionClosedError")


@pytest.mark.reliability
def test_everything_unreachable_the_group_replaces_the_machine_and_the_run_resumes(aws, sandbox, tmp_path):
    """S3 and EC2 both unreachable from the machine from training on: its agent can record
    nothing, cannot end its machine, and ends; the machine powers off (stopped, on the worse
    reading) and its group replaces it, as it replaces any machine lost without notice, on
    on-demand as on spot. While nothing answers, each new machine fails at once and is replaced
    too (bounded only by the outage: docs/reliability.md). Once S3 answers, the next machine
    counts the lost one as an interruption, resumes from the last complete checkpoint (here the
    start: 10 steps save none) and completes; every machine ends terminated, nothing is left."""
    with FaultProxy(aws.endpoint_url) as proxy:
        run_id, env, ended_after = _outage_in_training(proxy, sandbox, tmp_path, tmp_path / "home",
                                                       paths=(), faults=("reset", "error500"))
        first = live_state(sandbox, BUCKET)["instance_id"]
        proxy.configure(rate=0.0)  # the network is back
        record = wait_until(lambda: _final(sandbox, run_id), 300, what="the run to end")
        machines = _run_machines(aws, run_id)
        # The last machine writes its record, releases the lock, then ends itself through EC2.
        wait_until(lambda: all(instance_state(aws, m) == "terminated" for m in machines), 60,
                   what="every machine of the run terminated")
        assert run_cli(env, "--local", "verify-cleanup", timeout=120).returncode == 0
        print("OUTAGE", json.dumps({"outage": "everything", "agent_ended_after_s": round(ended_after, 1),
                                    "machines": len(machines), "failed_calls": proxy.failed_calls,
                                    **{k: proxy.stats[k] for k in ("calls", "retries", "exhausted", *FAILING_FAULTS)}}))
    assert record["final_status"] == "completed", record.get("error")
    lost = [i for i in record["interruptions"] if i["instance_id"] == first]
    assert len(lost) == 1 and lost[0]["notice"].startswith("none: the machine was lost without notice")
    assert record["attempt"] >= 2 and record["attempt"] == len(record["machines"])
    assert live_state(sandbox, BUCKET) is None


def _final(s3, run_id: str) -> dict | None:
    try:
        return get_json(s3, LAYOUT.final_record(run_id))
    except s3.exceptions.NoSuchKey:
        return None


def _run_machines(aws, run_id: str) -> list[str]:
    ec2 = client("ec2", aws)
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "tag:RunId", "Values": [run_id]}])
    return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]
