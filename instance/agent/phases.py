"""The four working phases of a run, each a function from a dataclass to a dataclass.
(The fifth, cleanup, lives in cleanup.py: it runs whatever happened here.)

Heavy packages (torch, chronos, pandas) are imported inside the phases that need them.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.dataset import DataValidationError, expand_dataset_path, validate_dataset
from ..model.datasync import sync_prefix
from ..protocol.datasets import fingerprint, local_fingerprint
from ..protocol.columns import ColumnNames, ColumnRoles
from ..protocol.runconfig import ConfigError, check_runtime_support, parse_config
from ..protocol.timeutil import iso
from .context import AgentContext, CheckpointUploader, download_prefix, latest_checkpoint
from .lockholder import TrainingWatch

log = logging.getLogger(__name__)


# -- initialization -------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitInput:
    pass


@dataclass(frozen=True)
class InitOutput:
    config: Any  # RunConfig
    device: str
    versions: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"device": self.device}


def initialization(ctx: AgentContext, inp: InitInput) -> InitOutput:
    """Read and check run.yaml, and prove the training stack imports on this machine."""
    import yaml

    key = ctx.layout.run_config(ctx.run_id)
    try:
        text = ctx.s3.get_object(Bucket=ctx.bucket, Key=key)["Body"].read().decode()
    except Exception as exc:
        from ..protocol.aws import is_not_found

        if is_not_found(exc):
            raise ConfigError(f"{ctx.uri(key)} does not exist; the launcher uploads it before starting the agent") from None
        raise
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{ctx.uri(key)} is not valid YAML") from None
    cfg = parse_config(doc, ctx.uri(key))
    ctx.config = cfg
    ctx.record.update(config=cfg.model_dump(mode="json"))
    host = ctx.record.doc["host"]
    host.setdefault("instance_type", cfg.instance.type)  # EC2's word (IMDS) when the agent has it
    host.setdefault("spot", cfg.instance.spot)
    check_runtime_support(cfg)

    from ..model.basemodel import device
    from .gpucheck import check_gpu, gpu_expected

    if gpu_expected(ctx.expect_gpu, host["instance_type"], ctx.local):
        host["gpus"] = check_gpu(host["instance_type"], cfg.instance.gpu_count)
    on = device()
    ctx.record.refresh_versions()
    log.info("config: %s", cfg.model_dump(mode="json"))
    log.info("versions: %s; training on %s", ctx.record.doc["versions"], on)
    return InitOutput(cfg, on, ctx.record.doc["versions"])


# -- data sync ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSyncInput:
    dataset: str  # a key prefix in the run bucket, an s3:// uri, or (--local only) a local path
    dest: Path
    prediction_length: int | None  # None: no length checks for training (a forecast-only run)
    context_length: int
    windows: int = 1  # backtest windows held out at the end of every series
    columns: ColumnNames = ColumnNames()  # the run config's column roles


@dataclass(frozen=True)
class DataSyncOutput:
    files: list[Path]
    source_uri: str
    fingerprint: str
    downloaded: int
    skipped: int
    bytes_downloaded: int
    total_bytes: int
    file_list: list[str] = field(default_factory=list)  # each file, relative to the dataset's prefix
    columns: ColumnRoles | None = None  # every column's role and kind, as the validator found them

    def summary(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "downloaded": self.downloaded,
            "skipped": self.skipped,
            "bytes_downloaded": self.bytes_downloaded,
            "total_bytes": self.total_bytes,
        }


def resolve_dataset(ctx: AgentContext, dataset: str) -> tuple[str, str] | Path:
    """(bucket, prefix) to sync, or a local path (only in a --local run)."""
    if dataset.startswith("s3://"):
        bucket, _, prefix = dataset[5:].partition("/")
        return bucket, prefix
    local = Path(dataset).expanduser()
    if ctx.local and not dataset.startswith("cached-datasets/") and local.exists():
        return local
    return ctx.bucket, dataset.lstrip("/")


def data_sync(ctx: AgentContext, inp: DataSyncInput) -> DataSyncOutput:
    where = resolve_dataset(ctx, inp.dataset)
    if isinstance(where, Path):
        files = expand_dataset_path(where)
        fp, rows = local_fingerprint([f for f in files if f.is_file()])
        source, downloaded, skipped, got = str(where.resolve()), 0, len(files), 0
        total = sum(r.size for r in rows)
        names = [r.key for r in rows]
    else:
        bucket, prefix = where
        report = sync_prefix(ctx.s3, bucket, prefix, inp.dest, should_stop=ctx.holder.check)
        files, fp, source = report.files, fingerprint(report.remote), report.dataset.uri
        downloaded, skipped, got, total = report.downloaded, report.skipped, report.bytes_downloaded, report.total_bytes
        names = [report.dataset.relative(r) for r in report.remote]
        log.info("dataset %s: %d files, %d downloaded, %d already present", source, len(files), downloaded, skipped)
        if report.dataset.others:
            log.info("not part of it (other datasets in folders below): %s", ", ".join(report.dataset.others[:10]))
    ctx.holder.check()
    checked = validate_dataset(files, inp.context_length, inp.prediction_length, inp.windows, inp.columns)
    if checked.problems:
        for p in checked.problems:
            log.error("data problem: %s", p)
        raise DataValidationError(f"the dataset {source} cannot be trained on", checked.problems)
    out = DataSyncOutput(files, source, fp, downloaded, skipped, got, total, names, checked.roles)
    log.info("columns: %s", checked.roles.sentence())
    ctx.record.update(data={"uri": source, "fingerprint": fp, "files": len(files), "bytes": total,
                            "columns": checked.roles.to_json()})
    return out


# -- training -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingInput:
    config: Any  # RunConfig
    files: list[Path]
    output_dir: Path


@dataclass
class TrainingOutput:
    model_dir: Path
    training: dict[str, Any]
    metrics: dict[str, Any]
    evaluation: dict[str, Any]  # how it was scored, and the scores of each window
    checkpoints: list[str] = field(default_factory=list)
    config: Any = None  # the RunConfig the model was trained with (a sweep: its best trial's)

    def summary(self) -> dict[str, Any]:
        return {"steps_done": self.training["steps_done"], "final_loss": self.training["final_loss"]}


def training(ctx: AgentContext, inp: TrainingInput) -> TrainingOutput:
    """Train in this process on one GPU (or the CPU); on N > 1 GPUs, one rank per GPU started
    with torchrun (torchrun.py), this process keeping the lock and the uploads. Then score every
    backtest window (model/evaluation.py) into the work dir's evaluation folder."""
    from ..model.basemodel import device, load_base, load_trained
    from ..model.evaluation import backtest_of_files, evaluate, training_data
    from ..model.training import TrainingSettings, train_model

    cfg = inp.config
    if cfg.sweep is not None:  # several trials, the best by the backtest kept (sweep.py)
        from .sweep import run_sweep

        return run_sweep(ctx, inp)
    settings = TrainingSettings.from_config(cfg)
    world = cfg.instance.gpu_count
    args = (inp.files, settings.prediction_length, settings.eval_windows, cfg.columns.names())
    # Ranks build their own inputs: with several, this process needs only the backtest.
    backtest, inputs = (backtest_of_files(*args), None) if world > 1 else training_data(*args)
    log.info("training on %d series, %d of %d rows (the last %d points of each held out: %d backtest windows)",
             len(backtest.items), len(backtest.frame) - len(backtest.items) * backtest.held_out, len(backtest.frame),
             backtest.held_out, backtest.windows)
    data = dict(ctx.record.doc.get("data") or {}, series=len(backtest.items), points=int(len(backtest.frame)))
    ctx.record.update(data=data)
    # With several ranks the GPUs are theirs: this process keeps the base model on the CPU.
    base = load_base(cfg.model.base, context_length=settings.context_length, seed=settings.seed,
                     on="cpu" if world > 1 else None)
    ctx.holder.check()
    resume_from = checkpoint_to_resume(ctx)

    uploader = CheckpointUploader(ctx)
    try:
        with TrainingWatch(ctx.holder) as watch:
            if world > 1:
                outcome = _train_on_ranks(ctx, base, inp, settings, world, watch, uploader, resume_from)
            else:
                # A machine lost after training (in results_sync) leaves the next one a checkpoint
                # at the last step: it resumes there and trains nothing.
                hooks = training_hooks(ctx.holder, watch, on_checkpoint=uploader.submit,
                                       on_log=ctx.loss_history.append, fault=ctx.hooks.first_training_step,
                                       save_last=ctx.replaceable)
                outcome = train_model(base, inputs, settings, inp.output_dir, hooks, resume_from=resume_from)
    finally:
        uploader.flush()
    stats = outcome.summary()
    ctx.record.update(training=stats)
    if uploader.uploaded:
        ctx.record.set_artifact("checkpoints_uri", ctx.uri(uploader.prefix))
    ctx.holder.check()  # a stop requested during training ends the run here, checkpoint uploaded

    finetuned = outcome.pipeline if outcome.pipeline is not None else load_trained(outcome.model_dir)
    zero_shot_base = None
    if not cfg.model.is_scratch:
        base.model.to(device())  # kept on the CPU while ranks trained
        zero_shot_base = base
    result = evaluate(finetuned, zero_shot_base, backtest, settings.batch_size, settings.context_length)
    result.write(ctx.evaluation_dir)
    info = {**result.info, "per_window": result.per_window}
    ctx.record.update(metrics=result.metrics, evaluation=info)
    return TrainingOutput(outcome.model_dir, stats, result.metrics, info, list(uploader.uploaded), cfg)


