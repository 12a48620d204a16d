"""Fine-tuning through Chronos2Pipeline.fit, watched by one TrainerCallback.

The callback (a thin adapter around RunMonitor, which holds the logic) does three things at
every step, none of them I/O: hand over progress (at most every `report_every` s), look for a
reason to stop (a flag that the agent's threads set: kill, deadline, spot notice), and hand each
saved checkpoint to the uploader. Stopping sets `should_training_stop` and `should_save`, so the
Trainer ends cleanly at the next step with a checkpoint on disk.

The same function trains one rank of a data-parallel run (distributed.py): `Ranks` is how the
callback meets the other ranks (agree on a stop, wait at a checkpoint); alone, it is `ONE_PROCESS`,
whose every answer is immediate.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    prediction_length: int
    context_length: int
    num_steps: int
    batch_size: int
    learning_rate: float
    finetune_mode: str = "full"
    save_steps: int | None = None
    seed: int = 0
    # A full checkpoint this often (the agent uploads it): what a machine lost without notice costs.
    checkpoint_seconds: float | None = None
    eval_windows: int = 1  # backtest windows held out at the end of every series (evaluation.py)
    lora_rank: int | None = None  # None: Chronos's default LoRA (r 8, alpha 16)

    @classmethod
    def from_config(cls, cfg) -> "TrainingSettings":
        t = cfg.training
        return cls(
            prediction_length=t.prediction_length,
            context_length=t.context_length,
            num_steps=t.num_steps,
            batch_size=t.batch_size,
            learning_rate=t.learning_rate,
            finetune_mode=cfg.model.finetune_mode,
            save_steps=t.save_steps,
            seed=t.seed,
            checkpoint_seconds=t.checkpoint_minutes * 60,
            eval_windows=cfg.evaluation.windows,
            lora_rank=cfg.model.lora_rank,
        )

    @property
    def logging_steps(self) -> int:
        # The loss reaches the progress report only when the Trainer logs it, and each log is a
        # device sync: Chronos's own interval (100) for long runs, ten logs for short ones.
        return max(1, min(100, self.num_steps // 10))


@dataclass
class Progress:
    step: int
    total_steps: int
    loss: float | None
    eta_seconds: float | None
    samples_per_second: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingHooks:
    """How training talks to the rest of the agent. Every field is optional."""

    report: Callable[[Progress], None] | None = None  # at the first step, then every `report_every` s
    stop_flag: Callable[[], str | None] | None = None  # every step, so it must not do I/O
    on_checkpoint: Callable[[Path, int], None] | None = None
    # Every loss the Trainer logs, as {step, loss, learning_rate, grad_norm, epoch}; no I/O.
    on_log: Callable[[dict[str, Any]], None] | None = None
    fault: Callable[[], None] | None = None  # test hook, called at the first step
    report_every: float = 15.0
    checkpoint_every: float | None = None  # seconds between full checkpoints (None: only on a stop)
    save_last: bool = False  # a full checkpoint at the last step too (a replacement then skips training)
    save_now: Callable[[], bool] | None = None  # True once when a full checkpoint is wanted now; no I/O


@dataclass
class TrainingOutcome:
    pipeline: Any  # None where another process trained (the model is in model_dir)
    model_dir: Path
    steps_done: int
    total_steps: int
    final_loss: float | None
    samples_per_second: float | None
    train_seconds: float
    stopped_by: str | None = None
    checkpoints: list[Path] = field(default_factory=list)
    resumed_from_step: int | None = None  # the checkpoint's step this training went on from
    precision: str | None = None  # what fit chose: bf16 on Ampere or newer GPUs, else fp32
    tf32: bool = False
    device: str = "cpu"  # cuda or cpu, for each rank
    world_size: int = 1  # processes (one per GPU) that trained together
    batch_size_per_rank: int | None = None
    steps_by_rank: list[int] = field(default_factory=list)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def summary(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "total_steps": self.total_steps,
            "final_loss": self.final_loss,
            "samples_per_second": self.samples_per_second,
            "train_seconds": round(self.train_seconds, 3),
            "stopped_by": self.stopped_by,
            "resumed_from_step": self.resumed_from_step,
            "bf16": self.bf16,
            "precision": self.precision,
            "tf32": self.tf32,
            "device": self.device,
            "world_size": self.world_size,
            "batch_size_per_rank": self.batch_size_per_rank,
            "steps_by_rank": self.steps_by_rank,
        }

    def to_json(self) -> dict[str, Any]:
        """What rank 0 hands the agent: everything but the pipeline."""
        return {**self.summary(), "model_dir": str(self.model_dir), "checkpoints": [str(c) for c in self.checkpoints]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "TrainingOutcome":
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(pipeline=None, **{**fields, "model_dir": Path(doc["model_dir"]),
                                     "checkpoints": [Path(c) for c in doc.get("checkpoints", [])]})


class Ranks(Protocol):
    """The other processes of a data-parallel run, as the training callback needs them."""

    rank: int
    world_size: int

    def agree(self, wish: bool) -> bool:
        """Called at every step by every rank with this rank's wish to stop; True on every rank at
        the same step once any rank wished it (ranks that part ways hang in the next all-reduce)."""

    def barrier(self) -> None:
        """Wait until every rank is here (a checkpoint is complete only when all have saved)."""

    def end(self, step: int) -> list[int]:
        """At the end of training, on every rank: the last step of each rank, by rank."""


class OneProcess:
    rank = 0
    world_size = 1

    def agree(self, wish: bool) -> bool:
        return wish

    def barrier(self) -> None:
        pass

    def end(self, step: int) -> list[int]:
        return [step]


ONE_PROCESS = OneProcess()


class RunMonitor:
    """The callback's logic, free of transformers so it can be reasoned about (and tested) alone."""

    def __init__(self, hooks: TrainingHooks, total_steps: int, batch_size: int, clock: Callable[[], float] = time.monotonic,
                 ranks: Ranks = ONE_PROCESS):
        self.hooks = hooks
        self.total_steps = total_steps
        self.batch_size = batch_size  # of one optimizer step, all ranks together
        self.clock = clock
        self.ranks = ranks
        self.started: float | None = None
        self.ended: float | None = None
        self.first_step = 0  # where this process began: a resumed training starts at its checkpoint
        self.step = 0
        self.loss: float | None = None
        self.stopped_by: str | None = None
        self.precision: str | None = None
        self.tf32: bool = False
        self.steps_by_rank: list[int] = []
        self.checkpoints: list[Path] = []
        self._wish: str | None = None
        self._last_report = -math.inf
        self._last_save: float | None = None
        self._faulted = False

    def begin(self, args: Any = None, step: int = 0) -> None:
        """`args`: the TrainingArguments fit built; they say what precision it chose. `step`: the
        global step training starts from (past 0 when resumed from a checkpoint)."""
        if args is not None:
            self.precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
            self.tf32 = bool(args.tf32)
        self.started = self._last_save = self.clock()
        self.first_step = self.step = step

    def progress(self) -> Progress:
        elapsed = (self.clock() - self.started) if self.started is not None else 0.0
        done = self.step - self.first_step
        rate = done / elapsed if elapsed > 0 and done else None
        eta = (self.total_steps - self.step) / rate if rate else None
        return Progress(
            step=self.step,
            total_steps=self.total_steps,
            loss=self.loss,
            eta_seconds=round(eta, 1) if eta is not None else None,
            samples_per_second=round(rate * self.batch_size, 2) if rate else None,
        )

    def step_end(self, step: int) -> bool:
        """Returns True when training must stop (with a checkpoint) at this step."""
        self.step = step
        if self.hooks.fault is not None and not self._faulted:
            self._faulted = True
            self.hooks.fault()
        now = self.clock()
        if self.hooks.report is not None and (step == 1 or now - self._last_report >= self.hooks.report_every):
            self._last_report = now
            self.hooks.report(self.progress())
        if self.stopped_by is not None:
            return False  # asked once; the Trainer is already stopping
        if self._wish is None and self.hooks.stop_flag is not None:
            self._wish = self.hooks.stop_flag()
        if not self.ranks.agree(self._wish is not None):
            return False
        self.stopped_by = self._wish or "another rank was asked to stop"
        log.warning("stopping training at step %d: %s", step, self.stopped_by)
        return True

    def save_due(self) -> bool:
        """A full checkpoint is due: asked for (a rebalance recommendation) or periodic. One process only: ranks would have to agree on it at
        the same step, and `Ranks.agree` carries the stop decision alone (a second call per step
        mixes the two answers: every step then saves). Data-parallel runs checkpoint on a stop,
        at save_steps and at the last step."""
        if self.ranks.world_size > 1:
            return False
        if self.hooks.save_now is not None and self.hooks.save_now():
            return True
        every = self.hooks.checkpoint_every
        return every is not None and self._last_save is not None and self.clock() - self._last_save >= every

    def logged(self, logs: dict[str, Any], step: int) -> None:
        if "loss" not in logs:
            return  # the Trainer's closing summary (train_runtime, train_loss) is not a step
        self.loss = float(logs["loss"])
        if self.hooks.on_log is not None:
            self.hooks.on_log(loss_entry(logs, step))

    def saved(self, checkpoint_dir: Path, step: int) -> None:
        self._last_save = self.clock()
        self.ranks.barrier()  # each rank writes its part of a checkpoint (its RNG state)
        self.checkpoints.append(checkpoint_dir)
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(checkpoint_dir, step)

    def end(self) -> None:
        self.ended = self.clock()
        self.steps_by_rank = self.ranks.end(self.step)
        if self.hooks.report is not None:
            self.hooks.report(self.progress())


