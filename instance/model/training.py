"""Fine-tuning through Chronos2Pipeline.fit, watched by one TrainerCallback.

The callback (a thin adapter around RunMonitor, which holds the logic) does three things at
every step, none of them I/O: hand over progress (at most every `report_every` s), look for a
reason to stop (a flag that the agent's threads set: kill, deadline, spot notice), and hand each
saved checkpoint to the uploader. Stopping sets `should_training_stop` and `should_save`, so the
Trainer ends cleanly at the next step with a checkpoint on disk.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

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
    fault: Callable[[], None] | None = None  # test hook, called at the first step
    report_every: float = 15.0


@dataclass
class TrainingOutcome:
    pipeline: Any
    model_dir: Path
    steps_done: int
    total_steps: int
    final_loss: float | None
    samples_per_second: float | None
    train_seconds: float
    stopped_by: str | None = None
    checkpoints: list[Path] = field(default_factory=list)
    bf16: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "total_steps": self.total_steps,
            "final_loss": self.final_loss,
            "samples_per_second": self.samples_per_second,
            "train_seconds": round(self.train_seconds, 3),
            "stopped_by": self.stopped_by,
            "bf16": self.bf16,
        }


class RunMonitor:
    """The callback's logic, free of transformers so it can be reasoned about (and tested) alone."""

    def __init__(self, hooks: TrainingHooks, total_steps: int, batch_size: int, clock: Callable[[], float] = time.monotonic):
        self.hooks = hooks
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.clock = clock
        self.started: float | None = None
        self.ended: float | None = None
        self.step = 0
        self.loss: float | None = None
        self.stopped_by: str | None = None
        self.checkpoints: list[Path] = []
        self._last_report = -math.inf
        self._faulted = False

    def begin(self) -> None:
        self.started = self.clock()

    def progress(self) -> Progress:
        elapsed = (self.clock() - self.started) if self.started is not None else 0.0
        rate = self.step / elapsed if elapsed > 0 and self.step else None
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
        if self.stopped_by is None and self.hooks.stop_flag is not None:
            reason = self.hooks.stop_flag()
            if reason is not None:
                log.warning("stopping training at step %d: %s", step, reason)
                self.stopped_by = reason
                return True
        return False

    def logged(self, logs: dict[str, Any]) -> None:
        if "loss" in logs:
            self.loss = float(logs["loss"])

    def saved(self, checkpoint_dir: Path, step: int) -> None:
        self.checkpoints.append(checkpoint_dir)
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(checkpoint_dir, step)

    def end(self) -> None:
        self.ended = self.clock()
        if self.hooks.report is not None:
            self.hooks.report(self.progress())


def _callback(monitor: RunMonitor):
    from transformers.trainer_callback import TrainerCallback

    class AgentCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            monitor.begin()

        def on_step_end(self, args, state, control, **kwargs):
            if monitor.step_end(state.global_step):
                control.should_training_stop = True
                control.should_save = True
                control.should_log = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            monitor.logged(logs or {})

        def on_save(self, args, state, control, **kwargs):
            monitor.saved(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            monitor.end()

    return AgentCallback()


def train_model(pipeline, inputs, settings: TrainingSettings, output_dir: Path, hooks: TrainingHooks | None = None) -> TrainingOutcome:
    """Fine-tune `pipeline` on `inputs` (Chronos prepared inputs). The returned folder holds a
    complete model (LoRA adapters merged) that Chronos2Pipeline.from_pretrained loads."""
    hooks = hooks or TrainingHooks()
    monitor = RunMonitor(hooks, settings.num_steps, settings.batch_size)
    extra: dict[str, Any] = dict(
        disable_tqdm=True,
        report_to=[],
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        data_seed=settings.seed,
    )
    if settings.save_steps:
        extra.update(save_strategy="steps", save_steps=settings.save_steps)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    finetuned = pipeline.fit(
        inputs,
        prediction_length=settings.prediction_length,
        context_length=settings.context_length,
        finetune_mode=settings.finetune_mode,
        learning_rate=settings.learning_rate,
        num_steps=settings.num_steps,
        batch_size=settings.batch_size,
        output_dir=output_dir,
        min_past=_min_past(settings),
        callbacks=[_callback(monitor)],
        remove_printer_callback=True,
        **extra,
    )
    model_dir = output_dir / "finetuned-ckpt"
    if settings.finetune_mode == "lora":
        finetuned, model_dir = _merge_lora(finetuned, output_dir / "merged")
    elapsed = (monitor.ended or time.monotonic()) - (monitor.started or started)
    progress = monitor.progress()
    return TrainingOutcome(
        pipeline=finetuned,
        model_dir=model_dir,
        steps_done=monitor.step,
        total_steps=settings.num_steps,
        final_loss=monitor.loss,
        samples_per_second=progress.samples_per_second,
        train_seconds=elapsed,
        stopped_by=monitor.stopped_by,
        checkpoints=monitor.checkpoints,
        bf16=_uses_bf16(finetuned),
    )


def _min_past(settings: TrainingSettings) -> int:
    from .dataset import MIN_CONTEXT

    return min(MIN_CONTEXT, settings.context_length)


def _merge_lora(finetuned, target: Path):
    """Chronos loads only full models from s3://, so adapters are folded into the weights."""
    from chronos.chronos2 import Chronos2Pipeline

    merged = Chronos2Pipeline(model=finetuned.model.merge_and_unload())
    merged.save_pretrained(target)
    return merged, target


def _uses_bf16(pipeline) -> bool:
    import torch

    # Chronos's fit turns bf16 on by itself on Ampere or newer GPUs.
    return bool(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8 and str(pipeline.model.device) != "cpu")
