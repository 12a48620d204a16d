"""The run config (YAML), one pydantic model shared by the CLI (before launch) and the agent."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .columns import DEFAULT_ID, DEFAULT_TARGET, DEFAULT_TIMESTAMP, ColumnNames
from .pricing import PRICES
from .sweepspec import STARTUP_SECONDS, SweepSpec, apply, sweep_seconds, trial_seconds

# Chronos-2 core sizes for `scratch:<size>` (random init, offline). `tiny` trains on a CPU in
# seconds (tests, demo); `small` and `base` are for real runs on a GPU.
SCRATCH_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    "mini": dict(d_model=128, d_kv=32, d_ff=512, num_layers=4, num_heads=4),
    "small": dict(d_model=256, d_kv=32, d_ff=1024, num_layers=6, num_heads=8),
    "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
}
MAX_RUNTIME_MINUTES = 48 * 60


class ConfigError(ValueError):
    """A run config that cannot be launched. The message is one sentence per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ModelSpec(_Strict):
    base: str = "amazon/chronos-2"
    finetune_mode: Literal["full", "lora"] = "full"
    # LoRA's rank r (alpha 2r); None: Chronos's own default (r 8, alpha 16).
    lora_rank: int | None = Field(None, ge=1, le=1024)

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        if v.startswith("scratch:"):
            size = v.split(":", 1)[1]
            if size not in SCRATCH_PRESETS:
                raise ValueError(f"scratch size must be one of: {', '.join(SCRATCH_PRESETS)}")
        elif v.startswith("s3://"):
            if len(v) <= 5 or "/" not in v[5:]:
                raise ValueError("an s3 model must look like s3://bucket/prefix/")
        elif not v or v.count("/") > 1 or " " in v:
            raise ValueError("must be a hub id (amazon/chronos-2), an s3:// uri or scratch:<size>")
        return v

    @property
    def is_scratch(self) -> bool:
        return self.base.startswith("scratch:")


class TrainingSpec(_Strict):
    prediction_length: int = Field(24, gt=0, le=1024)
    context_length: int = Field(512, gt=0, le=8192)
    num_steps: int = Field(1000, gt=0, le=1_000_000)
    batch_size: int = Field(256, gt=0, le=65536)
    learning_rate: float = Field(1.0e-5, gt=0, lt=1)
    save_steps: int | None = Field(None, gt=0)
    seed: int = 0
    # A full checkpoint (weights, optimizer, scheduler, RNG) goes to S3 this often, so a machine
    # lost without notice costs at most this much training; a notice checkpoints at once.
    checkpoint_minutes: float = Field(15, gt=0, le=24 * 60)

    @model_validator(mode="after")
    def _lengths(self) -> "TrainingSpec":
        if self.prediction_length > self.context_length:
            raise ValueError(
                f"prediction_length ({self.prediction_length}) must not exceed context_length "
                f"({self.context_length})"
            )
        return self


class InstanceSpec(_Strict):
    type: str = "g4dn.2xlarge"
    # In order of preference: the Auto Scaling group takes whichever has capacity, in any zone.
    # `type` is the one-type form; a config names one or the other.
    types: list[str] | None = Field(None, min_length=1, max_length=20)
    spot: bool = False
    max_runtime_minutes: int = Field(240, ge=10, le=MAX_RUNTIME_MINUTES)
    # Machines lost (spot reclaimed, hardware) after which the run ends failed; the run has at
    # most max_interruptions + 1 machines in all.
    max_interruptions: int = Field(5, ge=0, le=50)
    # How long the group may find no capacity for any listed type before the run ends no_capacity.
    capacity_wait_minutes: int = Field(30, ge=1, le=24 * 60)
    # auto: every GPU of the type (price table); a number trains on that many. More than one
    # GPU is data-parallel training, one process per GPU (instance/model/distributed.py).
    gpus: Literal["auto"] | int = "auto"

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PRICES:
            raise ValueError(f"unknown instance type {v!r}; known: {', '.join(PRICES)}")
        return v

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        unknown = [t for t in v if t not in PRICES]
        if unknown:
            raise ValueError(f"unknown instance type {unknown[0]!r}; known: {', '.join(PRICES)}")
        if len(set(v)) != len(v):
            raise ValueError("lists an instance type twice")
        counts = {t: PRICES[t].gpus for t in v}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{t} ({n})" for t, n in counts.items())
            raise ValueError(f"all types must have the same number of GPUs, as the run's batch splits over them: {listed}")
        return v

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be auto or a whole number of GPUs, at least 1")

    @model_validator(mode="after")
    def _one_form(self) -> "InstanceSpec":
        if self.types is not None and "type" in self.model_fields_set and self.type != self.types[0]:
            raise ValueError(f"instance.type ({self.type}) and instance.types both given; keep types (the list, "
                             "preferred first) and remove type")
        if self.types is not None:
            object.__setattr__(self, "type", self.types[0])  # the preferred type stands for the list
        return self

    @model_validator(mode="after")
    def _gpus_of_the_type(self) -> "InstanceSpec":
        have = PRICES[self.type].gpus
        if self.gpus != "auto" and self.gpus > have:
            raise ValueError(
                f"{self.type} has {have} GPU{'s' if have > 1 else ''} ({PRICES[self.type].gpu}), so gpus must be "
                f"auto or at most {have} (got {self.gpus})"
            )
        return self

    @property
    def instance_types(self) -> list[str]:
        """Every type the run may get, the preferred first."""
        return list(self.types) if self.types else [self.type]

    @property
    def max_machines(self) -> int:
        return self.max_interruptions + 1

    @property
    def gpu_count(self) -> int:
        """How many GPUs (one training process each) the run trains on."""
        return PRICES[self.type].gpus if self.gpus == "auto" else self.gpus


