"""The run config's `sweep:` section: several fine-tunings (trials) in one run, the best by the
backtest kept as the run's model. Optuna searches (instance/agent/sweep.py); this module only
says what may be searched, checks it, and estimates what it takes.

    sweep:
      grid:                          # every combination (or `space:` with ranges, below)
        learning_rate: [1.0e-4, 1.0e-3]
        num_steps: [200, 400]
      # space:
      #   learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}
      #   num_steps: {low: 100, high: 1000, step: 100}
      #   finetune_mode: [full, lora]         # a list: a choice
      trials: 4            # the budget; a grid's default is all of it
      sampler: grid        # grid | random | tpe (default: grid with grid:, tpe with space:)
      metric: wql          # wql | mase of the fine-tuned model on the backtest; lower wins
      pruner: none         # none | median: a trial whose training loss trails the median of
                           # the earlier trials at the same step stops there (recorded as pruned)
      parallel: auto       # trials side by side, one GPU each (auto: one per GPU of the run);
                           # 1: one at a time, each on every GPU of the run
      seed: 0              # the sampler's
      keep_models: false   # true: every trial's model stays under {run_id}/sweep/trials/
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# What a trial may change, and where it lives in the run config.
SETTINGS: dict[str, tuple[str, str]] = {
    "learning_rate": ("training", "learning_rate"),
    "num_steps": ("training", "num_steps"),
    "batch_size": ("training", "batch_size"),
    "context_length": ("training", "context_length"),
    "finetune_mode": ("model", "finetune_mode"),
    "lora_rank": ("model", "lora_rank"),
}
INTEGER_SETTINGS = {"num_steps", "batch_size", "context_length", "lora_rank"}
METRICS = ("wql", "mase")
MAX_TRIALS = 1000


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a range is log or stepped, not both")
        return self


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: dict[str, list[Any]] | None = None
    space: dict[str, Range | list[Any]] | None = None
    trials: int | None = Field(None, ge=1, le=MAX_TRIALS)
    sampler: Literal["grid", "random", "tpe"] | None = None
    metric: Literal["wql", "mase"] = "wql"
    pruner: Literal["none", "median"] = "none"
    parallel: Literal["auto"] | int = "auto"
    seed: int = 0
    keep_models: bool = False

    @field_validator("grid", "space")
    @classmethod
    def _known_settings(cls, v: dict | None) -> dict | None:
        if v is None:
            return v
        if not v:
            raise ValueError(f"is empty; name at least one of {', '.join(SETTINGS)}")
        unknown = [k for k in v if k not in SETTINGS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a setting a sweep can change; use {', '.join(SETTINGS)}")
        for name, values in v.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"{name} lists no value; give at least one")
            if isinstance(values, list) and len({repr(x) for x in values}) != len(values):
                raise ValueError(f"{name} lists a value twice")
            if isinstance(values, Range) and name not in INTEGER_SETTINGS | {"learning_rate"}:
                raise ValueError(f"{name} takes a list of choices, not a range")
        return v

    @field_validator("parallel", mode="before")
    @classmethod
    def _parallel(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be auto or a whole number of trials at a time, at least 1")

    @model_validator(mode="after")
    def _one_search(self) -> "SweepSpec":
        if (self.grid is None) == (self.space is None):
            raise ValueError("give either grid (every combination) or space (ranges with a trial budget), not "
                             + ("both" if self.grid is not None else "neither"))
        if self.space is not None and self.sampler == "grid":
            raise ValueError("sampler grid needs grid:, not space:; use random or tpe with ranges")
        if self.space is not None and self.trials is None:
            raise ValueError("a space of ranges needs trials: (the budget)")
        if self.grid is not None and self.sampler_name == "grid" and self.trials is not None \
                and self.trials > self.grid_size:
            raise ValueError(f"trials ({self.trials}) exceeds the grid's {self.grid_size} combinations; "
                             f"use at most {self.grid_size}, or leave trials out")
        return self

    # -- what the agent and the estimate read -----------------------------------------------
    @property
    def sampler_name(self) -> str:
        return self.sampler or ("grid" if self.grid is not None else "tpe")

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in (self.grid or {}).values())

    @property
    def budget(self) -> int:
        """How many trials the run trains (pruned ones included)."""
        return self.trials if self.trials is not None else self.grid_size

    @property
    def settings(self) -> dict[str, Range | list[Any]]:
        return dict(self.grid if self.grid is not None else self.space)

    def slots(self, gpus: int) -> int:
        """Trials side by side on a machine with `gpus` GPUs (one each), or 1 (each on every GPU)."""
        wanted = gpus if self.parallel == "auto" else self.parallel
        return max(1, min(wanted, self.budget))

    def corners(self) -> list[dict[str, Any]]:
        """Every combination of a grid; for ranges, the extremes of each (what the config check
        tries: a setting valid at both ends of a range is valid between them)."""
        def ends(name: str, r: Range) -> list[Any]:
            return [int(r.low), int(r.high)] if name in INTEGER_SETTINGS else [r.low, r.high]

        axes = {name: (values if isinstance(values, list) else ends(name, values))
                for name, values in self.settings.items()}
        names = list(axes)
        return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def apply(doc: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The run config (a mapping) a trial trains with: `params` set in place of the base values."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for name, value in params.items():
        section, key = SETTINGS[name]
        if name in INTEGER_SETTINGS and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[section] = {**(out.get(section) or {}), key: value}
    if "lora_rank" in params and out.get("model", {}).get("finetune_mode", "full") != "lora":
        # A rank means LoRA: a grid over ranks alone fine-tunes with LoRA at each.
        out["model"] = {**out["model"], "finetune_mode": "lora"}
    return out


def trial_key(params: dict[str, Any]) -> str:
    """A stable name for a trial's settings (its checkpoints' folder in S3): the same settings on
    a replacement machine find the same checkpoints."""
    import hashlib
    import json

    text = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- the time a sweep takes, by the estimate ---------------------------------------------------
# The fastest Chronos-2 base (120 M parameters) could fine-tune at context 512, samples per second
# on one GPU: 6 x 120 M x ~40 tokens (32 patches of 16, the horizon's, the register) of work a
# sample, at half of the GPU's dense bf16/fp16 tensor peak (H100 989, A100 312, L40S 362, A10G
# 125, L4 121, V100 125, T4 65 TFLOPS). An upper bound on speed, so every time derived from it is a
# lower bound: a sweep it refuses cannot fit. Not measured on a GPU (none was available; see
# docs/benchmarks.md, "Sweeps").
SAMPLES_PER_SECOND = {"H100": 15000.0, "A100": 4700.0, "L40S": 5500.0, "A10G": 1900.0, "L4": 1800.0, "V100": 1900.0,
                      "T4": 1000.0}
CPU_SAMPLES_PER_SECOND = 2000.0  # a scratch:tiny on a laptop CPU trains faster than this bound
# A machine's start (boot, environment, data) and each trial's backtest, in seconds: optimistic.
STARTUP_SECONDS = 150.0
BACKTEST_SECONDS = 20.0
# Parameters of each model, relative to base (a hub or s3 model counts as base).
MODEL_SCALE = {"tiny": 0.001, "mini": 0.01, "small": 0.1, "base": 1.0}


def trial_seconds(gpu_model: str, base: str, context_length: int, batch_size: int, num_steps: int,
                  gpus: int = 1) -> float:
    """The fewest seconds one trial can take on `gpus` of the type's GPUs, by the estimate."""
    size = base.split(":", 1)[1] if base.startswith("scratch:") else "base"
    rate = SAMPLES_PER_SECOND.get(gpu_model, CPU_SAMPLES_PER_SECOND) * gpus / MODEL_SCALE.get(size, 1.0)
    return num_steps * batch_size * (context_length / 512) / rate + BACKTEST_SECONDS


def sweep_seconds(trials: list[float], slots: int) -> float:
    """Trials of these lengths run `slots` at a time, longest first (a lower bound as well):
    when the last one ends."""
    ends = [0.0] * slots
    for t in sorted(trials, reverse=True):
        i = ends.index(min(ends))
        ends[i] += t
    return max(ends) if ends else 0.0
