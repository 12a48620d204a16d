"""The lock race through the real CLI: 16 `chronos-train --local launch` processes at once.

A loopback proxy (tests/faultproxy.py, no faults) holds the 16 conditional creates of the lock
until all have arrived and then lets them reach moto together, so every round is a real race
on `If-None-Match: *`. Each round: exactly one launch wins; the 15 others exit 3 and name the
winner; EC2 holds one new instance (the winner's), the bucket one new run prefix (the
winner's) and no new dataset object; then `kill --force` ends the winner and verify-cleanup
exits 0.
"""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from automation.sandbox import motoserver
from automation.sandbox.control import REGION, SandboxInfo, seed
from instance.protocol.aws import client
from instance.protocol.layout import DATASETS_PREFIX, PROJECT_TAG, Layout, bucket_name
from tests.agent_fixtures import DATA_PREFIX, get_json, keys_under, parquet_bytes, run_config, synthetic_frame, write_parquet
from tests.cli_helpers import cli_env, run_cli, start_cli
from tests.faultproxy import CONFLICT, FaultProxy

ENV = "dev"
BUCKET = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
LAYOUT = Layout(ENV)
CONTENDERS = 16
ROUND_TIMEOUT_S = 240  # 16 CLI processes on 2 cores start in ~20 s; anything near this is a hang
BUSY = re.compile(r"another run holds the lock: (run-\d{8}-\d{6}-[0-9a-f]{4})")


@pytest.fixture
def race(aws, tmp_path):
    """Seeded sandbox with one dataset in the bucket, reached through a (fault-free) proxy."""
    seed(SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), ENV)
    s3 = client("s3", aws)
    s3.put_object(Bucket=BUCKET, Key=DATA_PREFIX + "train.parquet", Body=parquet_bytes(synthetic_frame(4, 96)))
    with FaultProxy(aws.endpoint_url) as proxy:
        # The agent idles in initialization (answering kills) so the winner holds the lock all round.
        env = cli_env(proxy.url, tmp_path / "home", CHRONOS_PAUSE="initialization:300", CHRONOS_HEARTBEAT_SECONDS="1")
        yield proxy, env, s3, client("ec2", aws)


def write_config(path, dataset: str) -> str:
    path.write_text(yaml.safe_dump(run_config(dataset=dataset)))
    return str(path)


