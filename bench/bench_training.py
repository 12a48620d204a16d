"""Training throughput through the agent's training paths.

Two comparisons, same scratch model (same seed), same synthetic data, same settings:

--nproc 1 (default): the agent's training function against raw Chronos2Pipeline.fit, in this
  process. The agent side runs exactly what a one-GPU run runs: its TrainerCallback with a real
  LockHolder on a moto server and the training watch thread (a state GET every 2 s, progress
  written at most every 15 s, a stop-flag check on the training thread at every step). Both
  sides are timed around the whole call (Trainer setup, the loop and the final save).
  Goal: agent >= 0.97x raw.

--nproc N (N > 1): the agent's one-process path against its data-parallel path, N ranks started
  by torchrun (agent/torchrun.py: the real rank channel, stop relay and output copying). By
  default each rank takes `--batch-size` series per step, so N ranks do N times the work per step
  (weak scaling, how DDP scaling is usually quoted); with --same-step-batch they share it, as a
  config moved unchanged to N GPUs does (strong scaling). Compared on rank 0's training-loop
  throughput (samples/s from the first step to the last, all ranks together), which leaves out
  the ranks' start (interpreter, torch import, model load: seconds, paid once per run); wall time
  around the whole call is reported beside it. Scaling efficiency = samples/s with N /
  (N x samples/s with 1). Goal on GPUs: >= 0.9. On CPU the N ranks share the cores one process
  had (torchrun gives each rank one thread, one process uses them all).

Runs alternate (A, B, B, A, ...) so drift on a shared machine hits both alike; ratios are taken on
the best run of each side (the run least disturbed by other work), medians beside them.

    .venv/bin/python bench/bench_training.py [--nproc N [--same-step-batch]] [--size tiny] [--steps 200] [--repeat 6] [--json]

On a GPU, Chronos's fit turns bf16 (and TF32) on by itself on Ampere or newer (sm80+); the report
says what precision trained.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from automation.sandbox import motoserver  # noqa: E402
from automation.sandbox.strictmoto import DEPLOYER  # noqa: E402
from instance.agent.lockholder import LockHolder, TrainingWatch  # noqa: E402
from instance.agent.phases import stop_reason, training_hooks  # noqa: E402
from instance.protocol.aws import AwsTarget, client  # noqa: E402
from instance.protocol.state import StateStore  # noqa: E402
from tests.agent_fixtures import synthetic_frame, write_parquet  # noqa: E402

PREDICTION_LENGTH = 24
RUN_ID = "run-20261128-000000-beef"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=1, help="1: agent against raw fit; N > 1: N ranks against 1 process")
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64, help="series per step and process")
    p.add_argument("--same-step-batch", action="store_true",
                   help="with --nproc N: the N ranks share one step's --batch-size (what a config moved to N GPUs "
                        "does: strong scaling) instead of each taking --batch-size (weak scaling)")
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--series", type=int, default=64)
    p.add_argument("--repeat", type=int, default=6)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    from instance.model.basemodel import build_scratch, device
    from instance.model.evaluation import training_data
    from instance.model.training import TrainingSettings

    on = device()
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    frame = synthetic_frame(n_items=args.series, length=args.context_length + 3 * PREDICTION_LENGTH, covariate=True)
    files = [write_parquet(tmp / "data.parquet", frame)]
    _, inputs = training_data(files, PREDICTION_LENGTH)

    def settings(processes: int) -> TrainingSettings:
        step_batch = args.batch_size if args.same_step_batch else args.batch_size * processes
        return TrainingSettings(
            prediction_length=PREDICTION_LENGTH, context_length=args.context_length, num_steps=args.steps,
            batch_size=step_batch, learning_rate=1e-4,
        )

    def fresh_model():
        return build_scratch(args.size, args.context_length, seed=0, on=on)

    os.environ.update(DEPLOYER.env())  # the sandbox enforces IAM: act as its administrator
    os.environ.pop("AWS_SESSION_TOKEN", None)
    port = motoserver.free_port()
    server = motoserver.start(port)
    # On EC2, S3 runs elsewhere; here its stand-in shares the CPU with training. Lowest priority
    # keeps the sandbox's own request handling from being billed to the agent.
    os.setpriority(os.PRIO_PROCESS, server.pid, 19)
    try:
        aws = AwsTarget(region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
        s3 = client("s3", aws)
        s3.create_bucket(Bucket="bench")
        store = StateStore(s3, "bench", "dev")

        def as_the_agent(train):
            """Around `train(holder, watch)`: the lock held and watched, as during a run."""
            holder = LockHolder(store, store.acquire(RUN_ID))
            t0 = time.perf_counter()
            with TrainingWatch(holder) as watch:
                outcome = train(holder, watch)
            elapsed = time.perf_counter() - t0
            assert outcome.steps_done == args.steps, outcome
            holder.release()
            return elapsed, outcome

        def run_raw(out: Path):
            pipeline, s = fresh_model(), settings(1)
            t0 = time.perf_counter()
            pipeline.fit(
                inputs, prediction_length=s.prediction_length, context_length=s.context_length,
                learning_rate=s.learning_rate, num_steps=s.num_steps, batch_size=s.batch_size,
                output_dir=out, min_past=16, disable_tqdm=True, report_to=[], remove_printer_callback=True,
            )
            return time.perf_counter() - t0, None

        def run_agent(out: Path):
            from instance.model.training import train_model

            pipeline = fresh_model()
            return as_the_agent(lambda holder, watch: train_model(pipeline, inputs, settings(1), out,
                                                                  training_hooks(holder, watch)))

        def run_ranks(out: Path):
            from instance.agent.torchrun import train_on_ranks
            from instance.model.distributed import RankJob

            base_dir = tmp / "base-model"
            if not base_dir.exists():
                fresh_model().save_pretrained(base_dir)
            job = RankJob(files=[str(f) for f in files], settings=asdict(settings(args.nproc)), base_dir=str(base_dir),
                          output_dir=str(out), staging_dir=str(out / "staging"), agent_pid=os.getpid(),
                          world_size=args.nproc)
            return as_the_agent(lambda holder, watch: train_on_ranks(
                job, out / "ranks", stop_reason=lambda: stop_reason(holder), on_progress=watch.offer,
                on_checkpoint=lambda path, step: None))

        if args.nproc == 1:
            sides = [("raw", run_raw), ("agent", run_agent)]
        else:
            sides = [("one process", run_agent), (f"{args.nproc} ranks", run_ranks)]
        results: dict[str, list] = {name: [] for name, _ in sides}
        sides[0][1](tmp / "warmup")  # first-call costs (kernels, allocator) hit neither side
        for i in range(args.repeat):
            # Alternate which side goes first, so neither always inherits the other's state.
            for name, fn in sides if i % 2 == 0 else reversed(sides):
                results[name].append(fn(tmp / f"{name.replace(' ', '-')}{i}"))
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    bf16 = bool(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8)
    result = {
        "device": torch.cuda.get_device_name(0) if on == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "gpus_visible": torch.cuda.device_count() if on == "cuda" else 0,
        "bf16_expected": bf16,
        "model": f"scratch:{args.size}",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "batch": "shared by the ranks of a step" if args.same_step_batch else "per process",
        "context_length": args.context_length,
    }
    result.update(_raw_vs_agent(results, args) if args.nproc == 1 else _scaling(results, args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['device']}, {result['model']}, {args.steps} steps x batch {args.batch_size} {result['batch']}")
        print(result["summary"])
    return 0


def _raw_vs_agent(results: dict, args) -> dict:
    raw = [t for t, _ in results["raw"]]  # one process: --batch-size per step either way
    agent = [t for t, _ in results["agent"]]
    samples = args.steps * args.batch_size
    raw_sps, agent_sps = samples / min(raw), samples / min(agent)
    ratio, median_ratio = agent_sps / raw_sps, statistics.median(raw) / statistics.median(agent)
    precision = results["agent"][0][1].precision
    return {
        "precision": precision,
        "raw_seconds": [round(x, 3) for x in raw],
        "agent_seconds": [round(x, 3) for x in agent],
        "raw_samples_per_second": round(raw_sps, 1),
        "agent_samples_per_second": round(agent_sps, 1),
        "ratio": round(ratio, 3),
        "median_ratio": round(median_ratio, 3),
        "goal": 0.97,
        "summary": (f"precision {precision}; raw fit: {raw_sps:.1f} samples/s   agent: {agent_sps:.1f} samples/s   "
                    f"ratio {ratio:.3f} (medians {median_ratio:.3f}; goal >= 0.97)"),
    }


def _scaling(results: dict, args) -> dict:
    one, many = results["one process"], results[f"{args.nproc} ranks"]
    one_sps = [o.samples_per_second for _, o in one]
    many_sps = [o.samples_per_second for _, o in many]
    best_one, best_many = max(one_sps), max(many_sps)
    efficiency = best_many / (args.nproc * best_one)
    median_eff = statistics.median(many_sps) / (args.nproc * statistics.median(one_sps))
    outcome = many[0][1]
    return {
        "nproc": args.nproc,
        "precision": outcome.precision,
        "one_process_samples_per_second": one_sps,
        "ranks_samples_per_second": many_sps,
        "one_process_wall_seconds": [round(t, 3) for t, _ in one],
        "ranks_wall_seconds": [round(t, 3) for t, _ in many],
        "speedup": round(best_many / best_one, 3),
        "scaling_efficiency": round(efficiency, 3),
        "median_scaling_efficiency": round(median_eff, 3),
        "goal_on_gpus": 0.9,
        "summary": (f"precision {outcome.precision}; 1 process: {best_one:.1f} samples/s   {args.nproc} ranks: "
                    f"{best_many:.1f} samples/s (x{best_many / best_one:.2f})   scaling efficiency {efficiency:.3f} "
                    f"(medians {median_eff:.3f}; goal on GPUs >= 0.9); wall per run: 1 process "
                    f"{min(t for t, _ in one):.1f} s, {args.nproc} ranks {min(t for t, _ in many):.1f} s"),
    }


if __name__ == "__main__":
    sys.exit(main())