LOSS_FIELDS = ("loss", "learning_rate", "grad_norm", "epoch")


def loss_entry(logs: dict[str, Any], step: int) -> dict[str, Any]:
    """One row of the loss history: the step and what the Trainer logged of LOSS_FIELDS."""
    entry: dict[str, Any] = {"step": int(step)}
    for name in LOSS_FIELDS:
        value = logs.get(name)
        entry[name] = float(value) if isinstance(value, (int, float)) else None
    return entry


def _callback(monitor: RunMonitor):
    from transformers.trainer_callback import TrainerCallback

    class AgentCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            monitor.begin(args, state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if monitor.step_end(state.global_step):
                control.should_training_stop = True
                control.should_save = True
                control.should_log = True
            elif state.global_step >= state.max_steps:
                control.should_save = control.should_save or monitor.hooks.save_last
            elif monitor.save_due():
                control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            monitor.logged(logs or {}, state.global_step)

        def on_save(self, args, state, control, **kwargs):
            monitor.saved(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            monitor.end()

    return AgentCallback()


def train_model(pipeline, inputs, settings: TrainingSettings, output_dir: Path, hooks: TrainingHooks | None = None,
                ranks: Ranks = ONE_PROCESS, resume_from: Path | None = None) -> TrainingOutcome:
    """Fine-tune `pipeline` on `inputs` (Chronos prepared inputs). The returned folder holds a
    complete model (LoRA adapters merged) that Chronos2Pipeline.from_pretrained loads.

    With several ranks, every rank calls this: `settings.batch_size` is split evenly among them
    and each draws its own batches (its own seed); only rank 0 writes the model (transformers'
    save_pretrained writes on rank 0 alone once a process group exists).

    Every checkpoint is a full one (weights, optimizer, scheduler, RNG: what resuming needs;
    fit's own default keeps only the weights). `resume_from`: such a checkpoint, which training
    goes on from: same optimizer and learning-rate schedule, same data stream (the RNG the dataset
    draws from is restored, so no batch is replayed), up to the same num_steps."""
    hooks = hooks or TrainingHooks()
    monitor = RunMonitor(hooks, settings.num_steps, settings.batch_size, ranks=ranks)
    per_rank = settings.batch_size // ranks.world_size
    extra: dict[str, Any] = dict(
        disable_tqdm=True,
        report_to=[],
        logging_steps=settings.logging_steps,
        # Chronos's dataset samples from numpy's global RNG, which the Trainer seeds with `seed`:
        # the same seed on every rank would draw the same batches N times over.
        seed=settings.seed + ranks.rank,
        data_seed=settings.seed + ranks.rank,
        save_only_model=False,
        # Chronos2Dataset is an endless stream drawn from numpy's global RNG: skipping the
        # batches already trained on would draw (and throw away) all of them again, while the
        # restored RNG state continues the stream where the checkpoint left it.
        ignore_data_skip=True,
    )
    if hooks.checkpoint_every is None and settings.checkpoint_seconds:
        hooks.checkpoint_every = settings.checkpoint_seconds
    if ranks.world_size > 1:
        # transformers asks DDP to look for unused parameters by default, an extra pass over the
        # autograd graph at every step; every Chronos-2 parameter takes part in every forward
        # (checked with and without covariates, full and LoRA).
        extra.update(ddp_find_unused_parameters=False)
    if settings.save_steps:
        extra.update(save_strategy="steps", save_steps=settings.save_steps)
    if settings.finetune_mode == "lora" and settings.lora_rank:
        extra.update(lora_config=lora_config(settings.lora_rank))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _resuming(resume_from):
        finetuned = pipeline.fit(
            inputs,
            prediction_length=settings.prediction_length,
            context_length=settings.context_length,
            finetune_mode=settings.finetune_mode,
            learning_rate=settings.learning_rate,
            num_steps=settings.num_steps,
            batch_size=per_rank,
            output_dir=output_dir,
            min_past=_min_past(settings),
            callbacks=[_callback(monitor)],
            remove_printer_callback=True,
            **extra,
        )
    # fit hands the model back in training mode: scored so, dropout would still be on, and the
    # backtest would score a noisier model than the one saved (found by a sweep, whose trials
    # in processes of their own score the saved model: the WQL differed by up to 20 %).
    finetuned.model.eval()
    model_dir = output_dir / "finetuned-ckpt"
    if settings.finetune_mode == "lora":
        finetuned, model_dir = _merge_lora(finetuned, output_dir / "merged")
    elapsed = (monitor.ended or time.monotonic()) - (monitor.started or started)
    progress = monitor.progress()
    return TrainingOutcome(
        pipeline=finetuned,
        model_dir=model_dir,
        # Resumed from the last step's checkpoint, the Trainer still takes one step before it
        # checks max_steps: at a learning rate the schedule has brought to 0, it changes nothing.
        steps_done=min(monitor.step, settings.num_steps),
        total_steps=settings.num_steps,
        final_loss=monitor.loss,
        samples_per_second=progress.samples_per_second,
        train_seconds=elapsed,
        stopped_by=monitor.stopped_by,
        checkpoints=monitor.checkpoints,
        resumed_from_step=monitor.first_step if resume_from is not None else None,
        precision=monitor.precision,
        tf32=monitor.tf32,
        device=finetuned.model.device.type,
        world_size=ranks.world_size,
        batch_size_per_rank=per_rank,
        steps_by_rank=monitor.steps_by_rank,
    )


@contextmanager
def _resuming(checkpoint: Path | None):
    """Make fit's trainer resume from `checkpoint`. fit builds its Chronos2Trainer itself and
    calls train() without arguments, importing the class when called; for the length of the
    call, that import finds a subclass whose train() resumes."""
    if checkpoint is None:
        yield
        return
    from chronos.chronos2 import trainer as module

    original = module.Chronos2Trainer

    class ResumingTrainer(original):
        def train(self, *args, **kwargs):
            kwargs.setdefault("resume_from_checkpoint", str(checkpoint))
            return super().train(*args, **kwargs)

    module.Chronos2Trainer = ResumingTrainer
    try:
        yield
    finally:
        module.Chronos2Trainer = original


# The layers Chronos's own default LoRA adapts; only the rank (and alpha, kept at 2r) changes.
LORA_TARGETS = ["self_attention.q", "self_attention.v", "self_attention.k", "self_attention.o",
                "output_patch_embedding.output_layer"]


def lora_config(rank: int) -> dict[str, Any]:
    return {"r": rank, "lora_alpha": 2 * rank, "target_modules": list(LORA_TARGETS)}


def _min_past(settings: TrainingSettings) -> int:
    from .dataset import MIN_CONTEXT

    return min(MIN_CONTEXT, settings.context_length)


def _merge_lora(finetuned, target: Path):
    """Chronos loads only full models from s3://, so adapters are folded into the weights."""
    from chronos.chronos2 import Chronos2Pipeline

    merged = Chronos2Pipeline(model=finetuned.model.merge_and_unload())
    merged.save_pretrained(target)
    return merged, target


def stage_checkpoint(checkpoint_dir: Path, staging_dir: Path) -> Path:
    """Hard-link a checkpoint folder into `staging_dir` (instant, no copy) and return the copy.

    The Trainer deletes the previous checkpoint as it saves the next one; the staged copy lives
    until whoever uploads it removes it."""
    import shutil

    staged = staging_dir / checkpoint_dir.name
    if staged.exists():
        shutil.rmtree(staged)
    shutil.copytree(checkpoint_dir, staged, copy_function=_link_or_copy)
    return staged


def _link_or_copy(src: str, dst: str) -> str:
    import os
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