def checkpoint_to_resume(ctx: AgentContext, prefix: str | None = None, into: Path | None = None) -> Path | None:
    """On a machine that replaces a lost one: the newest checkpoint complete in S3 (under the
    run's checkpoints/, or `prefix`: a sweep trial's), downloaded. None on the first machine, or
    when the lost one saved none (training starts over)."""
    if ctx.attempt <= 1:
        return None
    found = latest_checkpoint(ctx, prefix)
    if found is None:
        log.warning("attempt %d: no complete checkpoint in S3; training starts from the base model", ctx.attempt)
        return None
    prefix, step = found
    started = time.monotonic()
    folder = download_prefix(ctx, prefix, (into or ctx.resume_dir) / f"checkpoint-{step}")
    log.info("attempt %d: resuming from %s (step %d, downloaded in %.1f s)", ctx.attempt, ctx.uri(prefix), step,
             time.monotonic() - started)
    ctx.record.update(resumed_from={"uri": ctx.uri(prefix), "step": step, "attempt": ctx.attempt})
    return folder


def _train_on_ranks(ctx: AgentContext, base, inp: TrainingInput, settings, world: int, watch, uploader,
                    resume_from: Path | None = None):
    return train_in_processes(ctx, base, inp.files, inp.config, settings, world, folder=ctx.ranks_dir,
                              base_dir=ctx.base_model_dir, output_dir=inp.output_dir,
                              stop=lambda: stop_reason(ctx.holder), on_progress=watch.offer,
                              on_checkpoint=uploader.submit_staged, on_log=ctx.loss_history.append,
                              resume_from=resume_from)


