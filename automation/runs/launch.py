"""launch: validate (no side effects), lock, upload, provision, record. Undo on failure."""
from __future__ import annotations

import getpass
import logging
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from instance.protocol.aws import error_code
from instance.protocol.columns import ColumnRoles
from instance.protocol.datasets import LocalDataset
from instance.protocol.group import group_name
from instance.protocol.layout import DATASETS_PREFIX, new_run_id
from instance.protocol.pricing import PRICES, hourly
from instance.protocol.runconfig import ConfigError, RunConfig, SweepPlan, check_runtime_support, load_config, sweep_plan
from instance.protocol.timeutil import iso

from ..context import Target, translate_aws_error
from ..datasets import (check_local_future, check_remote_columns, check_remote_dataset, checked_local_dataset,
                        upload_dataset)
from ..errors import BadInput, Busy, ChronosError, Interrupted
from ..executors.base import Executor, ProvisionError, ProvisionRequest
from ..infra_record import InfraRecord
from ..interrupts import sigint_deferred
from ..settings import settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Estimate:
    instance_type: str
    spot: bool
    hourly_usd: float
    worst_case_usd: float
    max_runtime_minutes: int
    local: bool
    gpus: int = 1  # how many of the type's GPUs train (the whole machine is billed)
    other_types: tuple[str, ...] = ()  # the group may launch these instead (instance.types)
    sweep: SweepPlan | None = None  # a sweep's trials, by the estimate

    @property
    def sweep_usd(self) -> float | None:
        """The whole sweep in one run, at the preferred type's rate (one start-up)."""
        return None if self.sweep is None else round(self.hourly_usd * self.sweep.seconds / 3600, 2)

    @property
    def separate_usd(self) -> float | None:
        """The same trials as separate runs: a start-up each, one after the other."""
        return None if self.sweep is None else round(self.hourly_usd * self.sweep.separate_seconds / 3600, 2)

    def sweep_json(self) -> dict:
        s = self.sweep
        if s is None:
            return {}
        return {"sweep": {"trials": s.trials, "at_a_time": s.slots, "minutes": round(s.seconds / 60, 1),
                          "usd": self.sweep_usd, "separate_runs_minutes": round(s.separate_seconds / 60, 1),
                          "separate_runs_usd": self.separate_usd}}

    def sweep_sentence(self) -> str:
        s = self.sweep
        return (f"sweep: {s.trials} trials, {s.slots} at a time: at least {s.seconds / 60:.0f} min, "
                f"~${self.sweep_usd:.2f} in this run; as {s.trials} separate runs (a start-up each): at least "
                f"{s.separate_seconds / 60:.0f} min, ~${self.separate_usd:.2f} (estimate)")

    def sentence(self) -> str:
        kind = "spot" if self.spot else "on-demand"
        price = PRICES[self.instance_type]
        alternatives = f" or {', '.join(self.other_types)}" if self.other_types else ""
        priciest = " on the priciest type" if self.other_types else ""
        aws = (f"{self.instance_type}{alternatives} ({price.gpu}{self._gpus_used(price.gpus)}) {kind}: "
               f"~${self.hourly_usd:.3f}/h incl. 100 GB gp3, worst case ${self.worst_case_usd:.2f}{priciest} at the "
               f"{self.max_runtime_minutes}-minute limit")
        line = f"local run: $0.00 (on AWS, {aws})" if self.local else f"estimated cost: {aws}"
        return line + (f"; {self.sweep_sentence()}" if self.sweep is not None else "")

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
    local_dataset: LocalDataset | None  # a local dataset to upload, or None for a bucket prefix
    estimate: Estimate
    columns: ColumnRoles | None = None  # the data's column roles (a bucket dataset's: from its footers)
    local_future: LocalDataset | None = None  # forecast.future on this disk, uploaded into the run's prefix


@dataclass(frozen=True)
class Launched:
    run_id: str
    instance_id: str
    dataset_prefix: str


