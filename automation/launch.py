"""launch: validate (no side effects), lock, upload, provision, record. Undo on failure."""
from __future__ import annotations

import getpass
import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

from instance.protocol.layout import DATASETS_PREFIX, new_run_id, s3_uri
from instance.protocol.pricing import PRICES, hourly
from instance.protocol.runconfig import ConfigError, RunConfig, check_runtime_support, load_config
from instance.protocol.timeutil import utcnow

from .context import Target, translate_aws_error
from .errors import BadInput, Busy, ChronosError
from .executors.base import Executor, ProvisionError, ProvisionRequest
from .infra_record import InfraRecord


@dataclass(frozen=True)
class Estimate:
    instance_type: str
    spot: bool
    hourly_usd: float
    worst_case_usd: float
    max_runtime_minutes: int
    local: bool
    gpus: int = 1  # how many of the type's GPUs train (the whole machine is billed)

    def sentence(self) -> str:
        kind = "spot" if self.spot else "on-demand"
        price = PRICES[self.instance_type]
        aws = (f"{self.instance_type} ({price.gpu}{self._gpus_used(price.gpus)}) {kind}: ~${self.hourly_usd:.3f}/h "
               f"incl. 100 GB gp3, worst case ${self.worst_case_usd:.2f} at the {self.max_runtime_minutes}-minute limit")
        return f"local run: $0.00 (on AWS, {aws})" if self.local else f"estimated cost: {aws}"

    def _gpus_used(self, has: int) -> str:
        if has == 1:
            return ""
        per_gpu = f"${self.hourly_usd / self.gpus:.3f} per training GPU-hour"
        if self.gpus == has:
            return f", training on all {has}: {per_gpu}"
        return f", training on {self.gpus} of {has}, all billed: {per_gpu}"


@dataclass(frozen=True)
class LaunchPlan:
    config: RunConfig
    config_path: Path
    infra: InfraRecord
    local_files: tuple[Path, ...]  # a local dataset to upload, or () for a bucket prefix
    estimate: Estimate


@dataclass(frozen=True)
class Launched:
    run_id: str
    instance_id: str
    dataset_prefix: str


def estimate(cfg: RunConfig, local: bool) -> Estimate:
    rate = hourly(cfg.instance.type, cfg.instance.spot)
    return Estimate(cfg.instance.type, cfg.instance.spot, round(rate, 4),
                    round(rate * cfg.instance.max_runtime_minutes / 60, 2), cfg.instance.max_runtime_minutes, local,
                    cfg.instance.gpu_count)


def plan(target: Target, config_path: str | Path) -> LaunchPlan:
    """Everything that can be refused is refused here, before any write."""
    config_path = Path(config_path)
    try:
        cfg = load_config(config_path)
        check_runtime_support(cfg)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    infra = target.infra()
    readable = _check_readable_by_the_machine(target, cfg)
    local_files: tuple[Path, ...] = ()
    if cfg.dataset_in_bucket or "dataset" in readable:
        _check_prefix(target, readable.get("dataset", cfg.dataset))
    else:
        local_files = tuple(check_local_dataset(_resolve_local(cfg.dataset, config_path), cfg))
    return LaunchPlan(cfg, config_path, infra, local_files, estimate(cfg, target.local))


def _resolve_local(dataset: str, config_path: Path) -> Path:
    path = Path(dataset).expanduser()
    if not path.is_absolute() and not path.exists():
        beside = config_path.parent / path
        path = beside if beside.exists() else path
    return path


def check_local_dataset(path: Path, cfg: RunConfig | None = None) -> list[Path]:
    from instance.model.dataset import expand_dataset_path, validate_parquet_paths

    if not path.exists():
        raise BadInput(
            f"dataset {path} is neither a local file or folder nor a bucket prefix "
            f"(bucket prefixes start with {DATASETS_PREFIX})"
        )
    files = expand_dataset_path(path)
    if not files:
        raise BadInput(f"dataset {path} holds no .parquet file")
    problems = validate_parquet_paths(
        files,
        context_length=cfg.training.context_length if cfg else None,
        prediction_length=cfg.training.prediction_length if cfg else None,
    )
    if problems:
        more = f" (and {len(problems) - 1} more problems; see `chronos-train data validate {path}`)" if len(problems) > 1 else ""
        raise BadInput(f"dataset is not valid: {problems[0]}{more}")
    return files