def train_in_processes(ctx: AgentContext, base, files: list[Path], cfg, settings, world: int, *, folder: Path,
                       base_dir: Path, output_dir: Path, stop, on_progress, on_checkpoint, on_log,
                       resume_from: Path | None = None, devices: str | None = None, threads: int | None = None):
    """Training in processes of its own (torchrun's ranks, or one process on one GPU for a sweep's
    trial): the base model saved once for them to load, the job written, the processes run."""
    import shutil
    from dataclasses import asdict

    from ..model.distributed import RankJob
    from .torchrun import RankFailed, train_on_ranks

    shutil.rmtree(folder, ignore_errors=True)
    if not (base_dir / "config.json").is_file():
        base.save_pretrained(base_dir)
    job = RankJob(
        files=[str(f) for f in files], settings=asdict(settings), base_dir=str(base_dir),
        output_dir=str(output_dir), staging_dir=str(ctx.staging_dir), agent_pid=os.getpid(),
        world_size=world, fault_ranks=ctx.hooks.failing_ranks(world),
        resume_from=str(resume_from) if resume_from else None, columns=cfg.columns.names().to_json(),
    )
    try:
        return train_on_ranks(job, folder, stop_reason=stop, on_progress=on_progress, on_checkpoint=on_checkpoint,
                              on_log=on_log, devices=devices, threads=threads)
    except RankFailed:
        ctx.holder.check()  # a stop that ended the ranks is the run's outcome, not their failure
        raise


def stop_reason(holder) -> str | None:
    """Why training must stop now (kill, deadline, spot notice, SIGTERM, fenced), or None; no I/O."""
    stop = holder.pending_stop()
    return None if stop is None else f"{type(stop).__name__}: {stop}"


def training_hooks(holder, watch, *, on_checkpoint=None, on_log=None, fault=None, save_last=False):
    """The agent's side of the training callback: no I/O on the training thread; `watch` does
    the kill check and writes the progress it is handed."""
    from ..model.training import TrainingHooks

    return TrainingHooks(
        report=lambda progress: watch.offer(progress.to_dict()),
        stop_flag=lambda: stop_reason(holder),
        on_checkpoint=on_checkpoint,
        on_log=on_log,
        fault=fault,
        # Handing over is no I/O; `watch` writes what it holds at its own pace (every 2 s).
        report_every=2.0,
        save_last=save_last,
        save_now=holder.take_rebalance,
    )


