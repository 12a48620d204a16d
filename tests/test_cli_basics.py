"""CLI against moto over HTTP, without training: sandbox, bad input, the lock, verify-cleanup."""
from __future__ import annotations

import json
import os

import pytest
import yaml
from click.testing import CliRunner

from automation.cli.main import cli
from automation.sandbox.control import SandboxInfo, seed
from instance.protocol.aws import client
from instance.protocol.layout import bucket_name
from instance.protocol.state import StateStore
from tests.cli_helpers import cli_env, run_cli

BUCKET = bucket_name("dev", "123456789012", "us-east-1")


@pytest.fixture
def env(aws, tmp_path):
    return cli_env(aws.endpoint_url, tmp_path / "home")


@pytest.fixture
def seeded(env, aws):
    """The sandbox seeded for dev (bucket, infra.json, VPC...), as any --local command would."""
    seed(SandboxInfo(aws.endpoint_url, aws.region, "123456789012", None), "dev")
    return client("s3", aws)


@pytest.fixture
def invoke(env, monkeypatch):
    """The CLI in-process (CliRunner) with the same environment as the subprocess runs."""
    for name in [n for n in os.environ if n.startswith("CHRONOS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(("CHRONOS_", "AWS_")):
            monkeypatch.setenv(name, value)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args))


def _keys(s3) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


def _instances(aws) -> list:
    resp = client("ec2", aws).describe_instances()
    return [i for r in resp["Reservations"] for i in r["Instances"]]


def _config(tmp_path, **overrides) -> str:
    doc = {
        "dataset": "cached-datasets/2026/11/",
        "model": {"base": "scratch:tiny"},
        "training": {"prediction_length": 4, "context_length": 16, "num_steps": 5, "batch_size": 8},
        "instance": {"type": "g4dn.xlarge", "max_runtime_minutes": 10},
    }
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_sandbox_status_json_names_endpoint_region_bucket(env, seeded, aws):
    result = run_cli(env, "--local", "sandbox", "status", "--json")
    doc = json.loads(result.stdout)
    assert doc["endpoint_url"] == aws.endpoint_url and doc["region"] == "us-east-1" and doc["bucket"] == BUCKET
    infra = json.loads(seeded.get_object(Bucket=BUCKET, Key="dev/infra.json")["Body"].read())
    assert set(infra["subnets"]) == {"us-east-1a", "us-east-1b"} and infra["security_group_id"].startswith("sg-")


def test_monitor_without_runs_says_so(env, seeded):
    result = run_cli(env, "--local", "monitor", "--json")
    assert result.returncode == 2
    assert "no run has been launched" in result.stderr and "Traceback" not in result.stderr


