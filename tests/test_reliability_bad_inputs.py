"""Bad-input catalogue: every way a launch can be refused before it costs anything.

The real `chronos-train launch` runs as a subprocess. Each case must exit 2 with one sentence on
stderr (`error: ...`, no traceback, nothing on stdout) and change nothing: the same objects in
every bucket of the endpoint, no lock, no instance. tests/test_cli_basics.py already holds 13
cases (11 configs, an unparseable and a missing config file); the 32 here complete the catalogue
of docs/reliability.md, with the column roles (a run config's `columns:`). All run in `make test`:
none of them starts an agent.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from automation.sandbox import motoserver
from automation.sandbox.control import SandboxInfo, seed
from automation.sandbox.strictmoto import DEPLOYER
from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import bucket_name
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet
from tests.cli_helpers import bucket_keys, cli_env, instances_by_state, run_cli
from tests.conftest import administrator_shell

REGION = "us-east-1"
BUCKET = bucket_name("dev", "123456789012", REGION)
# Envs the sandbox was not seeded for: no bucket for stage; a bucket without infra.json for prod.
STAGE_BUCKET = bucket_name("stage", "123456789012", REGION)
PROD_BUCKET = bucket_name("prod", "123456789012", REGION)


@pytest.fixture(scope="module")
def sandbox(moto_endpoint):
    """One sandbox seeded for dev for the whole catalogue: every case must leave it as it found it,
    so later cases also check that no earlier refusal left anything behind."""
    motoserver.reset(moto_endpoint)
    seed(SandboxInfo(moto_endpoint, REGION, "123456789012", None), "dev")
    # As the deployer whatever this process's environment holds: an in-process CLI test run
    # before on the same xdist worker leaves it the operator's, who may not list buckets.
    return AwsTarget(region=REGION, endpoint_url=moto_endpoint, credentials=DEPLOYER.credentials)


@pytest.fixture
def env(sandbox, tmp_path):
    return cli_env(sandbox.endpoint_url, tmp_path / "home")


def snapshot(aws) -> dict:
    s3 = client("s3", aws)
    buckets = sorted(b["Name"] for b in s3.list_buckets().get("Buckets", []))
    return {"objects": {b: bucket_keys(s3, b) for b in buckets}, "instances": instances_by_state(client("ec2", aws))}


def write_config(tmp_path: Path, dataset: str, **changes) -> str:
    doc = run_config(dataset=dataset)
    for dotted, value in changes.items():
        section, key = dotted.split(".") if "." in dotted else (None, dotted)
        (doc[section] if section else doc)[key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def assert_refused(result, expected: str) -> str:
    """Exit 2, one sentence naming the problem, no traceback."""
    err = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and result.stdout == "", err + result.stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    return lines[0]


def assert_unchanged(before: dict, aws) -> None:
    after = snapshot(aws)
    assert after == before, "a refused launch changed the endpoint"
    assert not [k for keys in after["objects"].values() for k in keys if k.endswith("/system-state.json")]


# -- configs (beyond the 11 of test_cli_basics.py) -----------------------------------------------
CONFIGS = {
    "top-level typo": ({"datset": "cached-datasets/2026/11/"}, "datset: unknown key; remove it or check its spelling"),
    "negative steps": ({"training.num_steps": -5}, "training.num_steps: input should be greater than 0"),
    "section of the wrong type": ({"training": [8, 64]}, "training: Input should be a valid dictionary"),
    "spot not a boolean": ({"instance.spot": "sometimes"}, "instance.spot: Input should be a valid boolean"),
    "runtime below the minimum": ({"instance.max_runtime_minutes": 0}, "instance.max_runtime_minutes"),
}


@pytest.mark.parametrize("case", list(CONFIGS), ids=list(CONFIGS))
def test_bad_config(case, env, sandbox, tmp_path):
    changes, expected = CONFIGS[case]
    data = write_parquet(tmp_path / "data.parquet", synthetic_frame())
    before = snapshot(sandbox)
    assert_refused(run_cli(env, "--local", "launch", write_config(tmp_path, str(data), **changes)), expected)
    assert_unchanged(before, sandbox)


# The instance role reads its bucket's datasets and this env's run outputs, nothing else.
UNREADABLE = {
    "model in another bucket": ({"model": {"base": "s3://someone-elses-models/chronos/", "finetune_mode": "full"}},
                                "model.base s3://someone-elses-models/chronos/ is not where the run's machine may read"),
    "model of another env": ({"model": {"base": f"s3://{BUCKET}/stage/run-20261101-000000-abcd/models/",
                                        "finetune_mode": "full"}}, "model.base s3://"),
    "dataset in another bucket": ({"data": "s3://public-data/sales/"},
                                  "dataset s3://public-data/sales/ is not where the run's machine may read"),
}


@pytest.mark.parametrize("case", list(UNREADABLE), ids=list(UNREADABLE))
def test_s3_inputs_the_machine_cannot_read(case, env, sandbox, tmp_path):
    changes, expected = dict(UNREADABLE[case][0]), UNREADABLE[case][1]
    data = changes.pop("data", None) or str(write_parquet(tmp_path / "data.parquet", synthetic_frame()))
    before = snapshot(sandbox)
    line = assert_refused(run_cli(env, "--local", "launch", write_config(tmp_path, data, **changes)), expected)
    assert "copy it there first" in line
    assert_unchanged(before, sandbox)


PEFT_MISSING = "import sys\nsys.modules['peft'] = None  # as if peft were not installed: find_spec is None, import fails\n"


def test_lora_without_peft(env, sandbox, tmp_path):
    shim = tmp_path / "no-peft"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(PEFT_MISSING)
    config = write_config(tmp_path, str(write_parquet(tmp_path / "d.parquet", synthetic_frame())),
                          model={"base": "scratch:tiny", "finetune_mode": "lora"})
    before = snapshot(sandbox)
    result = run_cli({**env, "PYTHONPATH": str(shim)}, "--local", "launch", config)
    assert_refused(result, "lora needs the peft package, which is not installed; install peft or use finetune_mode: full")
    assert_unchanged(before, sandbox)
    # The shim alone made the difference: in that interpreter peft is not importable.
    seen = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('peft') is None)"],
                          env={**env, "PYTHONPATH": str(shim)}, capture_output=True, text=True, timeout=30)
    assert seen.stdout.strip() == "True"


# -- datasets given as a local path --------------------------------------------------------------
def _frame(**kw):
    return synthetic_frame(n_items=3, length=96, covariate=False, **kw)


def _not_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    _frame().to_csv(path, index=False)
    return path


def _folder_without_parquet(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    _frame().to_csv(folder / "sales.csv", index=False)
    return folder


def _empty(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "d.parquet", _frame().iloc[0:0])


def _missing_target(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "d.parquet", _frame().rename(columns={"target": "sales"}))


def _text_target(tmp_path: Path) -> Path:
    frame = _frame()
    frame["target"] = frame["target"].map(lambda v: f"{v:.1f} units")
    return write_parquet(tmp_path / "d.parquet", frame)


def _text_timestamps(tmp_path: Path) -> Path:
    frame = _frame()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%d/%m/%Y %H:%M")
    return write_parquet(tmp_path / "d.parquet", frame)


def _duplicate_timestamps(tmp_path: Path) -> Path:
    frame = _frame()
    frame.loc[frame.index[5], "timestamp"] = frame.loc[frame.index[4], "timestamp"]
    return write_parquet(tmp_path / "d.parquet", frame)


def _unsorted_timestamps(tmp_path: Path) -> Path:
    frame = _frame()
    first = frame["item_id"] == "item-1"
    frame.loc[first] = frame.loc[first].iloc[::-1].to_numpy()
    return write_parquet(tmp_path / "d.parquet", frame)


def _too_short(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "d.parquet", synthetic_frame(n_items=3, length=20, covariate=False))


def _all_nan(tmp_path: Path) -> Path:
    frame = _frame()
    frame.loc[frame["item_id"] == "item-2", "target"] = np.nan
    return write_parquet(tmp_path / "d.parquet", frame)


DATASETS = {
    "csv instead of parquet": (_not_parquet, "sales.csv: is not a readable parquet file"),
    "folder without parquet": (_folder_without_parquet, "exports holds no .parquet file"),
    "empty": (_empty, "d.parquet: has no rows"),
    "missing target": (_missing_target, "(column 'target'): required column is missing"),
    "non-numeric target": (_text_target, "(column 'target'): is the target and must be numeric, found"),
    "timestamps as text": (_text_timestamps, "(column 'timestamp'): must be a datetime column, found"),
    "duplicate timestamps": (_duplicate_timestamps, "(column 'timestamp', item 'item-0'): 1 duplicate timestamp(s)"),
    "unsorted timestamps": (_unsorted_timestamps,
                            "(column 'timestamp', item 'item-1'): timestamps are not in increasing order"),
    "series shorter than the context needs": (_too_short,
                                              "(column 'target', item 'item-0'): the series has 20 points but needs at least 48"),
    "all-NaN series": (_all_nan, "(column 'target', item 'item-2'): the target is NaN everywhere in this series"),
}


@pytest.mark.parametrize("case", list(DATASETS), ids=list(DATASETS))
def test_bad_local_dataset(case, env, sandbox, tmp_path):
    make, expected = DATASETS[case]
    config = write_config(tmp_path, str(make(tmp_path)))
    before = snapshot(sandbox)
    line = assert_refused(run_cli(env, "--local", "launch", config), expected)
    assert "dataset" in line
    assert_unchanged(before, sandbox)


# -- column roles (the run config's columns:) -----------------------------------------------------
def _with_weather(tmp_path: Path) -> Path:
    frame = synthetic_frame(n_items=3, length=96)
    frame["weather"] = np.where(frame.index % 2, "sun", "rain")
    return write_parquet(tmp_path / "d.parquet", frame)


def _known_gap_in_backtest(tmp_path: Path) -> Path:
    frame = synthetic_frame(n_items=3, length=96)
    frame.loc[frame.index[(frame["item_id"] == "item-1").to_numpy()][-3], "temperature"] = np.nan
    return write_parquet(tmp_path / "d.parquet", frame)


COLUMNS = {
    "a known covariate the data lacks": (_with_weather, {"known_covariates": ["price"]},
                                         "(column 'price'): the run config names it as a known covariate "
                                         "(columns.known_covariates) but the file has no such column"),
    "a target the data lacks": (_with_weather, {"target": "sales"},
                                "(column 'sales'): the run config names it as the target (columns.target)"),
    "a column in two roles": (_with_weather, {"target": "temperature", "known_covariates": ["temperature"]},
                              "columns: column 'temperature' is both a target and a known covariate; give each "
                              "column one role"),
    "a non-numeric target": (_with_weather, {"target": "weather"},
                             "(column 'weather'): is the target and must be numeric, found large_string"),
    "a known covariate missing in the backtest": (_known_gap_in_backtest, {"known_covariates": ["temperature"]},
                                                  "(column 'temperature', item 'item-1'): the known covariate is "
                                                  "missing at 1 of the last 24 points, which the backtest shows the model"),
}


@pytest.mark.parametrize("case", list(COLUMNS), ids=list(COLUMNS))
def test_bad_column_roles(case, env, sandbox, tmp_path):
    make, columns, expected = COLUMNS[case]
    config = write_config(tmp_path, str(make(tmp_path)), columns=columns)
    before = snapshot(sandbox)
    assert_refused(run_cli(env, "--local", "launch", config), expected)
    assert_unchanged(before, sandbox)


def test_a_bucket_dataset_without_a_named_column_is_refused_from_its_footers(env, sandbox, tmp_path):
    """A dataset already in the bucket: launch reads its parquet footers (ranged GETs, as the
    operator), so a misnamed column costs no machine."""
    from tests.agent_fixtures import parquet_bytes

    key = "cached-datasets/2026/11/footers/d.parquet"
    client("s3", sandbox).put_object(Bucket=BUCKET, Key=key, Body=parquet_bytes(synthetic_frame(n_items=3, length=96)))
    config = write_config(tmp_path, "cached-datasets/2026/11/footers/", columns={"known_covariates": ["price"]})
    before = snapshot(sandbox)
    assert_refused(run_cli(env, "--local", "launch", config),
                   f"dataset is not valid: s3://{BUCKET}/{key} (column 'price'): the run config names it as a known "
                   "covariate (columns.known_covariates) but the file has no such column")
    assert_unchanged(before, sandbox)


# -- environment ---------------------------------------------------------------------------------
def aws_env(env: dict, **changes: str) -> dict:
    """The real-AWS path (no --local, no sandbox): the CLI resolves the target as on a laptop of
    someone holding administrator credentials (the sandbox's deployer)."""
    out = {k: v for k, v in env.items() if k not in ("CHRONOS_SANDBOX_URL", "CHRONOS_LOCAL")}
    out.update(DEPLOYER.env())
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def run_on_aws(env: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """`run_cli` with `aws_env`'s shell: the one place a test hands the deployer's keys on."""
    with administrator_shell("the bad-input catalogue's real-AWS path: a person holding administrator keys"):
        return run_cli(env, *args, **kwargs)


NO_CREDENTIALS = dict(
    AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_SESSION_TOKEN=None, AWS_PROFILE=None,
    AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true",
    AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=None, AWS_CONTAINER_CREDENTIALS_FULL_URI=None, AWS_WEB_IDENTITY_TOKEN_FILE=None,
)


@pytest.mark.parametrize("bucket_known", [False, True], ids=["bucket looked up", "bucket from CHRONOS_BUCKET"])
def test_no_credentials(bucket_known, env, sandbox, tmp_path):
    """Looked up: the STS call is refused; known: the first S3 call is. Same sentence either way."""
    config = write_config(tmp_path, "cached-datasets/2026/11/")
    known = dict(CHRONOS_BUCKET=BUCKET, AWS_ENDPOINT_URL=sandbox.endpoint_url) if bucket_known else {}
    before = snapshot(sandbox)
    result = run_on_aws(aws_env(env, **NO_CREDENTIALS, **known), "launch", config, timeout=60)
    assert_refused(result, "no valid AWS credentials found; run `aws configure` (or set AWS_PROFILE), or use --local")
    assert_unchanged(before, sandbox)


def test_no_region(env, sandbox, tmp_path):
    config = write_config(tmp_path, "cached-datasets/2026/11/")
    before = snapshot(sandbox)
    result = run_on_aws(aws_env(env, AWS_DEFAULT_REGION=None, AWS_REGION=None, AWS_CONFIG_FILE="/nonexistent"),
                     "launch", config, timeout=60)
    assert_refused(result, "no AWS region configured; set AWS_REGION or run `aws configure`, or use --local")
    assert_unchanged(before, sandbox)


def test_infrastructure_not_deployed_no_bucket(env, sandbox, tmp_path):
    config = write_config(tmp_path, "cached-datasets/2026/11/")
    before = snapshot(sandbox)
    assert STAGE_BUCKET not in before["objects"]
    result = run_on_aws(aws_env(env, AWS_ENDPOINT_URL=sandbox.endpoint_url, CHRONOS_BUCKET=STAGE_BUCKET),
                     "--env", "stage", "launch", config)
    assert_refused(result, f"infrastructure for env stage is not deployed (no bucket {STAGE_BUCKET}); run `pulumi up` first")
    assert_unchanged(before, sandbox)


def test_infrastructure_not_deployed_no_infra_record(env, sandbox, tmp_path):
    s3 = client("s3", sandbox)
    if PROD_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=PROD_BUCKET)  # a bucket, but no stack ever wrote prod/infra.json
    config = write_config(tmp_path, "cached-datasets/2026/11/")
    before = snapshot(sandbox)
    result = run_on_aws(aws_env(env, AWS_ENDPOINT_URL=sandbox.endpoint_url, CHRONOS_BUCKET=PROD_BUCKET),
                     "--env", "prod", "launch", config)
    assert_refused(result, f"infrastructure for env prod is not deployed (no prod/infra.json in bucket {PROD_BUCKET})")
    assert_unchanged(before, sandbox)


@pytest.mark.parametrize("how", ["--env", "CHRONOS_ENV"])
def test_unknown_environment_name(how, env, sandbox, tmp_path):
    config = write_config(tmp_path, str(write_parquet(tmp_path / "d.parquet", synthetic_frame())))
    args = ["--env", "qa", "--local", "launch", config] if how == "--env" else ["--local", "launch", config]
    run_env = {**env, "CHRONOS_ENV": "qa"} if how == "CHRONOS_ENV" else env
    before = snapshot(sandbox)
    assert_refused(run_cli(run_env, *args), "unknown environment 'qa'; use one of: dev, stage, prod")
    assert_unchanged(before, sandbox)