# -- forecast -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForecastInput:
    config: Any  # RunConfig
    files: list[Path]  # the run's data, all of it (the backtest windows are context now)
    model_dir: Path | None  # the fine-tuned model; None: a forecast-only run's model.base
    fingerprint: str
    roles: ColumnRoles | None


@dataclass(frozen=True)
class ForecastOutput:
    info: dict[str, Any]  # forecast.json, or {"skipped": why}

    def summary(self) -> dict[str, Any]:
        if "skipped" in self.info:
            return {"skipped": self.info["skipped"]}
        return {k: self.info.get(k) for k in ("series", "rows", "seconds")}


def forecast(ctx: AgentContext, inp: ForecastInput) -> ForecastOutput:
    """The fine-tuned model forecasts prediction_length steps past the end of every series
    (model/forecasting.py) into the work dir's forecasts folder, which results_sync uploads. A
    forecast that cannot be made (turned off; known covariates without their future values, or
    future values that do not fit the data) is no failure of the run: the record says why."""
    from ..model.forecasting import ForecastInputError

    shutil.rmtree(ctx.forecast_dir, ignore_errors=True)  # a phase done again keeps no earlier attempt's files
    cfg = inp.config
    roles = inp.roles
    if cfg.kind == "forecast":  # the forecast is all such a run is for: what stops it fails the run
        result = _forecast(ctx, inp, _future_files(ctx, cfg.forecast.future) if cfg.forecast.future else None)
        result.write(ctx.forecast_dir)
        ctx.record.update(forecast=result.info)
        return ForecastOutput(result.info)
    if not cfg.forecast.enabled:
        return _no_forecast(ctx, "the run config says forecast: false")
    if roles.known_covariates and not cfg.forecast.future:
        return _no_forecast(ctx, f"the model was trained with known covariates ({', '.join(roles.known_covariates)}) "
                                 "and the run config names no forecast.future with their values over the horizon")
    try:
        future_files = _future_files(ctx, cfg.forecast.future) if cfg.forecast.future and roles.known_covariates else None
        result = _forecast(ctx, inp, future_files)
    except ForecastInputError as exc:
        return _no_forecast(ctx, str(exc))
    ctx.holder.check()
    result.write(ctx.forecast_dir)
    ctx.record.update(forecast=result.info)
    return ForecastOutput(result.info)


def _forecast(ctx: AgentContext, inp: ForecastInput, future_files):
    from ..model.basemodel import load_base, load_trained
    from ..model.forecasting import BATCH_SIZE, forecast_files

    cfg = inp.config
    if inp.model_dir is None:
        model, load = cfg.model.base, lambda: load_base(cfg.model.base, context_length=cfg.training.context_length)
    else:
        model, load = ctx.uri(ctx.layout.models(ctx.run_id)), lambda: load_trained(inp.model_dir)
    about = {"run_id": ctx.run_id, "model": model,
             "data": ctx.record.doc.get("data", {}).get("uri"), "data_fingerprint": inp.fingerprint,
             "future": cfg.forecast.future if future_files else None}
    return forecast_files(load, inp.files, inp.roles, cfg.training.prediction_length, future_files=future_files,
                          about=about, batch_size=BATCH_SIZE, context_length=cfg.training.context_length,
                          where="the run's data", future_where=f"forecast.future ({cfg.forecast.future})")


def _future_files(ctx: AgentContext, future: str) -> list[Path]:
    """The known covariates' future values: a local path (--local), else synced from the bucket."""
    from ..model.forecasting import ForecastInputError
    from ..protocol.datasets import DatasetError

    where = resolve_dataset(ctx, future)
    if isinstance(where, Path):
        return [f for f in expand_dataset_path(where) if f.is_file()]
    bucket, prefix = where
    try:
        return sync_prefix(ctx.s3, bucket, prefix, ctx.work_dir / "future", should_stop=ctx.holder.check).files
    except DatasetError as exc:
        raise ForecastInputError(f"forecast.future: {exc}") from None


def _no_forecast(ctx: AgentContext, why: str) -> ForecastOutput:
    log.warning("no forecast: %s", why)
    info = {"skipped": why}
    ctx.record.update(forecast=info)
    return ForecastOutput(info)


# -- results sync ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResultsInput:
    model_dir: Path
    training: TrainingOutput
    data: DataSyncOutput
    config: Any


@dataclass(frozen=True)
class ResultsOutput:
    model_uri: str
    metadata_uri: str
    files: list[str]

    def summary(self) -> dict[str, Any]:
        return {"model_uri": self.model_uri, "files": len(self.files)}


