"""The agent's smaller parts: the lock holder (kills, fencing, stop reasons), the heartbeat
thread, the soft deadline, the fault hooks, the cost estimate, and light imports."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from instance.agent.lockholder import (Heartbeat, KilledByUser, LockHolder, MaxRuntimeExceeded, NoticeWatch,
                                       SpotInterrupted)
from instance.agent.main import deadline_margin_seconds, soft_deadline
from instance.protocol.record import estimate_cost
from instance.protocol.state import Fenced, RunKilled, StateStore
from instance.protocol.status import Status
from instance.protocol.timeutil import iso, utcnow
from tests.agent_hooks import EnvFaults, InjectedFault
from tests.conftest import ENV

RID = "run-20261128-140000-1111"


@pytest.fixture
def store(s3, bucket):
    return StateStore(s3, bucket, ENV)


def test_poll_adopts_a_kill_and_moves_on_from_it(store):
    holder = LockHolder(store, store.acquire(RID))
    holder.move(Status.DATA_SYNC)
    store.request_kill(RID, requested_by="cli")
    assert holder.pending_stop() is None  # nothing known yet, no I/O
    holder.poll()
    assert isinstance(holder.pending_stop(), KilledByUser)
    holder.move(Status.CLEANUP)
    assert store.read().status == Status.CLEANUP


def test_a_write_that_hits_the_kill_adopts_it(store):
    holder = LockHolder(store, store.acquire(RID))
    store.request_kill(RID, requested_by="cli")
    with pytest.raises(RunKilled):
        holder.move(Status.DATA_SYNC)
    assert holder.killed
    holder.beat(progress={"step": 1})  # heartbeats go on in the killed state
    assert store.read().state["progress"] == {"step": 1}


@pytest.mark.parametrize("takeover", ["released", "other_run"])
def test_fencing_is_sticky_and_stops_every_write(store, takeover):
    holder = LockHolder(store, store.acquire(RID))
    store.release(store.read())
    if takeover == "other_run":
        store.acquire("run-20261128-150000-2222")
    with pytest.raises(Fenced):
        holder.move(Status.DATA_SYNC)
    assert holder.fenced is not None and not isinstance(holder.fenced, RunKilled)
    with pytest.raises(Fenced):
        holder.beat()
    with pytest.raises(Fenced):
        holder.ensure_holder()
    with pytest.raises(Fenced):
        holder.release()


def test_release_then_release_again(store):
    holder = LockHolder(store, store.acquire(RID))
    assert holder.release() is True and store.read() is None
    assert holder.release() is False
    holder.ensure_holder()  # released by ourselves: not fenced


def test_stop_reasons_in_priority():
    from instance.protocol.state import Lease

    holder = LockHolder(None, Lease(etag='"x"', state={"run_id": RID, "status": "training"}), clock=lambda: 10.0)
    assert holder.pending_stop() is None
    holder.deadline = 5.0
    assert isinstance(holder.pending_stop(), MaxRuntimeExceeded)
    holder.spot_notice = '{"action": "terminate"}'
    assert isinstance(holder.pending_stop(), SpotInterrupted)
    assert MaxRuntimeExceeded.reason == "max_runtime_exceeded" and SpotInterrupted.reason == "spot_interrupted"
    assert KilledByUser.final_status == "killed" and MaxRuntimeExceeded.final_status == "failed"


def test_heartbeat_thread_beats_notices_spot_and_stops_when_fenced(store):
    holder = LockHolder(store, store.acquire(RID))
    probes = iter([None, '{"action": "terminate"}'])
    beat = Heartbeat(holder, 0.05, lambda: {"agent": {"pid": 1}}).start()
    watch = NoticeWatch(holder, 0.05, probe=lambda: next(probes, None)).start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (store.read().seq < 3 or holder.spot_notice is None):
            time.sleep(0.05)
        assert store.read().state["agent"] == {"pid": 1} and store.read().state["phase"] == "initialization"
        assert isinstance(holder.pending_stop(), SpotInterrupted)
        store.release(store.read())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and beat._thread.is_alive():
            time.sleep(0.05)
        assert not beat._thread.is_alive() and holder.fenced is not None
    finally:
        beat.stop()
        watch.stop()


def test_a_rebalance_recommendation_asks_for_one_checkpoint_and_stops_nothing(store):
    holder = LockHolder(store, store.acquire(RID))
    watch = NoticeWatch(holder, 60, probe=lambda: None, rebalance_probe=lambda: '{"noticeTime": "now"}')
    watch.tick()
    assert holder.rebalance and holder.pending_stop() is None, "training goes on"
    assert holder.take_rebalance() and not holder.take_rebalance(), "one checkpoint per recommendation"
    notice = NoticeWatch(holder, 60, probe=lambda: '{"action": "terminate"}', rebalance_probe=lambda: None)
    notice.tick()
    assert isinstance(holder.pending_stop(), SpotInterrupted), "a notice still stops the run"


def test_a_machine_with_a_quoted_spot_price_costs_that_price():
    from instance.protocol.attempts import machine_entry
    from instance.protocol.pricing import quoted
    from instance.protocol.record import machines_cost

    start = utcnow() - timedelta(hours=2)
    quotes = {"g5.xlarge": {"us-east-1a": 0.5}}
    priced = machine_entry("i-1", "g5.xlarge", "us-east-1a", "spot", 1, start, quoted(quotes, "g5.xlarge", "us-east-1a"))
    table = machine_entry("i-2", "g5.xlarge", "us-east-1b", "spot", 1, start, quoted(quotes, "g5.xlarge", "us-east-1b"))
    end = start + timedelta(hours=2)
    # Both with the 100 GB root volume's share; on-demand is the same hours at the table's price.
    assert machines_cost([priced], "ec2", end) == (1.0219, 2.0339), "AWS's quote"
    assert table["hourly_usd"] is None and machines_cost([table], "ec2", end) == (0.8619, 2.0339), "else the table's"


def test_soft_deadline_counts_from_the_lock_and_keeps_a_margin(monkeypatch):
    monkeypatch.delenv("CHRONOS_DEADLINE_SECONDS", raising=False)
    started = iso(utcnow() - timedelta(minutes=10))
    left = soft_deadline(started, 60, clock=lambda: 0.0)
    assert left == pytest.approx(60 * 60 - 300 - 600, abs=2)
    assert deadline_margin_seconds(10) == 150 and deadline_margin_seconds(240) == 300
    monkeypatch.setenv("CHRONOS_DEADLINE_SECONDS", "3")
    assert soft_deadline(started, 60, clock=lambda: 100.0) == 103.0


def test_the_tests_fault_hooks_parse_fire_and_pause():
    hooks = EnvFaults({"CHRONOS_FAULT": "training, cleanup:lock, results_sync", "CHRONOS_PAUSE": "data_sync:0.2"})
    with pytest.raises(InjectedFault):
        hooks.first_training_step()
    hooks.phase_started("training", check=lambda: None)  # training fails at its first step, not here
    with pytest.raises(InjectedFault):
        hooks.phase_started("results_sync", check=lambda: None)
    with pytest.raises(InjectedFault):
        hooks.cleanup_step("lock")
    hooks.cleanup_step("lock")  # only once
    started = time.monotonic()
    hooks.phase_started("data_sync", check=lambda: None)
    assert 0.15 < time.monotonic() - started < 2
    with pytest.raises(KilledByUser):
        hooks.phase_started("data_sync", check=lambda: (_ for _ in ()).throw(KilledByUser("killed")))


def test_an_ec2_agent_has_no_hooks_and_a_local_one_loads_what_it_is_told():
    from instance.agent.hooks import Hooks, for_agent

    told = {"CHRONOS_AGENT_HOOKS": "tests.agent_hooks:EnvFaults"}
    assert type(for_agent(False, told)) is Hooks, "an EC2 agent ignores the variable"
    assert isinstance(for_agent(True, told), EnvFaults)
    assert type(for_agent(True, {})) is Hooks


def test_cost_estimates():
    ec2 = estimate_cost({"executor": "ec2", "instance_type": "g4dn.xlarge", "spot": False}, 3600)
    assert ec2["hourly_usd"] == pytest.approx(0.526 + 100 * 0.08 / 730, abs=1e-4) and ec2["estimated_usd"] > 0.5
    spot = estimate_cost({"executor": "ec2", "instance_type": "g4dn.xlarge", "spot": True}, 3600)
    assert spot["estimated_usd"] < ec2["estimated_usd"]
    local = estimate_cost({"executor": "local", "instance_type": "g4dn.xlarge"}, 3600)
    assert local["estimated_usd"] == 0.0 and local["note"]


def test_agent_modules_import_light():
    heavy = ["torch", "chronos", "transformers", "pandas", "pyarrow", "pulumi", "click", "automation"]
    code = (
        "import sys, json; import instance.agent.main, instance.model.dataset, instance.boot.bootstrap, "
        "instance.agent.cleanup, instance.model.training, instance.model.evaluation, instance.model.basemodel, instance.agent.phases; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout))
    assert not [m for m in heavy if m in loaded]


def test_training_watch_finds_the_kill_and_writes_progress_off_the_training_thread(store):
    from instance.agent.lockholder import TrainingWatch

    holder = LockHolder(store, store.acquire(RID))
    holder.move(Status.DATA_SYNC)
    holder.move(Status.TRAINING)
    with TrainingWatch(holder, poll_every=0.05) as watch:
        watch.offer({"step": 3, "total_steps": 10})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (store.read().state.get("progress") or {}).get("step") != 3:
            time.sleep(0.05)
        assert store.read().state["progress"]["step"] == 3
        store.request_kill(RID, requested_by="cli")
        while time.monotonic() < deadline and holder.pending_stop() is None:
            time.sleep(0.05)
        assert isinstance(holder.pending_stop(), KilledByUser)
        watch.offer({"step": 4, "total_steps": 10})
    assert store.read().state["progress"]["step"] == 4  # the last progress is flushed on exit


def test_soft_deadline_from_the_dead_man_switch_reads_one_clock(monkeypatch):
    """The bootstrap hands over the switch's time on this machine's clock: the lock's start,
    written by another machine, no longer matters (a launcher clock 10 minutes off changes nothing)."""
    monkeypatch.delenv("CHRONOS_DEADLINE_SECONDS", raising=False)
    shutdown_at = time.time() + 3600
    for skewed_start in (iso(utcnow() - timedelta(minutes=10)), iso(utcnow() + timedelta(minutes=10))):
        left = soft_deadline(skewed_start, 60, clock=lambda: 0.0, shutdown_at=shutdown_at)
        assert left == pytest.approx(3600 - deadline_margin_seconds(60), abs=2)


def test_gpu_is_expected_on_ec2_types_and_not_in_local_runs():
    from instance.agent.gpucheck import gpu_expected

    assert gpu_expected("auto", "g4dn.xlarge", local=False)
    assert not gpu_expected("auto", "g4dn.xlarge", local=True)
    assert gpu_expected("yes", "g4dn.xlarge", local=True) and not gpu_expected("no", "g5.xlarge", local=False)


def test_gpu_check_names_what_failed():
    import subprocess

    from instance.agent.gpucheck import GpuUnavailable, check_gpu

    def missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "nvidia-smi")

    def driver_down(*args, **kwargs):
        return subprocess.CompletedProcess(args, 9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")

    def driver_up(*args, **kwargs):
        return subprocess.CompletedProcess(args, 0, "GPU 0: Tesla T4 (UUID: GPU-1)\n", "")

    with pytest.raises(GpuUnavailable, match="nvidia-smi could not run"):
        check_gpu("g4dn.xlarge", run=missing)
    with pytest.raises(GpuUnavailable, match="couldn't communicate with the NVIDIA driver"):
        check_gpu("g4dn.xlarge", run=driver_down)
    with pytest.raises(GpuUnavailable, match="torch cannot use CUDA"):  # a CPU build of torch, or a broken CUDA
        check_gpu("g4dn.xlarge", run=driver_up, cuda_devices=lambda: 0)
    assert GpuUnavailable.reason == "gpu_unavailable"


def test_gpu_check_asks_this_machines_torch():
    """With no stand-in for torch, the check's answer is this machine's: a CPU build (this dev
    machine) is refused naming torch's build; a machine whose torch sees CUDA passes."""
    import re
    import subprocess

    import torch

    from instance.agent.gpucheck import GpuUnavailable, check_gpu

    def driver_up(*args, **kwargs):
        return subprocess.CompletedProcess(args, 0, "GPU 0: NVIDIA H200 (UUID: GPU-1)\n", "")

    if torch.cuda.is_available() and torch.cuda.device_count() >= 1:
        assert "H200" in check_gpu("p5.48xlarge", run=driver_up)
    else:
        with pytest.raises(GpuUnavailable, match=re.escape(f"torch cannot use CUDA (torch {torch.__version__}")):
            check_gpu("g4dn.xlarge", run=driver_up)


