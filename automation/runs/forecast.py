"""`chronos-train forecast MODEL DATA`: forecasts on this machine from a run's model, a model
folder on disk or a pretrained base, written to one file.

Everything that can be refused is refused before the model is loaded and before anything is
written (BadInput: exit 2, one sentence): an unknown run or a run without a model, data whose
columns do not match the roles the model recorded (model_metadata.json), future values that do
not fit, series too short, a frequency that cannot be inferred. The forecast itself is the run's
own (instance/model/forecasting.py), so a run's forecast.parquet and this command's output agree.

A run's model is fetched once into the CLI's home (`models/{env}/{run_id}/`, with the run's
model_metadata.json) and read from there afterwards: a finished run's model never changes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from instance.protocol.artifacts import write_json_atomic
from instance.protocol.columns import ColumnNames, ColumnRoles
from instance.protocol.layout import RUN_ID_RE

from ..errors import BadInput, NoSuchRun
from ..settings import home

COMPLETE = ".complete.json"  # written last into a fetched model's folder: the fetch finished
DEFAULT_PREDICTION_LENGTH = 24  # for a model without a run's config (a pretrained base)
BASE_CONTEXT = 2048  # what a pretrained model reads back at most (Chronos-2's own limit)


@dataclass
class ModelChoice:
    """What MODEL named: where the pipeline loads from, and what its run recorded (if anything)."""

    source: str  # a folder on disk, or a hub id / scratch:<size>
    label: str  # what forecast.json says the model was
    metadata: dict[str, Any] | None = None

    @property
    def roles(self) -> ColumnRoles | None:
        doc = (self.metadata or {}).get("columns")
        return ColumnRoles.from_json(doc) if doc else None

    @property
    def training(self) -> dict[str, Any]:
        return ((self.metadata or {}).get("config") or {}).get("training") or {}


@dataclass
class ForecastDone:
    out: Path
    info: dict[str, Any] = field(default_factory=dict)


def resolve_model(model: str, target_of: Callable[[], Any]) -> ModelChoice:
    """A run id (its model fetched into the home once), a local model folder, or a base name."""
    if RUN_ID_RE.match(model):
        return _run_model(target_of(), model)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInput(f"{path} is not a model folder (it has no config.json); name a run id, a folder a run saved "
                           "or a pretrained model such as amazon/chronos-2")
        meta = next((p for p in (path / "model_metadata.json", path.parent / "model_metadata.json") if p.is_file()), None)
        return ModelChoice(str(path), str(path.resolve()), json.loads(meta.read_text()) if meta else None)
    from instance.protocol.runconfig import ConfigError, ModelSpec

    try:
        ModelSpec(base=model)
    except (ConfigError, ValueError):
        raise BadInput(f"model {model!r} is neither a run id, a model folder on this disk nor a pretrained model "
                       "(amazon/chronos-2)") from None
    return ModelChoice(model, model)


def run_metadata(target, run_id: str) -> dict[str, Any]:
    """A run's model_metadata.json, or NoSuchRun / BadInput (a run that left no model)."""
    from instance.protocol.artifacts import get_json

    from .records import read_record

    meta = get_json(target.s3, target.bucket, target.layout.model_metadata(run_id))
    if meta is None:
        record = read_record(target, run_id)
        if record is None:
            raise NoSuchRun(f"no run {run_id} in {target.env}; `chronos-train runs` lists them")
        raise BadInput(f"run {run_id} has no model (it ended {record.get('final_status') or 'without finishing'}); "
                       "forecast from a completed run")
    return meta


def _run_model(target, run_id: str) -> ModelChoice:
    from instance.protocol.transfer import Download, download_files

    folder = home() / "models" / target.env / run_id
    if (folder / COMPLETE).is_file():
        return ModelChoice(str(folder / "model"), f"s3://{target.bucket}/{target.layout.models(run_id)}",
                           json.loads((folder / "model_metadata.json").read_text()))
    layout = target.layout
    meta = run_metadata(target, run_id)
    prefix = layout.models(run_id)
    pages = target.s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix)
    items = [Download(o["Key"], o["Size"], o["ETag"].strip('"'), folder / "model" / o["Key"][len(prefix):])
             for page in pages for o in page.get("Contents", [])]
    if not items:
        raise BadInput(f"run {run_id} has no model files under s3://{target.bucket}/{prefix} (deleted by the bucket's "
                       "60-day rule?)")
    download_files(target.s3, target.bucket, items)
    write_json_atomic(folder / "model_metadata.json", meta)
    write_json_atomic(folder / COMPLETE, {"files": [i.key for i in items]})
    return ModelChoice(str(folder / "model"), f"s3://{target.bucket}/{prefix}", meta)