class EvaluationSpec(_Strict):
    # Rolling-origin backtest: this many windows of prediction_length at the end of every series,
    # none of which training sees (as AutoGluon's num_val_windows and fev's windows).
    windows: int = Field(3, ge=1, le=20)


class ColumnsSpec(_Strict):
    """The data's column roles. Every column not named here is a past-only covariate (known up to
    now, masked over the horizon); `known_covariates` are known into the future (price, promotion,
    holiday): their horizon values are shown to the model in training windows, backtest windows
    and forecasts. Numeric or categorical, Chronos encodes them (instance/model/covariates.py,
    which takes them as `names()`)."""

    id: str = DEFAULT_ID
    timestamp: str = DEFAULT_TIMESTAMP
    target: str | list[str] = DEFAULT_TARGET  # several: forecast jointly
    known_covariates: list[str] = Field(default_factory=list)

    @field_validator("id", "timestamp")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a column")
        return v

    @field_validator("target", mode="before")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        names = [v] if isinstance(v, str) else v
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError("must name a column, or a list of columns forecast jointly")
        return v

    @model_validator(mode="after")
    def _one_role_each(self) -> "ColumnsSpec":
        roles: dict[str, str] = {}
        for role, names in (("the id", [self.id]), ("the timestamp", [self.timestamp]),
                            ("a target", self.targets), ("a known covariate", self.known_covariates)):
            for name in names:
                if name in roles:
                    also = "listed twice as " + role if roles[name] == role else f"both {roles[name]} and {role}"
                    raise ValueError(f"column {name!r} is {also}; give each column one role")
                roles[name] = role
        return self

    @property
    def targets(self) -> list[str]:
        return [self.target] if isinstance(self.target, str) else list(self.target)

    def names(self) -> ColumnNames:
        return ColumnNames(self.id, self.timestamp, tuple(self.targets), tuple(self.known_covariates))