def test_gpu_check_counts_the_gpus_the_run_trains_on():
    import subprocess

    from instance.agent.gpucheck import GpuUnavailable, check_gpu

    def four(*args, **kwargs):
        lines = "".join(f"GPU {i}: NVIDIA A10G (UUID: GPU-{i})\n" for i in range(4))
        return subprocess.CompletedProcess(args, 0, lines, "")

    assert check_gpu("g5.12xlarge", 4, run=four, cuda_devices=lambda: 4).count("A10G") == 4
    with pytest.raises(GpuUnavailable, match="trains on 4 GPUs of g5.12xlarge, but torch sees 2"):
        check_gpu("g5.12xlarge", 4, run=four, cuda_devices=lambda: 2)
    with pytest.raises(GpuUnavailable, match="trains on 8 GPUs of g5.48xlarge, but the driver lists 4"):
        check_gpu("g5.48xlarge", 8, run=four, cuda_devices=lambda: 8)


def test_price_table_knows_the_multi_gpu_types():
    from instance.protocol.pricing import PRICES

    for name, gpus, memory in (("g5.12xlarge", 4, 24), ("g5.48xlarge", 8, 24), ("g6.12xlarge", 4, 24),
                               ("p4d.24xlarge", 8, 40), ("p5.48xlarge", 8, 80)):
        assert (PRICES[name].gpus, PRICES[name].gpu_memory_gb) == (gpus, memory)
        assert PRICES[name].gpu.startswith(f"{gpus}x ")
    assert all(p.spot < p.on_demand for p in PRICES.values())