def data_files(data: str, target_of: Callable[[], Any], what: str = "data") -> tuple[list[Path], str, str]:
    """(files, where they came from, fingerprint): a local file or folder, or a dataset prefix in
    the bucket (synced into the home once, and again only where it changed)."""
    from instance.protocol.datasets import DatasetError, fingerprint, local_dataset, local_fingerprint
    from instance.protocol.layout import DATASETS_PREFIX

    if data.startswith(DATASETS_PREFIX) or data.startswith("s3://"):
        from instance.model.datasync import sync_prefix

        target = target_of()
        bucket, prefix = (data[5:].partition("/")[::2]) if data.startswith("s3://") else (target.bucket, data)
        try:
            report = sync_prefix(target.s3, bucket, prefix, home() / "data" / bucket / prefix.strip("/"))
        except DatasetError as exc:
            raise BadInput(f"{what}: {exc}") from None
        return report.files, report.dataset.uri, fingerprint(report.remote)
    try:
        dataset = local_dataset(Path(data).expanduser())
    except DatasetError as exc:
        raise BadInput(f"{what}: {exc}") from None
    return dataset.files, str(dataset.root.resolve()), local_fingerprint(dataset.files)[0]


def _roles_of(files: list[Path], model: ModelChoice, future: list[Path] | None, where: str) -> ColumnRoles:
    """The data's roles as the model has them, or BadInput. A model without recorded roles (a
    pretrained base) takes the long format's names, the future file's columns as known covariates
    and every other column as past-only, as predict_df does."""
    import pyarrow.parquet as pq

    from instance.model.dataset import validate_dataset
    from instance.model.forecasting import ForecastInputError, check_roles

    trained = model.roles
    if trained is not None:
        names = ColumnNames(trained.id, trained.timestamp, tuple(trained.targets), tuple(trained.known_covariates))
    else:
        known = []
        if future:
            base = ColumnNames()
            known = [c for c in pq.read_schema(future[0]).names if c not in (base.id, base.timestamp)]
        names = ColumnNames(known_covariates=tuple(known))
    checked = validate_dataset(files, columns=names)
    if checked.problems:
        raise BadInput(f"{where} is not valid: {checked.problems[0]}")
    if trained is None:
        return checked.roles
    try:
        check_roles(checked.roles, trained, where)
    except ForecastInputError as exc:
        raise BadInput(str(exc)) from None
    return trained


