"""A sweep: several fine-tunings (trials) in the training phase of one run, searched by Optuna, the
best by the backtest kept as the run's model (and so its forecast).

Each trial is the run config with the trial's settings (protocol/sweepspec.py), trained and
backtested as a run's model is, from the same seed: a trial's scores are those a separate run
with its settings would get. Trials run one at a time (each on every GPU of the run, as a run
trains), or side by side, one GPU each (`sweep.parallel`; under --local, one CPU process each):
each such trial trains in a process of its own (torchrun.py's one-process path), and this process
keeps the lock, the uploads and the study.

What survives the machine (a spot interruption, a replacement machine):
- Optuna's journal (a file; JournalFileBackend) goes to {run_id}/sweep/journal.log after every
  trial starts and ends. A replacement downloads it: finished trials stay finished; a trial the
  lost machine was running is marked failed (`interrupted`) and queued again with its settings,
- and its checkpoints, under {run_id}/checkpoints/trial-<settings hash>/, let that second go
  resume where the first stopped.
- The best model so far is uploaded under {run_id}/sweep/trials/<n>/ (when a replacement may come,
  or every trial's with `keep_models`), so a winner trained on a lost machine still wins.

Kill, the soft deadline, a spot notice and SIGTERM stop every trial at once: each trial's stop
flag is the lock holder's; the trials left running stay `running` in the journal.
A pruner (`sweep.pruner: median`) hears each trial's training loss at every logged step and stops
a trial that trails the median of the earlier ones at that step; it is recorded as pruned.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..protocol.runconfig import RunConfig
from ..protocol.sweepspec import INTEGER_SETTINGS, apply, trial_key
from .context import AgentContext, CheckpointUploader, download_prefix
from .evaluation_files import LossHistory
from .lockholder import TrainingWatch

log = logging.getLogger(__name__)

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


class SweepFailed(RuntimeError):
    """No trial of the sweep completed; the message says what became of each."""


def run_sweep(ctx: AgentContext, inp) -> Any:
    return Sweep(ctx, inp).run()


class Sweep:
    def __init__(self, ctx: AgentContext, inp):
        self.ctx = ctx
        self.inp = inp
        self.cfg: RunConfig = inp.config
        self.spec = self.cfg.sweep
        self.gpus = self.cfg.instance.gpu_count
        self.slots = self.spec.slots(self.gpus)
        self.dir = ctx.work_dir / "sweep"
        self.journal = self.dir / "journal.log"
        self._lock = threading.RLock()
        self._progress: dict[int, dict] = {}
        self._local: dict[int, dict[str, Any]] = {}  # what this machine trained: model, evaluation, history
        self._uploaded: set[int] = set()  # trials whose model is under sweep/trials/
        self._free = list(range(self.slots))  # GPUs (or CPU processes) not taken by a trial
        self._errors: list[BaseException] = []
        self._brief: dict[str, Any] = {}  # the lock's view of the sweep, refreshed as trials start and end

    # -- the study ------------------------------------------------------------------------------
    def _study(self):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.ctx.layout.sweep_journal(self.ctx.run_id)
        if self.ctx.attempt > 1 and not self.journal.exists():
            from ..protocol.aws import is_not_found

            try:
                body = self.ctx.s3.get_object(Bucket=self.ctx.bucket, Key=key)["Body"].read()
                self.journal.write_bytes(body)
                log.info("sweep: resuming the study from %s", self.ctx.uri(key))
            except Exception as exc:
                if not is_not_found(exc):
                    raise
        spec = self.spec
        if spec.sampler_name == "grid":
            class Grid(optuna.samplers.GridSampler):
                def after_trial(self, study, trial, state, values):
                    pass  # it would stop an optimize() loop; ours asks and tells, and stops at the budget

            sampler = Grid(spec.grid, seed=spec.seed)
        elif spec.sampler_name == "random":
            sampler = optuna.samplers.RandomSampler(seed=spec.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=spec.seed)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=1) if spec.pruner == "median" else optuna.pruners.NopPruner()
        storage = JournalStorage(JournalFileBackend(str(self.journal)))
        return optuna.create_study(study_name=self.ctx.run_id, storage=storage, sampler=sampler, pruner=pruner,
                                   direction="minimize", load_if_exists=True)

    def _requeue_interrupted(self, study) -> None:
        """Trials a lost machine left running: failed (interrupted) and queued again, same settings."""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            log.warning("sweep: trial %d was running on the lost machine; queued again (its checkpoints resume it)",
                        t.number)
        self._save_journal()

    def _used(self, study) -> int:
        """Trials that count against the budget: all but those queued again after an interruption."""
        from optuna.trial import TrialState

        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted"))

    def _save_journal(self) -> None:
        with self._lock:
            self._brief = self.summary(brief=True)
            self.ctx.guard()
            self.ctx.s3.put_object(Bucket=self.ctx.bucket, Key=self.ctx.layout.sweep_journal(self.ctx.run_id),
                                   Body=self.journal.read_bytes())

    def _suggest(self, trial) -> dict[str, Any]:
        params = {}
        for name, values in self.spec.settings.items():
            if isinstance(values, list):
                params[name] = trial.suggest_categorical(name, values)
            elif name in INTEGER_SETTINGS:
                params[name] = trial.suggest_int(name, int(values.low), int(values.high), log=values.log,
                                                 step=int(values.step or 1))
            else:
                params[name] = trial.suggest_float(name, values.low, values.high, log=values.log, step=values.step)
        return params

    def _ask(self, study):
        """The next trial, its settings and its GPU; None once the budget is used, a stop was asked
        for, or another lane's bookkeeping failed (the run fails then: a trial started now would
        be paid for and thrown away)."""
        with self._lock:
            if self._errors or self.ctx.holder.pending_stop() is not None or self._used(study) >= self.spec.budget:
                return None
            trial = study.ask()
            params = self._suggest(trial)
            trial.set_user_attr("attempt", self.ctx.attempt)
            slot = self._free.pop(0)
            self._save_journal()
            return trial, params, slot

    # -- the whole sweep ------------------------------------------------------------------------
    def run(self):
        from ..model.evaluation import backtest_of_files, training_data
        from ..model.training import TrainingSettings
        from .phases import TrainingOutput

        ctx = self.ctx
        study = self.study = self._study()
        self._requeue_interrupted(study)
        settings = TrainingSettings.from_config(self.cfg)
        args = (self.inp.files, settings.prediction_length, settings.eval_windows, self.cfg.columns.names())
        # Trials in processes of their own (side by side, or on several GPUs) build their own inputs.
        in_process = self.slots == 1 and self.gpus == 1
        self.backtest, self.inputs = training_data(*args) if in_process else (backtest_of_files(*args), None)
        ctx.record.update(data=dict(ctx.record.doc.get("data") or {}, series=len(self.backtest.items),
                                    points=int(len(self.backtest.frame))))
        log.info("sweep: %d trials (%s sampler, %d at a time), picked by the backtest %s", self.spec.budget,
                 self.spec.sampler_name, self.slots, self.spec.metric)
        with TrainingWatch(ctx.holder) as watch:
            self.watch = watch
            self._run_lanes()
        ctx.record.update(sweep=self.summary(stopped=ctx.holder.pending_stop() is not None))
        ctx.holder.check()  # kill, deadline, notice: every trial has stopped; the run ends here
        if self._errors:  # the sweep's own bookkeeping failed (S3, the journal), not a trial
            raise self._errors[0]
        best = self._best()
        if best is None:
            raise SweepFailed(f"no trial of the sweep completed ({self._outcomes()})")
        model_dir, evaluation = self._winner_files(best)
        shutil.rmtree(ctx.evaluation_dir, ignore_errors=True)
        shutil.copytree(evaluation, ctx.evaluation_dir)
        winner = self._trial_config(best.params)
        attrs = best.user_attrs
        stats = {**attrs.get("training", {}), "sweep_trial": best.number}
        info = attrs.get("evaluation", {})
        ctx.record.update(training=stats, metrics=attrs.get("metrics"), evaluation=info, sweep=self.summary())
        self._tidy(best.number)
        log.info("sweep: trial %d wins (%s %.4f) with %s", best.number, self.spec.metric, best.value, best.params)
        return TrainingOutput(model_dir, stats, attrs.get("metrics"), info, [], winner)

    def _run_lanes(self) -> None:
        """Trials until the budget is used: in this thread, or in one lane (thread) per GPU."""
        if self.slots == 1:
            self._lane()
            return
        lanes = [threading.Thread(target=self._lane, name=f"trial-lane-{i}", daemon=True) for i in range(self.slots)]
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()

    def _lane(self) -> None:
        try:
            self._trials()
        except BaseException as exc:  # noqa: BLE001 - the sweep's thread: run() raises it
            with self._lock:
                self._errors.append(exc)

    def _trials(self) -> None:
        while True:
            asked = self._ask(self.study)
            if asked is None:
                return
            trial, params, slot = asked
            try:
                self._run_trial(trial, params, slot)
            finally:
                with self._lock:
                    self._free.append(slot)
                    self._progress.pop(trial.number, None)

    # -- one trial ------------------------------------------------------------------------------
    def _trial_config(self, params: dict[str, Any]) -> RunConfig:
        doc = self.cfg.model_dump(mode="json", exclude={"sweep"})
        if self.slots > 1:
            doc["instance"] = {**doc["instance"], "gpus": 1}
        return RunConfig.model_validate(apply(doc, params))

    def _run_trial(self, trial, params: dict[str, Any], slot: int) -> None:
        from optuna.trial import TrialState

        from .phases import stop_reason

        ctx, number = self.ctx, trial.number
        started = time.monotonic()
        log.info("sweep: trial %d starts with %s%s", number, params, f" (GPU/process {slot})" if self.slots > 1 else "")
        pruned = threading.Event()
        history = LossHistory(ctx.attempt)
        report_lock = threading.Lock()

        def on_log(entry: dict) -> None:
            # With a pruner, each logged loss is written to the journal (a few per trial): the only
            # I/O on the training thread, so the pruner decides at the step it hears of.
            history.append(entry)
            if self.spec.pruner == "none" or entry.get("loss") is None:
                return
            with report_lock:
                trial.report(float(entry["loss"]), int(entry["step"]))
                if trial.should_prune():
                    pruned.set()

        def stop() -> str | None:
            return stop_reason(ctx.holder) or (f"pruned by the {self.spec.pruner} pruner" if pruned.is_set() else None)

        def on_progress(progress: dict) -> None:
            with self._lock:
                self._progress[number] = progress
                # No I/O here (the training thread): the sweep's counts as of the last start or end.
                self.watch.offer({**progress, "trial": number, "sweep": self._brief})

        try:
            cfg = self._trial_config(params)
            outcome = self._train(cfg, number, params, slot, stop, on_progress, on_log)
            stats = {**outcome.summary(), "seconds": round(time.monotonic() - started, 3)}
            trial.set_user_attr("training", stats)
            if ctx.holder.pending_stop() is not None:
                log.warning("sweep: trial %d stopped at step %d: %s", number, outcome.steps_done, outcome.stopped_by)
                return  # left running in the journal: a replacement machine goes on with it
            if pruned.is_set():
                trial.set_user_attr("seconds", stats["seconds"])
                self.study.tell(trial, state=TrialState.PRUNED)
                log.info("sweep: trial %d pruned at step %d", number, outcome.steps_done)
                return
            value, result = self._score(cfg, outcome, number, history)
            trial.set_user_attr("metrics", result.metrics)
            trial.set_user_attr("evaluation", {**result.info, "per_window": result.per_window})
            trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
            if value is None:
                trial.set_user_attr("error", f"the backtest {self.spec.metric} is not a number")
                self.study.tell(trial, state=TrialState.FAIL)
                return
            with self._lock:
                self.study.tell(trial, value)
                self._keep(number)
            log.info("sweep: trial %d done: %s %.4f", number, self.spec.metric, value)
        except Exception as exc:
            if ctx.holder.pending_stop() is not None:
                log.warning("sweep: trial %d ended by the run's stop: %s", number, exc)
                return
            log.error("sweep: trial %d failed:\n%s", number, traceback.format_exc())
            if self.study._storage.get_trial(trial._trial_id).state.is_finished():
                raise  # told already: what failed is the sweep's own bookkeeping, not the trial
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
            self.study.tell(trial, state=TrialState.FAIL)
        finally:
            try:
                self._save_journal()
            except Exception as exc:  # noqa: BLE001 - fenced or S3 down: the run's own checks say so
                log.warning("sweep: could not upload the journal: %s: %s", type(exc).__name__, exc)

    def _train(self, cfg: RunConfig, number: int, params: dict, slot: int, stop, on_progress, on_log):
        from ..model.basemodel import load_base
        from ..model.training import TrainingSettings, train_model
        from .phases import checkpoint_to_resume, train_in_processes, training_hooks

        ctx = self.ctx
        settings = TrainingSettings.from_config(cfg)
        folder = self.dir / "trials" / str(number)
        shutil.rmtree(folder, ignore_errors=True)
        prefix = ctx.layout.checkpoints(ctx.run_id) + f"trial-{trial_key(params)}/"
        resume_from = checkpoint_to_resume(ctx, prefix, folder / "resume")
        world = cfg.instance.gpu_count if self.slots == 1 else 1
        uploader = CheckpointUploader(ctx, prefix)
        try:
            if self.slots == 1 and world == 1:
                base = load_base(cfg.model.base, context_length=settings.context_length, seed=settings.seed)
                hooks = training_hooks(ctx.holder, self.watch, on_checkpoint=uploader.submit, on_log=on_log,
                                       fault=ctx.hooks.first_training_step, save_last=ctx.replaceable)
                hooks.report = lambda progress: on_progress(progress.to_dict())
                hooks.stop_flag = stop
                outcome = train_model(base, self.inputs, settings, folder / "train", hooks, resume_from=resume_from)
            else:
                # The base saved once per context length (a scratch model's config carries it).
                base_dir = ctx.base_model_dir / f"context-{settings.context_length}"
                with self._lock:
                    base = None if (base_dir / "config.json").is_file() else load_base(
                        cfg.model.base, context_length=settings.context_length, seed=settings.seed, on="cpu")
                    if base is not None:
                        base.save_pretrained(base_dir)
                outcome = train_in_processes(
                    ctx, base, self.inp.files, cfg, settings, world, folder=folder / "ranks", base_dir=base_dir,
                    output_dir=folder / "train", stop=stop, on_progress=on_progress,
                    on_checkpoint=uploader.submit_staged, on_log=on_log, resume_from=resume_from,
                    devices=str(slot) if self.slots > 1 else None,
                    threads=max(1, (os.cpu_count() or 1) // self.slots) if self.slots > 1 else None)
        finally:
            uploader.flush()
        self._local[number] = {"model_dir": outcome.model_dir, "pipeline": outcome.pipeline,
                               "evaluation": folder / "evaluation"}
        return outcome

    def _score(self, cfg: RunConfig, outcome, number: int, history: LossHistory):
        from ..model.basemodel import load_base, load_trained
        from ..model.evaluation import evaluate

        local = self._local[number]
        finetuned = local.pop("pipeline") or load_trained(outcome.model_dir)
        zero_shot = None if cfg.model.is_scratch else load_base(cfg.model.base, context_length=cfg.training.context_length)
        result = evaluate(finetuned, zero_shot, self.backtest, cfg.training.batch_size, cfg.training.context_length)
        result.write(local["evaluation"])
        history.write(local["evaluation"])
        scores = (result.metrics.get("finetuned") or {})
        value = scores.get(self.spec.metric)
        return (float(value) if value is not None and math.isfinite(value) else None), result

    # -- the winner -----------------------------------------------------------------------------
    def _completed(self):
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def _best(self):
        done = self._completed()
        return min(done, key=lambda t: (t.value, t.number)) if done else None

    def _keep(self, number: int) -> None:
        """Upload a finished trial's model and evaluation when a replacement machine may need it
        (the best so far) or the config keeps every model; drop the one it displaces."""
        best = self._best()
        if not (self.spec.keep_models or (self.ctx.replaceable and best is not None and best.number == number)):
            return
        local = self._local[number]
        prefix = self.ctx.layout.sweep_trial(self.ctx.run_id, number)
        self.ctx.upload_dir(Path(local["model_dir"]), prefix + "model/")
        self.ctx.upload_dir(local["evaluation"], prefix + "evaluation/")
        self._uploaded.add(number)
        if not self.spec.keep_models:
            for older in self._uploaded - {number}:
                self.ctx.delete_prefix(self.ctx.layout.sweep_trial(self.ctx.run_id, older))
            self._uploaded = {number}

    def _winner_files(self, best) -> tuple[Path, Path]:
        local = self._local.get(best.number)
        if local is not None:
            return Path(local["model_dir"]), local["evaluation"]
        # Trained on a machine that is gone: its files are in S3 (_keep).
        prefix = self.ctx.layout.sweep_trial(self.ctx.run_id, best.number)
        into = self.dir / "winner" / str(best.number)
        log.info("sweep: trial %d (the best) was trained on an earlier machine; downloading it", best.number)
        return download_prefix(self.ctx, prefix + "model/", into / "model"), \
            download_prefix(self.ctx, prefix + "evaluation/", into / "evaluation")

    def _tidy(self, winner: int) -> None:
        """The winner is the run's model now: its copy under sweep/trials/ goes (unless every model stays)."""
        if self.spec.keep_models:
            self.ctx.record.set_artifact("sweep_models_uri", self.ctx.uri(self.ctx.layout.sweep(self.ctx.run_id) + "trials/"))
            return
        self.ctx.delete_prefix(self.ctx.layout.sweep(self.ctx.run_id) + "trials/")

    # -- what the record and the monitor show ---------------------------------------------------
    def _outcomes(self) -> str:
        counts: dict[str, int] = {}
        for t in self.summary()["trials"]:
            counts[t["state"]] = counts.get(t["state"], 0) + 1
        return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none ran"

    def summary(self, brief: bool = False, stopped: bool = False) -> dict[str, Any]:
        """training.json's `sweep` (and, brief, the lock's progress): trials done / running / left,
        the best so far, and every trial's settings, scores, time and whether it was pruned."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        counted = [t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted")]
        done = sum(1 for t in counted if t.state.is_finished())
        running = sum(1 for t in counted if t.state == TrialState.RUNNING)
        best = self._best()
        out: dict[str, Any] = {
            "done": done, "running": running, "left": max(0, self.spec.budget - done - running),
            "budget": self.spec.budget, "metric": self.spec.metric,
            "best": {"trial": best.number, "value": best.value, "params": best.params} if best else None,
        }
        if brief:
            return out
        rows = []
        for t in trials:
            if t.state == TrialState.WAITING:
                continue
            attrs = t.user_attrs
            state = "interrupted" if attrs.get("interrupted") else STATES.get(t.state.name, t.state.name.lower())
            if state == "running" and stopped:
                state = "stopped"
            training = attrs.get("training") or {}
            rows.append({
                "number": t.number, "params": t.params, "state": state, "pruned": t.state == TrialState.PRUNED,
                "value": t.value if t.state == TrialState.COMPLETE else None, "metrics": attrs.get("metrics"), "seconds": attrs.get("seconds", training.get("seconds")),
                "steps_done": training.get("steps_done"), "total_steps": training.get("total_steps"),
                "final_loss": training.get("final_loss"), "resumed_from_step": training.get("resumed_from_step"),
                "attempt": attrs.get("attempt"),
                "retry_of": attrs.get("retry_of"), "error": attrs.get("error"),
            })
        return {**out, "sampler": self.spec.sampler_name, "pruner": self.spec.pruner, "parallel": self.slots,
                "direction": "minimize", "journal_uri": self.ctx.uri(self.ctx.layout.sweep_journal(self.ctx.run_id)),
                "trials": rows}