class ForecastSpec(_Strict):
    """What the run forecasts once the model is trained: `prediction_length` steps past the end of
    every series, from all of its data (instance/model/forecasting.py). `forecast: false` turns it
    off, `forecast: true` is the default. A model trained with known covariates needs their values
    over the horizon: `future` names a parquet file or folder (a local path, uploaded at launch)
    or a prefix in the bucket holding them; without it such a run forecasts nothing, and its
    record says why."""

    enabled: bool = True
    future: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flag(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {"enabled": v}
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be true, false, or a mapping such as {future: <file or prefix>}")
        return v

    @field_validator("future")
    @classmethod
    def _future(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must name a parquet file or folder, or a prefix in the bucket")
        return v


class RunConfig(_Strict):
    # train: fine-tune model.base on the dataset, backtest, forecast. forecast: no training, the
    # model (model.base: a run's models/ prefix, a hub id) forecasts the dataset on the machine.
    kind: Literal["train", "forecast"] = "train"
    dataset: str
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    instance: InstanceSpec = InstanceSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    columns: ColumnsSpec = ColumnsSpec()
    forecast: ForecastSpec = ForecastSpec()
    sweep: SweepSpec | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a prefix in the bucket (cached-datasets/YYYY/MM/) or a local parquet path")
        return v

    @model_validator(mode="after")
    def _batch_splits_over_the_gpus(self) -> "RunConfig":
        # training.batch_size is the batch of one optimizer step, whatever the machine: each of
        # the N GPUs draws batch_size / N series, so the same config trains the same way on 1 or 8.
        n, batch = self.instance.gpu_count, self.training.batch_size
        if batch % n:
            lower, upper = batch - batch % n, batch - batch % n + n
            choices = f"{lower} or {upper}" if lower else f"{upper}"
            raise ValueError(
                f"training.batch_size ({batch}) must be a multiple of the {n} GPUs the run trains on "
                f"(instance.gpus on {self.instance.type}), as each GPU takes an equal share of every batch; "
                f"use {choices}, or set instance.gpus"
            )
        return self

    @model_validator(mode="after")
    def _every_trial_can_run(self) -> "RunConfig":
        """Each combination a sweep may try (a range: both ends) is itself a config that launches,
        and the trials fit the time limit by the estimate (sweepspec.py)."""
        sweep = self.sweep
        if sweep is None:
            return self
        if self.kind != "train":
            raise ValueError("sweep: only a training run (kind: train) can sweep")
        gpus = self.instance.gpu_count
        if sweep.parallel != "auto" and sweep.parallel > gpus:
            raise ValueError(f"sweep.parallel ({sweep.parallel}) exceeds the {gpus} GPU{'s' if gpus > 1 else ''} the run "
                             f"trains on (one trial per GPU); use at most {gpus}, or set instance.gpus")
        plan = sweep_plan(self)
        limit = self.instance.max_runtime_minutes
        if plan.seconds > limit * 60:
            n = plan.trials
            raise ValueError(
                f"sweep: {n} trial{'s' if n > 1 else ''} ({plan.slots} at a time on {self.instance.type}) "
                f"take{'s' if n == 1 else ''} at least {plan.seconds / 60:.0f} minutes by the estimate, more than "
                f"instance.max_runtime_minutes ({limit}); raise it, or sweep fewer trials or steps")
        return self

    @property
    def dataset_in_bucket(self) -> bool:
        return self.dataset.startswith("cached-datasets/")

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep takes by the (optimistic) estimate of sweepspec.py."""

    trials: int
    slots: int  # trials at a time
    trial_seconds: list[float]  # each trial's, on the GPUs it gets in the sweep
    seconds: float  # the whole run: one start-up, then the trials `slots` at a time
    separate_seconds: float  # the same trials as separate runs (a start-up each, every GPU each), summed


def sweep_plan(cfg: "RunConfig") -> SweepPlan:
    """Each combination a sweep may try (a range: both ends) validated as a config of its own, and
    the time the budget takes: the shortest trials it could draw (if even they do not fit, no
    draw does)."""
    sweep, gpus = cfg.sweep, cfg.instance.gpu_count
    slots = sweep.slots(gpus)
    base = cfg.model_dump(mode="json", exclude={"sweep"})
    gpu_model = PRICES[cfg.instance.type].gpu_model
    inside, alone = [], []
    for params in sweep.corners():
        doc = apply(base, params)
        try:
            trial = RunConfig.model_validate({**doc, "instance": {**doc["instance"], "gpus": 1}} if slots > 1 else doc)
        except ValidationError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            raise ValueError(f"sweep: the trial with {shown} cannot run: {_describe(exc.errors()[0])}") from None
        try:  # as a run of its own, on every GPU (a batch that does not split: on one)
            alone_trial = RunConfig.model_validate(doc) if slots > 1 else trial
        except ValidationError:
            alone_trial = trial
        t = trial.training
        inside.append(trial_seconds(gpu_model, trial.model.base, t.context_length, t.batch_size, t.num_steps,
                                    1 if slots > 1 else gpus))
        a = alone_trial.training
        alone.append(trial_seconds(gpu_model, alone_trial.model.base, a.context_length, a.batch_size, a.num_steps,
                                   alone_trial.instance.gpu_count))
    n = sweep.budget

    def first(times: list[float]) -> list[float]:
        ordered = sorted(times)
        return (ordered + [ordered[0]] * n)[:n]

    return SweepPlan(n, slots, first(inside), STARTUP_SECONDS + sweep_seconds(first(inside), slots),
                     sum(STARTUP_SECONDS + t for t in first(alone)))


def _describe(err: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "config"
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{field}: unknown key; remove it or check its spelling"
    if kind == "missing":
        return f"{field}: required"
    if kind == "literal_error":
        return f"{field}: must be one of {ctx.get('expected', '')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{field}: {msg.lower()} (got {err.get('input')!r})"
    if isinstance(err.get("input"), dict):  # a check across fields: the sentence names them
        return f"{field}: {msg.removeprefix('Value error, ')}" if err["loc"] else msg.removeprefix("Value error, ")
    return f"{field}: {msg.removeprefix('Value error, ')} (got {err.get('input')!r})"


def parse_config(doc: Any, source: str = "config") -> RunConfig:
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: must be a YAML mapping with dataset, model, training and instance")
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path) -> RunConfig:
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not a YAML text file") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(doc, str(path))


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


def check_runtime_support(cfg: RunConfig) -> None:
    """Refuse what this Python cannot run, instead of silently falling back."""
    if cfg.model.finetune_mode == "lora" and not peft_available():
        raise ConfigError(
            "model.finetune_mode: lora needs the peft package, which is not installed; "
            "install peft or use finetune_mode: full"
        )