def estimate(cfg: RunConfig, local: bool) -> Estimate:
    rate = hourly(cfg.instance.type, cfg.instance.spot)
    worst = max(hourly(t, cfg.instance.spot) for t in cfg.instance.instance_types)
    return Estimate(cfg.instance.type, cfg.instance.spot, round(rate, 4),
                    round(worst * cfg.instance.max_runtime_minutes / 60, 2), cfg.instance.max_runtime_minutes, local,
                    cfg.instance.gpu_count, tuple(cfg.instance.instance_types[1:]),
                    sweep_plan(cfg) if cfg.sweep is not None else None)


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
    local = None
    if cfg.dataset_in_bucket or "dataset" in readable:
        columns = check_remote_columns(target, check_remote_dataset(target, readable.get("dataset", cfg.dataset)), cfg)
    else:
        path = _resolve_local(cfg.dataset, config_path)
        if not path.exists():
            raise BadInput(
                f"dataset {path} is neither a local file or folder nor a bucket prefix "
                f"(bucket prefixes start with {DATASETS_PREFIX})"
            )
        local, columns = checked_local_dataset(path, cfg)
    future = None
    if cfg.forecast.enabled and cfg.forecast.future and not _in_bucket(cfg.forecast.future):
        future = check_local_future(_resolve_local(cfg.forecast.future, config_path), cfg, columns)
    return LaunchPlan(cfg, config_path, infra, local, estimate(cfg, target.local), columns, future)


def _in_bucket(path: str) -> bool:
    return path.startswith(DATASETS_PREFIX) or path.startswith("s3://")


def _resolve_local(dataset: str, config_path: Path) -> Path:
    path = Path(dataset).expanduser()
    if not path.is_absolute() and not path.exists():
        beside = config_path.parent / path
        path = beside if beside.exists() else path
    return path


def _check_readable_by_the_machine(target: Target, cfg: RunConfig) -> dict[str, str]:
    """The instance role reads datasets and this environment's run outputs in its own bucket,
    nothing else: refuse an s3:// dataset or model elsewhere before anything is launched.
    Returns the bucket key of each s3:// input, by name."""
    keys = {}
    for name, uri in (("dataset", cfg.dataset), ("model.base", cfg.model.base), ("forecast.future", cfg.forecast.future)):
        if not uri or not uri.startswith("s3://"):
            continue
        bucket, _, key = uri[5:].partition("/")
        if bucket != target.bucket or not (key.startswith(DATASETS_PREFIX) or key.startswith(f"{target.env}/run-")):
            raise BadInput(
                f"{name} {uri} is not where the run's machine may read (s3://{target.bucket}/{DATASETS_PREFIX} "
                f"or a run's outputs under s3://{target.bucket}/{target.env}/); copy it there first"
            )
        keys[name] = key
    return keys


def quote_spot_prices(target: Target, types: list[str]) -> dict[str, dict[str, float]]:
    """What AWS charges now for each type in each zone, USD an hour ({type: {zone: price}}, the
    newest Linux quote of DescribeSpotPriceHistory). Best effort: {} when the call fails, and
    costs then use the price table's spot figure (both are labelled estimated)."""
    now = datetime.now(timezone.utc)
    quotes: dict[str, dict[str, tuple[datetime, float]]] = {}
    try:
        pages = target.ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=list(types), StartTime=now, ProductDescriptions=["Linux/UNIX"])
        for item in (i for page in pages for i in page.get("SpotPriceHistory", [])):
            if not item.get("ProductDescription", "").startswith("Linux/UNIX"):
                continue
            at = item.get("Timestamp") or now
            zone = quotes.setdefault(item["InstanceType"], {})
            if item["AvailabilityZone"] not in zone or zone[item["AvailabilityZone"]][0] < at:
                zone[item["AvailabilityZone"]] = (at, float(item["SpotPrice"]))
    except Exception as exc:  # noqa: BLE001 - an estimate; the launch goes on without it
        log.warning("no spot price quote (%s: %s); costs use the price table", error_code(exc) or type(exc).__name__, exc)
        return {}
    return {t: {z: price for z, (_, price) in zones.items()} for t, zones in quotes.items()}