def test_verify_cleanup_on_clean_sandbox_exits_0(env, seeded):
    result = run_cli(env, "--local", "verify-cleanup", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["clean"] and doc["storage"]["runs_and_logs_usd_per_month"] < 0.05


BAD_CONFIGS = {
    "unknown key": ({"training.epochs": 3}, "training.epochs: unknown key"),
    "wrong type": ({"training.num_steps": "many"}, "training.num_steps"),
    "zero steps": ({"training.num_steps": 0}, "training.num_steps"),
    "negative lr": ({"training.learning_rate": -1}, "training.learning_rate"),
    "prediction > context": ({"training.prediction_length": 64}, "must not exceed context_length"),
    "unknown instance type": ({"instance.type": "g9.huge"}, "known: g4dn.xlarge"),
    "bad finetune mode": ({"model.finetune_mode": "qlora"}, "'full' or 'lora'"),
    "bad scratch size": ({"model.base": "scratch:huge"}, "scratch size must be one of"),
    "gpus above the type's": ({"instance.gpus": 4}, "g4dn.xlarge has 1 GPU (1x T4 16 GB), so gpus must be auto or at most 1"),
    "gpus not a number": ({"instance.gpus": "all"}, "instance.gpus: must be auto or a whole number of GPUs"),
    "batch not split evenly": ({"instance.type": "g5.12xlarge", "training.batch_size": 18},
                               "training.batch_size (18) must be a multiple of the 4 GPUs"),
    "missing dataset": ({"dataset": None}, "dataset: required"),
    "missing prefix": ({"dataset": "cached-datasets/1999/01/"}, "holds no .parquet file"),
    "missing local file": ({"dataset": "/nonexistent/data.parquet"}, "neither a local file"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_sentence_and_no_side_effect(case, invoke, seeded, aws, tmp_path):
    overrides, expected = BAD_CONFIGS[case]
    before = _keys(seeded)
    result = invoke("--local", "launch", _config(tmp_path, **overrides))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output and result.output.count("\n") <= 2
    assert _keys(seeded) == before  # no lock, no run prefix, no dataset upload
    assert _instances(aws) == []


def test_unparseable_and_missing_config_files(invoke, seeded, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    result = invoke("--local", "launch", str(bad))
    assert result.exit_code == 2 and "not valid YAML at line" in result.output
    result = invoke("--local", "launch", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2 and "no such config file" in result.output


def test_second_launch_while_locked_exits_3_and_names_holder(env, seeded, aws, tmp_path):
    from tests.agent_fixtures import parquet_bytes, synthetic_frame

    # A real parquet file: launch reads a bucket dataset's footers before it takes the lock.
    seeded.put_object(Bucket=BUCKET, Key="cached-datasets/2026/11/d.parquet",
                      Body=parquet_bytes(synthetic_frame(n_items=2, length=64)))
    holder = StateStore(seeded, BUCKET, "dev").acquire("run-20261128-090000-abcd")
    before = _keys(seeded)
    result = run_cli(env, "--local", "launch", _config(tmp_path))
    assert result.returncode == 3, result.stderr
    assert holder.run_id in result.stderr and "initialization" in result.stderr
    assert _keys(seeded) == before and _instances(aws) == []


def test_monitor_and_runs_never_import_torch_chronos_or_pulumi(env, seeded):
    import subprocess
    import sys

    StateStore(seeded, BUCKET, "dev").acquire("run-20261128-090000-abcd", executor="local")
    for args in (("monitor", "--json"), ("runs", "--json"), ("verify-cleanup", "--json")):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "automation.cli", "--local", *args],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode in (0, 6), proc.stderr[-500:]
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        heavy = {m for m in imported if m.split(".")[0] in ("torch", "chronos", "pulumi", "pulumi_aws", "transformers")}
        assert not heavy, f"{args}: {sorted(heavy)[:5]}"


def test_data_validate_upload_and_ls(invoke, seeded, tmp_path):
    from tests.agent_fixtures import synthetic_frame, write_parquet

    good = write_parquet(tmp_path / "good" / "sales.parquet", synthetic_frame(n_items=3, length=64))
    result = invoke("data", "validate", str(good))
    assert result.exit_code == 0 and "ok: 1 file(s), 3 series, 192 rows" in result.output
    # Each column's role and type, one aligned line each.
    assert "  target       target          numeric (double)" in result.output
    assert "  temperature  past covariate  numeric (double)" in result.output
    config = tmp_path / "run.yaml"
    config.write_text("dataset: x\ncolumns: {known_covariates: [temperature]}\n"
                      "training: {prediction_length: 8, context_length: 32}\n")
    result = invoke("data", "validate", str(good), "--config", str(config))
    assert result.exit_code == 0 and "  temperature  known covariate  numeric (double)" in result.output
    config.write_text("dataset: x\ncolumns: {known_covariates: [price]}\n")
    result = invoke("data", "validate", str(good), "--config", str(config))
    assert result.exit_code == 2 and "(column 'price'): the run config names it as a known covariate" in result.output

    bad = write_parquet(tmp_path / "bad" / "sales.parquet", synthetic_frame(n_items=2, length=64).drop(columns="target"))
    result = invoke("data", "validate", str(bad))
    assert result.exit_code == 2 and "target" in result.output and "Traceback" not in result.output

    assert invoke("--local", "data", "upload", str(good), "--month", "2026-11").exit_code == 2
    before = _keys(seeded)
    assert invoke("--local", "data", "upload", str(bad), "--month", "2026/11").exit_code == 2
    assert _keys(seeded) == before

    result = invoke("--local", "data", "upload", str(good), "--month", "2026/11")
    assert result.exit_code == 0, result.output
    prefix = result.output.splitlines()[0].strip()[len(f"s3://{BUCKET}/"):]
    assert prefix.startswith("cached-datasets/2026/11/sales-") and prefix.endswith("/")
    assert f"{prefix}sales.parquet" in _keys(seeded) and f"`dataset: {prefix}`" in result.output
    again = invoke("--local", "data", "upload", str(good), "--month", "2026/11")  # same content, same place
    assert again.exit_code == 0 and again.output.startswith(result.output.splitlines()[0]) and "1 already there" in again.output
    listing = invoke("--local", "data", "ls", "--json")
    assert f'"prefix": "{prefix}"' in listing.output


def test_an_ambiguous_dataset_prefix_is_refused_at_launch(invoke, seeded, aws, tmp_path):
    """Two datasets uploaded the same month: the month is not a dataset, launch says which are."""
    from tests.agent_fixtures import parquet_bytes, synthetic_frame

    body = parquet_bytes(synthetic_frame(n_items=3, length=64))
    for name in ("sales-1a2b3c4d", "traffic-9f8e7d6c"):
        seeded.put_object(Bucket=BUCKET, Key=f"cached-datasets/2026/11/{name}/part-0.parquet", Body=body)
    before = _keys(seeded)
    result = invoke("--local", "launch", _config(tmp_path, dataset="cached-datasets/2026/11/"))
    assert result.exit_code == 2, result.output
    assert "holds no parquet file of its own but 2 dataset folder(s) below it (sales-1a2b3c4d/, traffic-9f8e7d6c/)" \
        in result.output and result.output.count("\n") <= 2
    assert _keys(seeded) == before and _instances(aws) == []