def results_sync(ctx: AgentContext, inp: ResultsInput) -> ResultsOutput:
    layout = ctx.layout
    models = layout.models(ctx.run_id)
    ctx.guard()
    ctx.delete_prefix(models)  # a retried phase must not leave files of an earlier attempt
    keys = ctx.upload_dir(inp.model_dir, models)
    names = {k[len(models):] for k in keys}
    missing = {"config.json", "model.safetensors"} - names
    if missing:
        raise RuntimeError(f"the saved model lacks {', '.join(sorted(missing))}; it would not load from S3")
    ctx.record.set_artifact("model_uri", ctx.uri(models))
    ctx.record.set_artifact("metadata_uri", ctx.uri(layout.model_metadata(ctx.run_id)))
    from .evaluation_files import upload_evaluation

    upload_evaluation(ctx)  # backtest forecasts, per-series scores, loss history (it checks the lock first)
    upload_forecast(ctx)
    cfg = inp.config
    metadata = {
        "run_id": ctx.run_id,
        "created_at": iso(),
        "base_model": cfg.model.base,
        "finetune_mode": cfg.model.finetune_mode,
        "config": cfg.model_dump(mode="json"),
        "data_fingerprint": inp.data.fingerprint,
        # What a forecast's input is checked against (protocol/columns.py reads it back).
        "columns": inp.data.columns.to_json() if inp.data.columns else None,
        "dataset": {"uri": inp.data.source_uri, "files": len(inp.data.files), "bytes": inp.data.total_bytes,
                    "file_list": inp.data.file_list},
        "metrics": inp.training.metrics,
        "evaluation": inp.training.evaluation,
        "training": inp.training.training,
        "trained_on": trained_on(cfg, inp.training.training, ctx.record.doc["host"].get("instance_type"), ctx.local,
                                 ctx.record.doc["versions"].get("gpu")),
        "artifacts": dict(ctx.record.doc["artifacts"], files=sorted(names)),
        "load_with": f'Chronos2Pipeline.from_pretrained("{ctx.uri(models)}")',
    }
    ctx.guard()
    from ..protocol.artifacts import put_json

    put_json(ctx.s3, ctx.bucket, layout.model_metadata(ctx.run_id), metadata)
    return ResultsOutput(ctx.uri(models), ctx.uri(layout.model_metadata(ctx.run_id)), sorted(keys))


@dataclass(frozen=True)
class ForecastResults:
    forecast_uri: str
    files: list[str]

    def summary(self) -> dict[str, Any]:
        return {"forecast_uri": self.forecast_uri, "files": len(self.files)}


def forecast_results(ctx: AgentContext, out: ForecastOutput) -> ForecastResults:
    """A forecast-only run's results: its forecast, nothing else."""
    keys = upload_forecast(ctx)
    return ForecastResults(ctx.uri(ctx.layout.forecast_file(ctx.run_id)), sorted(keys))


def upload_forecast(ctx: AgentContext) -> list[str]:
    """forecast.parquet, forecast.json, history.parquet and sample.parquet under
    {run_id}/forecasts/; when this attempt made none, those an earlier attempt left are deleted
    (the future values launch put there stay)."""
    layout = ctx.layout
    ctx.guard()
    if not (ctx.forecast_dir / "forecast.parquet").is_file():
        ctx.s3.delete_objects(Bucket=ctx.bucket, Delete={"Quiet": True, "Objects": [
            {"Key": key} for key in (layout.forecast_file(ctx.run_id), layout.forecast_info(ctx.run_id),
                                     layout.forecast_history(ctx.run_id), layout.forecast_sample(ctx.run_id))]})
        return []
    keys = ctx.upload_dir(ctx.forecast_dir, layout.forecasts(ctx.run_id))
    ctx.record.set_artifact("forecast_uri", ctx.uri(layout.forecast_file(ctx.run_id)))
    return keys


def trained_on(cfg, training: dict[str, Any], instance_type: str | None, local: bool,
               gpu_name: str | None) -> dict[str, Any]:
    """What trained the model: machine (the type EC2 gave), how many GPUs (one rank each), at what
    precision. `gpu_name`: what torch calls GPU 0 of this machine."""
    on_gpu = training.get("device") == "cuda"
    return {
        "executor": "local" if local else "ec2",
        "instance_type": None if local else instance_type,
        "gpu": gpu_name if on_gpu else None,
        "gpus": training.get("world_size", 1) if on_gpu else 0,
        "processes": training.get("world_size", 1),
        "precision": training.get("precision"),
        "tf32": training.get("tf32"),
        "batch_size": cfg.training.batch_size,
        "batch_size_per_rank": training.get("batch_size_per_rank"),
    }
