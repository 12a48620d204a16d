"""Training through the agent's callback: progress, stop (kill/deadline) with a checkpoint,
periodic checkpoints, LoRA merged into a loadable model, and s3:// / scratch base models."""
from __future__ import annotations

import math

import pytest

from instance.model.training import Progress, RunMonitor, TrainingHooks, TrainingSettings, train_model
from instance.protocol.aws import client
from tests.agent_fixtures import synthetic_frame
from tests.conftest import ENV


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_monitor_rate_limits_reports_and_checks_the_flag_every_step():
    clock = FakeClock()
    reports, flags = [], []
    hooks = TrainingHooks(report=reports.append, stop_flag=lambda: flags.append(clock.t) and None, report_every=15)
    mon = RunMonitor(hooks, total_steps=100, batch_size=32, clock=clock)
    mon.begin()
    for step in range(1, 41):
        clock.t += 1.0  # one step per second
        mon.logged({"loss": 1.0 / step}, step)
        assert mon.step_end(step) is False
    assert [r.step for r in reports] == [1, 16, 31]  # the first step, then at most every 15 s
    assert len(flags) == 40
    p = mon.progress()
    assert p == Progress(step=40, total_steps=100, loss=1 / 40, eta_seconds=60.0, samples_per_second=32.0)


def test_monitor_stops_on_the_first_reason_and_fires_the_fault_once():
    clock = FakeClock()
    reason = {"now": None}
    faults = []
    mon = RunMonitor(TrainingHooks(stop_flag=lambda: reason["now"], fault=lambda: faults.append(1)), 10, 4, clock)
    mon.begin()
    assert mon.step_end(1) is False
    reason["now"] = "KilledByUser: killed"
    assert mon.step_end(2) is True and mon.stopped_by == "KilledByUser: killed"
    assert mon.step_end(3) is False  # asked once; the Trainer is already stopping
    assert faults == [1]


@pytest.fixture(scope="module")
def tiny_inputs():
    from instance.model.evaluation import backtest_split, to_chronos_inputs

    frame = synthetic_frame(n_items=4, length=64)
    backtest = backtest_split(frame, 8, windows=1)
    return backtest, to_chronos_inputs(backtest.train(), 8)


def _settings(**kw):
    base = dict(prediction_length=8, context_length=64, num_steps=12, batch_size=8, learning_rate=1e-3)
    return TrainingSettings(**{**base, **kw})


def test_stop_request_ends_training_with_a_checkpoint(tiny_inputs, tmp_path):
    from instance.model.basemodel import build_scratch

    saved, logged = [], []
    steps = {"n": 0}

    def stop_after_five():
        steps["n"] += 1
        return "MaxRuntimeExceeded: soft deadline" if steps["n"] >= 5 else None

    hooks = TrainingHooks(stop_flag=stop_after_five, on_checkpoint=lambda path, step: saved.append((path.name, step, path.is_dir())),
                          on_log=logged.append)
    out = train_model(build_scratch("tiny", 64, on="cpu"), tiny_inputs[1], _settings(num_steps=500), tmp_path, hooks)
    assert out.steps_done == 5 and out.stopped_by.startswith("MaxRuntimeExceeded")
    # The loss history: every logged step (here the stopping step, logged on request) with its learning rate.
    assert logged and logged[-1]["step"] == 5 and logged[-1]["learning_rate"] > 0
    assert set(logged[-1]) == {"step", "loss", "learning_rate", "grad_norm", "epoch"}
    assert saved == [("checkpoint-5", 5, True)]
    assert (tmp_path / "checkpoint-5" / "model.safetensors").exists()
    assert out.final_loss is not None and math.isfinite(out.final_loss)


def test_periodic_checkpoints_reach_the_hook(tiny_inputs, tmp_path):
    from instance.model.basemodel import build_scratch

    saved = []
    hooks = TrainingHooks(on_checkpoint=lambda path, step: saved.append(step))
    out = train_model(build_scratch("tiny", 64, on="cpu"), tiny_inputs[1], _settings(save_steps=4), tmp_path, hooks)
    assert saved == [4, 8, 12] and out.stopped_by is None and out.steps_done == 12


def test_lora_is_merged_into_a_model_that_loads(tiny_inputs, tmp_path):
    from chronos import Chronos2Pipeline

    from instance.model.basemodel import build_scratch
    from instance.model.evaluation import evaluate

    out = train_model(build_scratch("tiny", 64, on="cpu"), tiny_inputs[1], _settings(finetune_mode="lora", num_steps=4), tmp_path)
    names = {p.name for p in out.model_dir.iterdir()}
    assert {"config.json", "model.safetensors"} <= names and "adapter_config.json" not in names
    loaded = Chronos2Pipeline.from_pretrained(out.model_dir)
    scores = evaluate(loaded, None, tiny_inputs[0], batch_size=8).metrics["finetuned"]
    assert all(math.isfinite(v) for v in scores.values())