def launch(target: Target, lp: LaunchPlan, executor: Executor,
           progress: Callable[[str], None] = lambda line: None) -> Launched:
    """Lock, upload, provision, note the instance. While the executor provisions (minutes with
    Pulumi) the lock is written every so often, so nobody takes the launch for a dead run; on any
    failure, Ctrl-C included, what was made is undone, the run is recorded failed and the lock
    released. `progress` hears one line per step."""
    from instance.protocol.state import LockBusy, LockError

    from ..executors.bundle import build_bundle

    store = target.state_store()
    run_id = new_run_id()
    cfg = lp.config
    try:
        lease = store.acquire(
            run_id,
            executor=executor.name,
            instance_type=cfg.instance.type,
            instance_types=cfg.instance.instance_types,
            spot=cfg.instance.spot,
            max_runtime_minutes=cfg.instance.max_runtime_minutes,
            launched_by=f"{getpass.getuser()}@{socket.gethostname()}",
            # The run's machines come from its Auto Scaling group; each one's agent counts itself
            # in `attempt` and ends the run past max_machines (instance/protocol/attempts.py).
            group=group_name(run_id),
            attempt=0,
            max_machines=cfg.instance.max_machines,
            capacity_wait_minutes=cfg.instance.capacity_wait_minutes,
            interruptions=[],
            spot_prices=quote_spot_prices(target, cfg.instance.instance_types) if cfg.instance.spot else {},
        )
    except LockBusy as exc:
        raise Busy(f"{exc}; follow it with `chronos-train monitor {exc.holder.get('run_id')} --follow` "
                   "or stop it with `chronos-train kill`") from None
    except Exception as exc:
        raise translate_aws_error(exc, target) from None
    progress(f"run {run_id}: lock taken")

    layout = target.layout
    keeper = LeaseKeeper(store, lease, settings().stale_after / 5)
    try:
        # The keeper also covers the dataset upload: a large one can outlast the stale limit.
        with keeper:
            if lp.local_dataset is not None:
                prefix = upload_dataset(target, lp.local_dataset).prefix
                progress(f"run {run_id}: dataset uploaded to {prefix}")
            else:
                prefix = cfg.dataset
            run_cfg = cfg.model_copy(update={"dataset": prefix})
            if lp.local_future is not None:
                run_cfg = run_cfg.model_copy(update={"forecast": cfg.forecast.model_copy(
                    update={"future": _upload_future(target, lp.local_future, run_id)})})
            target.s3.put_object(Bucket=target.bucket, Key=layout.run_config(run_id), Body=run_cfg.to_yaml().encode())
            target.s3.put_object(Bucket=target.bucket, Key=layout.bundle(run_id), Body=build_bundle())
            progress(f"run {run_id}: config and code uploaded; provisioning on {executor.name}")
            done = executor.provision(ProvisionRequest(run_id, target.env, run_cfg, lp.infra))
    except BaseException as exc:
        with sigint_deferred("still recording the launch as failed and releasing the lock; one moment"):
            _record_launch_failure(target, store, keeper.lease, run_id, exc)
        if isinstance(exc, ProvisionError):
            raise ChronosError(f"run {run_id} was not started: {exc}") from None
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted: run {run_id} was not started; it is recorded as failed "
                              "(interrupted) and the lock is released") from None
        raise

    try:
        # The deadline on S3's clock (when the lock was created), so no machine's clock moves it.
        due = iso(lease.last_modified + timedelta(minutes=cfg.instance.max_runtime_minutes)) \
            if lease.last_modified else None
        store.update(
            keeper.lease,
            # The first machine's agent may have written its own instance id already: it wins.
            lambda s: {**s, "instance_id": s.get("instance_id") or done.instance_id, "zone": s.get("zone") or done.zone,
                       **({"deadline_at": due} if due and not s.get("deadline_at") else {}),
                       # No machine yet: the group looks for capacity; nobody writes the lock meanwhile.
                       **({"awaiting_machine": True} if not (s.get("instance_id") or done.instance_id) else {})},
            pin_status=False,
            heartbeat=False,
        )
    except LockError:
        pass  # the run already ended (and released the lock) before this note: its record tells how
    if done.instance_id:
        progress(f"run {run_id}: instance {done.instance_id} started" + (f" in {done.zone}" if done.zone else ""))
    else:
        progress(f"run {run_id}: no machine yet; its group keeps looking for capacity "
                 f"(up to {cfg.instance.capacity_wait_minutes} minute{'' if cfg.instance.capacity_wait_minutes == 1 else 's'})"
                 + (f"; its last launch failed: {done.last_failed_launch}" if done.last_failed_launch else "")
                 + f"; follow it with `chronos-train monitor {run_id}`")
    tidy_ended_stacks(executor, run_id, progress)
    return Launched(run_id, done.instance_id, prefix)


def _upload_future(target: Target, future: LocalDataset, run_id: str) -> str:
    """The known covariates' future values into the run's own prefix, where its machine reads them."""
    from instance.protocol.transfer import Upload, upload_files

    prefix = target.layout.forecast_future(run_id)
    upload_files(target.s3, target.bucket, [Upload(f, prefix + future.relative(f)) for f in future.files])
    return prefix


def tidy_ended_stacks(executor: Executor, keep: str, progress: Callable[[str], None]) -> None:
    """While this launch holds the lock, every other run stack belongs to an ended run (one that
    kill --force or verify-cleanup ended without a Pulumi CLI, or a plain launch whose run is
    over): remove their records now that the CLI is at hand. Best effort, never fails a launch."""
    from .ending import tidy_stack

    for stack in executor.leftover_stacks():
        if stack == keep:
            continue
        left = tidy_stack(executor, stack)
        progress(f"removed the stack record of ended run {stack}" if left is None else
                 f"could not remove the stack record of ended run {stack} ({left}); it costs nothing, "
                 "`chronos-train verify-cleanup --fix` retries")


