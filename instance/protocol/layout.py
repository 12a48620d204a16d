"""Every S3 key and the bucket name, computed in one place."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

PROJECT_TAG = "Chronos-Training"
KNOWN_ENVS = ("dev", "stage", "prod")
DATASETS_PREFIX = "cached-datasets/"
PYTHON_ENV_PREFIX = "cached-datasets/python-env/"

RUN_ID_RE = re.compile(r"^run-\d{8}-\d{6}-[0-9a-f]{4}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")  # us-east-1, ap-southeast-2, us-gov-west-1
_MONTH_RE = re.compile(r"^\d{4}/(0[1-9]|1[0-2])$")


class LayoutError(ValueError):
    """A name that cannot be part of the layout (bad env, run id or month)."""


def bucket_name(env: str, account: str, region: str) -> str:
    check_env(env)
    return f"chronos-training-{env}-{account}-{region}"


def check_env(env: str) -> str:
    if env not in KNOWN_ENVS:
        raise LayoutError(f"unknown environment {env!r}; use one of: {', '.join(KNOWN_ENVS)}")
    return env


def is_region_name(region: str | None) -> bool:
    return bool(REGION_RE.match(region or ""))


def new_run_id(now: datetime | None = None) -> str:
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"run-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id or ""):
        raise LayoutError(
            f"{run_id!r} is not a run id; run ids look like run-20261128-203700-1a2b "
            "(see `chronos-train runs`)"
        )
    return run_id


def run_started_at(run_id: str) -> datetime:
    return datetime.strptime(check_run_id(run_id)[4:19], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)


def dataset_prefix(month: str) -> str:
    if not _MONTH_RE.match(month):
        raise LayoutError(f"month {month!r} must look like YYYY/MM, for example 2026/11")
    return f"{DATASETS_PREFIX}{month}/"


@dataclass(frozen=True)
class Layout:
    """The keys of one environment; run-scoped keys take the run id."""

    env: str

    def __post_init__(self) -> None:
        check_env(self.env)

    @property
    def infra(self) -> str:
        return f"{self.env}/infra.json"

    @property
    def state(self) -> str:
        return f"{self.env}/system-state.json"

    @property
    def logs_root(self) -> str:
        return f"{self.env}/logs/"

    @property
    def pulumi_prefix(self) -> str:
        return f"{self.env}/pulumi/"

    def logs(self, run_id: str) -> str:
        return f"{self.env}/logs/{check_run_id(run_id)}/"

    def training_record(self, run_id: str) -> str:
        """The run's record while it runs and after: logs/ expires after 14 days."""
        return self.logs(run_id) + "training.json"

    def final_record(self, run_id: str) -> str:
        """A copy of the run's final record beside its outputs, so history lasts as long as the
        model (run-* expires after 60 days, logs/ after 14)."""
        return self.run_root(run_id) + "training.json"

    def cleanup_status(self, run_id: str) -> str:
        return self.logs(run_id) + "cleanup_status.json"

    def agent_log(self, run_id: str) -> str:
        return self.logs(run_id) + "agent.log"

    def bootstrap_log(self, run_id: str) -> str:
        """The machine's own log, from boot to the agent's start (instance/boot/bootstrap.sh)."""
        return self.logs(run_id) + "bootstrap.log"

    def boot_failure(self, run_id: str) -> str:
        """Written by a machine that could not start its agent (instance/protocol/bootfailure.py)."""
        return self.logs(run_id) + "boot_failure.json"

    def run_root(self, run_id: str) -> str:
        return f"{self.env}/{check_run_id(run_id)}/"

    def run_config(self, run_id: str) -> str:
        return self.run_root(run_id) + "run.yaml"

    def bundle(self, run_id: str) -> str:
        return self.run_root(run_id) + "bundle.tar.gz"

    def models(self, run_id: str) -> str:
        return self.run_root(run_id) + "models/"

    def checkpoints(self, run_id: str) -> str:
        return self.run_root(run_id) + "checkpoints/"

    def model_metadata(self, run_id: str) -> str:
        return self.run_root(run_id) + "model_metadata.json"

    def evaluation(self, run_id: str) -> str:
        """Backtest forecasts, per-series scores, loss history (instance/model/evaluation.py)."""
        return self.run_root(run_id) + "evaluation/"

    def sweep(self, run_id: str) -> str:
        """A sweep's Optuna journal and its trials' models (instance/agent/sweep.py)."""
        return self.run_root(run_id) + "sweep/"

    def sweep_journal(self, run_id: str) -> str:
        return self.sweep(run_id) + "journal.log"

    def sweep_trial(self, run_id: str, number: int) -> str:
        return self.sweep(run_id) + f"trials/{number}/"

    def forecasts(self, run_id: str) -> str:
        """The future forecast of every series and what it was made from (instance/model/forecasting.py)."""
        return self.run_root(run_id) + "forecasts/"

    def forecast_file(self, run_id: str) -> str:
        return self.forecasts(run_id) + "forecast.parquet"

    def forecast_info(self, run_id: str) -> str:
        return self.forecasts(run_id) + "forecast.json"

    def forecast_history(self, run_id: str) -> str:
        """The last points of a few series, for the report's fan charts of the future."""
        return self.forecasts(run_id) + "history.parquet"

    def forecast_sample(self, run_id: str) -> str:
        """forecast.parquet's rows of those few series: what the report draws, without the rest."""
        return self.forecasts(run_id) + "sample.parquet"

    def forecast_future(self, run_id: str) -> str:
        """Where launch puts a local `forecast.future` file: the run reads it from its own prefix."""
        return self.forecasts(run_id) + "future/"


PYTHON_ENV_FORMATS = ("zst", "gz")


def python_env_key(python_build: str, arch: str, requirements_hash: str, tarball_format: str) -> str:
    """The cached interpreter + venv for one Python build (cpython-3.11.18), one machine
    architecture, one requirements file (sha256, first 16 hex digits) and one tarball format:
    zst where the machine has zstd, gz where it has not, so that a machine only ever asks for a
    tarball it can unpack. instance/boot/environment.sh computes the same name in bash."""
    if tarball_format not in PYTHON_ENV_FORMATS:
        raise ValueError(f"tarball format {tarball_format!r}: use one of {', '.join(PYTHON_ENV_FORMATS)}")
    return f"{PYTHON_ENV_PREFIX}chronos-env-{python_build}-{arch}-{requirements_hash}.tar.{tarball_format}"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