def forecast_to_file(model: str, data: str, *, target_of: Callable[[], Any], future: str | None = None,
                     out: Path = Path("forecast.parquet"), quantiles: str | None = None,
                     prediction_length: int | None = None, batch_size: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> ForecastDone:
    """The whole command: checks, the model loaded (torch from here on), the forecast, one file
    written (parquet, or CSV by the name's extension) by rename, so a failure leaves nothing."""
    from instance.model.forecasting import BATCH_SIZE, QUANTILE_LEVELS, ForecastInputError, check_quantiles

    check_out(out)
    try:  # --quantiles as typed: "0.05,0.5,0.95" (or spaces)
        levels = check_quantiles(quantiles.replace(",", " ").split(), "--quantiles") if quantiles else QUANTILE_LEVELS
    except ForecastInputError as exc:
        raise BadInput(str(exc)) from None
    choice = resolve_model(model, target_of)
    files, source, fp = data_files(data, target_of)
    future_files = data_files(future, target_of, "--future")[0] if future else None
    roles = _roles_of(files, choice, future_files, _name(data))
    if future_files and not roles.known_covariates:
        raise BadInput(f"--future {future}: the model takes no known covariates, so it has no use for future values; "
                       "leave --future out")
    h = prediction_length or choice.training.get("prediction_length") or DEFAULT_PREDICTION_LENGTH
    context = choice.training.get("context_length")
    started = time.monotonic()
    from instance.model.forecasting import forecast_files

    about = {"model": choice.label, "run_id": (choice.metadata or {}).get("run_id"), "data": source,
             "data_fingerprint": fp, "future": future}
    try:
        result = forecast_files(lambda: _load(choice), files, roles, h, future_files=future_files, about=about,
                                quantile_levels=levels, batch_size=batch_size or BATCH_SIZE, context_length=context,
                                where=Path(data).name, future_where=f"--future {future}", progress=progress)
    except ForecastInputError as exc:
        raise BadInput(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".csv":
        result.frame.to_csv(tmp, index=False)
    else:
        result.frame.to_parquet(tmp, index=False)
    tmp.replace(out)
    result.info["total_seconds"] = round(time.monotonic() - started, 3)
    return ForecastDone(out, result.info)


def check_out(out: Path) -> None:
    """--out names a file this command can write: parquet, or CSV by its extension."""
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise BadInput(f"--out {out}: name a .parquet or a .csv file")


def _name(data: str) -> str:
    return data if data.startswith("cached-datasets/") or data.startswith("s3://") else Path(data).name


# -- --remote: the same forecast as a run on the GPU machine --------------------------------------
REMOTE_MAX_MINUTES = 60


def remote_config(target, model: str, data: str, *, future: str | None = None,
                  prediction_length: int | None = None) -> tuple[Path, int]:
    """A forecast-only run config (`kind: forecast`) for MODEL and DATA, checked here as the local
    command checks them (roles, future values, lengths, frequency: BadInput before anything is
    written to the bucket), written into the home for `launch`; and the number of series.

    MODEL is a run id (its model read from the run's models/ prefix, which the instance role
    reads; the machine is that run's type and market) or a pretrained model (amazon/chronos-2,
    read by the agent from the hub as a training run's base is; the default machine). A model
    folder on this disk is refused: the machine reads only the bucket, and a folder a run saved
    is that run's model, which its run id names. At most REMOTE_MAX_MINUTES either way."""
    import yaml

    from instance.model.dataset import load_long_frame
    from instance.model.forecasting import ForecastInputError, prepare

    if RUN_ID_RE.match(model):
        meta = run_metadata(target, model)
        choice = ModelChoice(f"s3://{target.bucket}/{target.layout.models(model)}", model, meta)
    else:
        _refuse_a_folder(model)
        choice, meta = resolve_model(model, lambda: target), {}
    files, _, _ = data_files(data, lambda: target)
    future_files = data_files(future, lambda: target, "--future")[0] if future else None
    roles = _roles_of(files, choice, future_files, _name(data))
    h = prediction_length or choice.training.get("prediction_length") or DEFAULT_PREDICTION_LENGTH
    try:
        frame = load_long_frame(files, roles)
        import pandas as pd

        fut = pd.concat([pd.read_parquet(f) for f in future_files], ignore_index=True) if future_files else None
        series = len(prepare(frame, roles, h, future=fut, where=_name(data), future_where=f"--future {future}").ids)
    except ForecastInputError as exc:
        raise BadInput(str(exc)) from None
    run_cfg = meta.get("config") or {}
    instance = {k: v for k, v in (run_cfg.get("instance") or {}).items() if v is not None}
    instance["max_runtime_minutes"] = min(int(instance.get("max_runtime_minutes", REMOTE_MAX_MINUTES)),
                                          REMOTE_MAX_MINUTES)
    # A pretrained model reads as far back as it was built for, as the local command lets it.
    context = choice.training.get("context_length") or (512 if meta else BASE_CONTEXT)
    columns = run_cfg.get("columns") or ({} if meta else _columns_of(roles))
    doc = {"kind": "forecast", "dataset": _absolute(data), "model": {"base": choice.source},
           "training": {"prediction_length": h, "context_length": max(h, context)},
           "instance": instance, "columns": columns,
           "forecast": {"future": _absolute(future)} if future else True}
    folder = home() / "forecast-runs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}-{int(time.time() * 1000)}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, series


def remote_estimate(target, model_run: str, series: int, config):
    """How long and how much the forecast run of `series` series is expected to take
    (forecast_estimate.py), from the model's own run's forecast where it measured one."""
    from .forecast_estimate import estimate
    from .records import read_record

    if not RUN_ID_RE.match(model_run):  # a pretrained model: no run of it measured anything
        return estimate(series, config.instance.type, _hourly(config), target.local, model_run=model_run, record=None,
                        base=model_run)
    record = read_record(target, model_run)
    base = (((record or {}).get("config") or {}).get("model") or {}).get("base")
    return estimate(series, config.instance.type, _hourly(config), target.local, model_run=model_run, record=record,
                    base=base)


def _hourly(config) -> float:
    from instance.protocol.pricing import hourly

    return hourly(config.instance.type, config.instance.spot)


def _refuse_a_folder(model: str) -> None:
    path = Path(model).expanduser()
    if not path.exists():
        return
    meta = next((p for p in (path / "model_metadata.json", path.parent / "model_metadata.json") if p.is_file()), None)
    run_id = json.loads(meta.read_text()).get("run_id") if meta else None
    instead = f"name its run, {run_id}, instead" if run_id else "train it in a run and name that run's id"
    raise BadInput(f"--remote reads its model from the bucket, not from this disk: for {model}, {instead}, or "
                   "leave out --remote to forecast on this machine")


def _columns_of(roles: ColumnRoles) -> dict[str, Any]:
    """The run config's `columns` for data read in these roles (a pretrained model has none of its own)."""
    targets = roles.targets
    return {"id": roles.id, "timestamp": roles.timestamp, "target": targets[0] if len(targets) == 1 else targets,
            "known_covariates": list(roles.known_covariates)}


def _absolute(path: str) -> str:
    if path.startswith("cached-datasets/") or path.startswith("s3://"):
        return path
    return str(Path(path).expanduser().resolve())


def fetch_forecast(target, run_id: str, out: Path) -> Path:
    """A finished forecast run's forecast.parquet into `out` (CSV by extension), by rename."""
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.parquet.tmp")
    target.s3.download_file(target.bucket, target.layout.forecast_file(run_id), str(tmp))
    if out.suffix.lower() == ".csv":
        pd.read_parquet(tmp).to_csv(out, index=False)
        tmp.unlink()
    else:
        tmp.replace(out)
    return out


def _load(choice: ModelChoice):
    from transformers.utils import logging as hf_logging

    from instance.model.basemodel import load_base, load_trained

    hf_logging.disable_progress_bar()  # a bar for reading weights from disk is noise before the forecast's own

    if Path(choice.source).is_dir():
        return load_trained(choice.source)
    return load_base(choice.source, context_length=BASE_CONTEXT)