def project_instances(ec2) -> dict[str, str]:
    """instance id -> RunId tag of every instance tagged with the project."""
    resp = ec2.describe_instances(Filters=[{"Name": "tag:Project", "Values": [PROJECT_TAG]}])
    return {i["InstanceId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get("RunId")
            for r in resp["Reservations"] for i in r["Instances"]}


def run_prefixes(s3) -> set[str]:
    """Run ids that own anything in the bucket: {env}/run-…/ and {env}/logs/run-…/."""
    found = set()
    for key in keys_under(s3, BUCKET, f"{ENV}/"):
        parts = key.split("/")
        found |= {p for p in parts[1:3] if p.startswith("run-")}
    return found


def dataset_puts(proxy) -> int:
    """PUT requests (uploads) under cached-datasets/ that went through the proxy so far."""
    return sum(n for (method, path), n in proxy.seen.items() if method == "PUT" and "/" + DATASETS_PREFIX in path)


def contend(proxy, env, config: str, cwd) -> tuple[str, list[subprocess.CompletedProcess]]:
    """16 launches at once; returns the winner's run id and every launch's result."""
    gated = proxy.stats["gated"]
    proxy.gate(CONTENDERS, timeout=ROUND_TIMEOUT_S / 2, path=LAYOUT.state, method="PUT", header="If-None-Match")
    procs = [start_cli(env, "--local", "launch", config, cwd=cwd) for _ in range(CONTENDERS)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=ROUND_TIMEOUT_S)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert proxy.stats["gated"] - gated == CONTENDERS and proxy.stats["gate_timeouts"] == 0, \
        "not every launch reached the lock together"
    codes = sorted(r.returncode for r in results)
    assert codes == [0] + [3] * (CONTENDERS - 1), [r.stderr[-500:] for r in results if r.returncode not in (0, 3)]
    winner = next(r for r in results if r.returncode == 0).stdout.splitlines()[0]
    named = {m.group(1) for r in results if r.returncode == 3 for m in [BUSY.search(r.stderr)] if m}
    assert named == {winner}, [r.stderr for r in results if r.returncode == 3][:2]
    assert all(BUSY.search(r.stderr) for r in results if r.returncode == 3)
    return winner, results


def race_round(race, tmp_path, config: str) -> dict:
    proxy, env, s3, ec2 = race
    instances_before, runs_before = project_instances(ec2), run_prefixes(s3)
    datasets_before = set(keys_under(s3, BUCKET, DATASETS_PREFIX))
    puts_before = dataset_puts(proxy)

    winner, _ = contend(proxy, env, config, tmp_path)

    new_instances = {i: r for i, r in project_instances(ec2).items() if i not in instances_before}
    assert list(new_instances.values()) == [winner], new_instances
    assert run_prefixes(s3) - runs_before == {winner}
    assert not keys_under(s3, BUCKET, f"{ENV}/pulumi/")  # no run stack anywhere
    new_datasets = set(keys_under(s3, BUCKET, DATASETS_PREFIX)) - datasets_before
    puts = dataset_puts(proxy) - puts_before

    killed = run_cli(env, "--local", "kill", winner, "--force", timeout=120)
    assert killed.returncode == 0, killed.stderr
    clean = run_cli(env, "--local", "verify-cleanup", timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not keys_under(s3, BUCKET, LAYOUT.state)
    assert get_json(s3, BUCKET, LAYOUT.training_record(winner))["final_status"] == "killed"
    return {"winner": winner, "new_datasets": new_datasets, "dataset_puts": puts}


@pytest.mark.reliability  # make test runs the same race through 20 % 409s (below)
def test_sixteen_launches_one_winner(race, tmp_path):
    outcome = race_round(race, tmp_path, write_config(tmp_path / "run.yaml", DATA_PREFIX))
    assert outcome["new_datasets"] == set() and outcome["dataset_puts"] == 0


@pytest.mark.reliability
def test_sixteen_launches_over_rounds_bucket_and_local_dataset(race, tmp_path):
    from_bucket = write_config(tmp_path / "bucket.yaml", DATA_PREFIX)
    data = write_parquet(tmp_path / "data" / "local.parquet", synthetic_frame(4, 96, seed=3))
    from_file = write_config(tmp_path / "local.yaml", str(data))
    winners = set()
    for n in range(5):
        outcome = race_round(race, tmp_path, from_bucket)
        assert outcome["new_datasets"] == set() and outcome["dataset_puts"] == 0
        winners.add(outcome["winner"])
        print(f"RACE round {n + 1} (bucket dataset): winner {outcome['winner']}, 15 x exit 3, dataset PUTs 0")
    # A local dataset: only the winner uploads it (losers fail at the lock, before any upload);
    # content-addressed, so a later winner re-uses the same objects.
    for n in range(2):
        outcome = race_round(race, tmp_path, from_file)
        winners.add(outcome["winner"])
        assert outcome["dataset_puts"] == (1 if n == 0 else 0), outcome
        assert len(outcome["new_datasets"]) == (1 if n == 0 else 0), outcome
        print(f"RACE round {n + 6} (local dataset): winner {outcome['winner']}, 15 x exit 3, "
              f"dataset PUTs {outcome['dataset_puts']}")
    assert len(winners) == 7


@pytest.mark.parametrize("rounds", [pytest.param(1, id="1-round"),
                                    pytest.param(5, id="5-rounds", marks=pytest.mark.reliability)])
def test_sixteen_launches_one_winner_through_20_percent_409s(race, tmp_path, rounds):
    """Real S3 answers 409 when conditional writes on one key race (moto never does): every
    conditional write of the lock, the 16 creates included, meets one 20 % of the time. Still one
    winner and 15 exit 3; the winner's run then lives, is killed and cleaned through 409s too."""
    proxy = race[0]
    proxy.configure(rate=0.2, faults=(CONFLICT,), paths=(LAYOUT.state,), seed=409)
    config = write_config(tmp_path / "run.yaml", DATA_PREFIX)
    for n in range(rounds):
        before, writes = proxy.stats[CONFLICT], proxy.stats["conditional_writes"]
        outcome = race_round(race, tmp_path, config)
        print(f"RACE409 round {n + 1}: winner {outcome['winner']}, 15 x exit 3, 409s injected "
              f"{proxy.stats[CONFLICT] - before} of {proxy.stats['conditional_writes'] - writes} conditional writes "
              "(the lock's creates, moves, heartbeats, kill and release)")
    assert proxy.stats[CONFLICT] > 0