class LeaseKeeper:
    """Writes the lock every `interval` while the launch provisions (a context manager).

    A lock S3 says nobody wrote for the stale limit, with no live instance, may be released by
    verify-cleanup --fix, and a lock in initialization has no instance id until `up` returns,
    which can take longer than the limit. The keeper's writes are compare-and-swaps pinned to the
    status: once the agent moves the run on (or a kill does), it stops, and the agent's own
    heartbeat takes over. `lease` is the latest the keeper knows.
    """

    def __init__(self, store, lease, interval: timedelta):
        self.store = store
        self.lease = lease
        self.interval = max(interval.total_seconds(), 0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from instance.protocol.state import LockError

        while not self._stop.wait(self.interval):
            try:
                self.lease = self.store.update(self.lease, lambda s: s)
            except LockError:
                return  # the agent (or a kill) moved the run on: its writes keep the lock fresh now
            except Exception as exc:  # noqa: BLE001 - try again at the next beat
                log.warning("could not refresh the lock while provisioning: %s", exc)


def _record_launch_failure(target: Target, store, lease, run_id: str, exc: BaseException) -> None:
    """The run's record says why it never started (conditional: an agent's record stays), then
    the lock goes; a lock someone else already moved on is theirs."""
    from instance.protocol.state import LockError

    from .records import record_end_from_cli, step

    kind = getattr(exc, "kind", None)
    reason = (f"provision_{kind}" if isinstance(exc, ProvisionError) else
              "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__)
    state = {**lease.state, "error": {"class": type(exc).__name__, "message": str(exc) or reason, "phase": "launch"}}
    record_end_from_cli(target, run_id, "failed", reason, state,
                        [step("launch", "undo", "done", "the executor removed what it had made")])
    try:
        store.release(lease)
    except LockError:
        pass  # someone else already moved the lock on (kill, verify-cleanup): nothing to release


@dataclass(frozen=True)
class DryRun:
    """What `launch --dry-run` found: the plan, the doctor's checks and the stack's preview."""

    plan: LaunchPlan
    zones: list[str]
    checks: list
    preview: object | None  # run_stacks.Preview, or None when there is none to show
    preview_note: str  # why there is no preview, or how it was made

    @property
    def ready(self) -> bool:
        from .doctor import failed

        return not failed(self.checks)

    def to_json(self) -> dict:
        cfg = self.plan.config
        steps = [{"op": s.op, "type": s.type, "name": s.name} for s in getattr(self.preview, "steps", [])]
        return {
            "ready": self.ready, "config": str(self.plan.config_path), "instance_type": cfg.instance.type,
            "spot": cfg.instance.spot, "zones": self.zones, "dataset": cfg.dataset,
            "columns": self.plan.columns.to_json() if self.plan.columns else None,
            "estimate": {"hourly_usd": self.plan.estimate.hourly_usd, "worst_case_usd": self.plan.estimate.worst_case_usd,
                         "max_runtime_minutes": cfg.instance.max_runtime_minutes, **self.plan.estimate.sweep_json()},
            "checks": [c.to_json() for c in self.checks],
            "preview": {"steps": steps, "changes": getattr(self.preview, "changes", {}), "note": self.preview_note},
        }


def dry_run(target: Target, config_path: str | Path, executor: Executor) -> DryRun:
    """Everything launch checks (config, dataset, infra), the doctor's checks for this config,
    and a Pulumi preview of the run stack in a throwaway local backend: no lock is taken and
    nothing is written to the bucket."""
    from .doctor import FAIL, Check, doctor, failed

    lp = plan(target, config_path)
    checks = doctor(target, lp.config)
    req = ProvisionRequest(new_run_id(), target.env, lp.config, lp.infra)
    zones = sorted(lp.infra.subnets)
    if any(c.name == "Pulumi CLI" for c in failed(checks)):
        return DryRun(lp, zones, checks, None, "skipped: no usable Pulumi CLI (see the check above)")
    try:
        preview = executor.preview(req)
    except ProvisionError as exc:
        checks = [*checks, Check("stack preview", FAIL, str(exc), "fix what the preview says, then try again")]
        return DryRun(lp, zones, checks, None, "the preview failed")
    if preview is None:
        return DryRun(lp, zones[:1], checks, None,
                      f"nothing to preview: the {executor.name} executor starts the agent as a process, no Pulumi stack")
    return DryRun(lp, zones, checks, preview, "pulumi preview of the run stack, in a throwaway local backend")