def test_s3_base_model_loads_through_chronos(s3, deployed, aws, tmp_path, monkeypatch):
    """An earlier run's model as a run's base, loaded as the agent loads it: Chronos's own loader,
    boto3's chain, the instance role's session in the machine's environment."""
    from chronos import Chronos2Pipeline

    from automation.sandbox.control import instance_credentials
    from instance.model.basemodel import build_scratch, load_base
    from instance.protocol.layout import Layout, new_run_id

    folder = tmp_path / "base"
    build_scratch("tiny", 64, on="cpu").save_pretrained(folder)
    models = Layout(ENV).models(new_run_id())
    for f in folder.iterdir():
        s3.upload_file(str(f), deployed.bucket, f"{models}{f.name}")
    machine = client("ec2", aws).run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint_url)
    for name, value in instance_credentials(aws, ENV, machine["InstanceId"]).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipeline = load_base(f"s3://{deployed.bucket}/{models}", context_length=64, on="cpu")
    assert isinstance(pipeline, Chronos2Pipeline)
    assert pipeline.model.config.chronos_pipeline_class == "Chronos2Pipeline"
    assert pipeline.model.config.architectures == ["Chronos2Model"]


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_a_resumed_training_continues_where_its_checkpoint_left_off(tiny_inputs, tmp_path):
    """Stopped at step 6 with a full checkpoint, then resumed from it on a 'new machine' (a fresh
    pipeline, a fresh folder): it goes on from step 6 to 12, its losses continue the curve, and
    it ends with the very weights an uninterrupted training reaches with the same seed."""
    import shutil

    from instance.model.basemodel import build_scratch

    settings = _settings(num_steps=12, seed=7)
    whole_losses, part_losses = [], []

    def logger(into):
        return TrainingHooks(report=lambda p: into.append((p.step, p.loss)), report_every=0)

    whole = train_model(build_scratch("tiny", 64, on="cpu", seed=7), tiny_inputs[1], _settings(num_steps=12, seed=7),
                        tmp_path / "whole", logger(whole_losses))

    saved = []
    calls = {"n": 0}

    def stop_at_six():
        calls["n"] += 1
        return "SpotInterrupted: notice" if calls["n"] >= 6 else None

    first = train_model(build_scratch("tiny", 64, on="cpu", seed=7), tiny_inputs[1], settings, tmp_path / "first",
                        TrainingHooks(stop_flag=stop_at_six, on_checkpoint=lambda p, s: saved.append(p)))
    assert first.steps_done == 6 and saved[-1].name == "checkpoint-6"
    checkpoint = tmp_path / "downloaded" / "checkpoint-6"
    shutil.copytree(saved[-1], checkpoint)
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}

    resumed = train_model(build_scratch("tiny", 64, on="cpu", seed=123), tiny_inputs[1], settings, tmp_path / "second",
                          logger(part_losses), resume_from=checkpoint)
    assert resumed.resumed_from_step == 6 and resumed.steps_done == 12 and resumed.stopped_by is None
    assert part_losses[0][0] == 7, "the first step after the resume is step 7"
    # Same batches in the same order after the resume (no replay, no skip): the losses follow the
    # uninterrupted curve step for step. Not bit for bit: the restored optimizer state goes
    # through a save and a load (measured: losses within 0.1 %, weights within 2e-3 at lr 1e-3).
    uninterrupted = dict(whole_losses[:-1])
    for step, loss in part_losses[1:-1]:
        assert loss == pytest.approx(uninterrupted[step], rel=0.01), (step, loss, uninterrupted[step])
    a, b = _weights(whole.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-2, f"resumed weights differ from the uninterrupted ones by {worst}"


def test_periodic_full_checkpoints_by_time(tiny_inputs, tmp_path):
    from instance.model.basemodel import build_scratch

    saved = []
    hooks = TrainingHooks(on_checkpoint=lambda path, step: saved.append(step), checkpoint_every=0.0)
    out = train_model(build_scratch("tiny", 64, on="cpu"), tiny_inputs[1], _settings(num_steps=4), tmp_path, hooks)
    assert out.steps_done == 4 and saved == [1, 2, 3], "every step is due at 0 s; the last is the model itself"
    assert (tmp_path / "checkpoint-3" / "optimizer.pt").exists(), "full checkpoints, not the weights alone"