def _check_readable_by_the_machine(target: Target, cfg: RunConfig) -> dict[str, str]:
    """The instance role reads datasets and this environment's run outputs in its own bucket,
    nothing else: refuse an s3:// dataset or model elsewhere before anything is launched.
    Returns the bucket key of each s3:// input, by name."""
    keys = {}
    for name, uri in (("dataset", cfg.dataset), ("model.base", cfg.model.base)):
        if not uri.startswith("s3://"):
            continue
        bucket, _, key = uri[5:].partition("/")
        if bucket != target.bucket or not (key.startswith(DATASETS_PREFIX) or key.startswith(f"{target.env}/run-")):
            raise BadInput(
                f"{name} {uri} is not where the run's machine may read (s3://{target.bucket}/{DATASETS_PREFIX} "
                f"or a run's outputs under s3://{target.bucket}/{target.env}/); copy it there first"
            )
        keys[name] = key
    return keys


def _check_prefix(target: Target, prefix: str) -> None:
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    try:
        resp = target.s3.list_objects_v2(Bucket=target.bucket, Prefix=prefix, MaxKeys=1000)
    except Exception as exc:
        raise translate_aws_error(exc, target) from None
    if not any(o["Key"].endswith(".parquet") for o in resp.get("Contents", [])):
        raise BadInput(
            f"dataset prefix {s3_uri(target.bucket, prefix)} holds no .parquet file; "
            "upload one with `chronos-train data upload PATH --month YYYY/MM`"
        )


def upload_local_dataset(target: Target, files: tuple[Path, ...], month: str | None = None) -> str:
    """Content-addressed folder under cached-datasets/YYYY/MM/: re-uploading is a no-op."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    month = month or utcnow().strftime("%Y/%m")
    stem = files[0].parent.name if len(files) > 1 else files[0].stem
    prefix = f"{DATASETS_PREFIX}{month}/{stem}-{digest.hexdigest()[:8]}/"
    for f in files:
        key = prefix + f.name
        try:
            if target.s3.head_object(Bucket=target.bucket, Key=key)["ContentLength"] == f.stat().st_size:
                continue
        except Exception:
            pass
        target.s3.upload_file(str(f), target.bucket, key)
    return prefix


def launch(target: Target, lp: LaunchPlan, executor: Executor) -> Launched:
    from instance.protocol.state import LockBusy, LockError

    from .bundle import build_bundle

    store = target.state_store()
    run_id = new_run_id()
    cfg = lp.config
    try:
        lease = store.acquire(
            run_id,
            executor=executor.name,
            instance_type=cfg.instance.type,
            spot=cfg.instance.spot,
            max_runtime_minutes=cfg.instance.max_runtime_minutes,
            launched_by=f"{getpass.getuser()}@{socket.gethostname()}",
        )
    except LockBusy as exc:
        raise Busy(f"{exc}; follow it with `chronos-train monitor {exc.holder.get('run_id')} --follow` "
                   "or stop it with `chronos-train kill`") from None
    except Exception as exc:
        raise translate_aws_error(exc, target) from None

    layout = target.layout
    try:
        prefix = upload_local_dataset(target, lp.local_files) if lp.local_files else cfg.dataset
        run_cfg = cfg.model_copy(update={"dataset": prefix})
        target.s3.put_object(Bucket=target.bucket, Key=layout.run_config(run_id), Body=run_cfg.to_yaml().encode())
        target.s3.put_object(Bucket=target.bucket, Key=layout.bundle(run_id), Body=build_bundle())
        done = executor.provision(ProvisionRequest(run_id, target.env, run_cfg, lp.infra, target.endpoint_url))
    except BaseException as exc:
        _record_launch_failure(target, store, lease, run_id, exc)
        if isinstance(exc, ProvisionError):
            raise ChronosError(f"run {run_id} was not started: {exc}") from None
        raise

    try:
        store.update(
            lease,
            lambda s: {**s, "instance_id": done.instance_id, "zone": done.zone, "stack_name": done.stack_name},
            pin_status=False,
            heartbeat=False,
        )
    except LockError:
        pass  # the run already ended (and released the lock) before this note: its record tells how
    return Launched(run_id, done.instance_id, prefix)


def _record_launch_failure(target: Target, store, lease, run_id: str, exc: BaseException) -> None:
    from instance.protocol.artifacts import put_json
    from instance.protocol.state import LockError
    from instance.protocol.timeutil import iso

    kind = getattr(exc, "kind", type(exc).__name__)
    put_json(target.s3, target.bucket, target.layout.training_record(run_id), {
        "run_id": run_id, "env": target.env, "final_status": "failed",
        "reason": f"provision_{kind}" if isinstance(exc, ProvisionError) else type(exc).__name__,
        "error": {"class": type(exc).__name__, "message": str(exc), "phase": "launch"},
        "started_at": lease.state["started_at"], "ended_at": iso(),
    })
    try:
        store.release(lease)
    except LockError:
        pass  # someone else already moved the lock on (kill, verify-cleanup): nothing to release
