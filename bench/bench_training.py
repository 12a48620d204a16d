"""Training throughput through the agent's training function against raw Chronos2Pipeline.fit.

Same model (a fresh scratch model from the same seed), same data, same settings. The agent side
runs exactly what a run runs: its TrainerCallback with a real LockHolder on a moto server and
the training watch thread (a state GET every 2 s, progress written at most every 15 s, a
stop-flag check on the training thread at every step).
Both sides are timed around the whole call (Trainer setup, the loop and the final save).
Runs alternate (raw, agent, agent, raw, ...) so drift on a shared machine hits both alike; the
ratio is taken on the best run of each side (the run least disturbed by other work on the
machine), and the medians are reported beside it. Goal: agent >= 0.97x raw.

    .venv/bin/python bench/bench_training.py [--size tiny] [--steps 300] [--repeat 3] [--json]

On a GPU, Chronos's fit turns bf16 on by itself on Ampere or newer (sm80+); the report says
whether it was on.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from automation import motoserver  # noqa: E402
from automation.strictmoto import DEPLOYER  # noqa: E402
from instance.agent.lockholder import LockHolder, TrainingWatch  # noqa: E402
from instance.agent.phases import training_hooks  # noqa: E402
from instance.protocol.aws import AwsTarget, client  # noqa: E402
from instance.protocol.state import StateStore  # noqa: E402
from tests.agent_fixtures import synthetic_frame  # noqa: E402

PREDICTION_LENGTH = 24


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--series", type=int, default=64)
    p.add_argument("--repeat", type=int, default=6)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    from instance.model.basemodel import build_scratch, device
    from instance.model.evaluation import holdout_split, to_chronos_inputs
    from instance.model.training import TrainingSettings, train_model

    on = device()
    frame = synthetic_frame(n_items=args.series, length=args.context_length + 3 * PREDICTION_LENGTH, covariate=True)
    inputs = to_chronos_inputs(holdout_split(frame, PREDICTION_LENGTH).context, PREDICTION_LENGTH)
    settings = TrainingSettings(
        prediction_length=PREDICTION_LENGTH, context_length=args.context_length, num_steps=args.steps,
        batch_size=args.batch_size, learning_rate=1e-4,
    )

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

        def run_raw(out: Path) -> float:
            pipeline = build_scratch(args.size, args.context_length, seed=0, on=on)
            t0 = time.perf_counter()
            pipeline.fit(
                inputs, prediction_length=settings.prediction_length, context_length=settings.context_length,
                learning_rate=settings.learning_rate, num_steps=settings.num_steps, batch_size=settings.batch_size,
                output_dir=out, min_past=16, disable_tqdm=True, report_to=[], remove_printer_callback=True,
            )
            return time.perf_counter() - t0

        def run_agent(out: Path) -> float:
            pipeline = build_scratch(args.size, args.context_length, seed=0, on=on)
            lease = store.acquire("run-20261128-000000-beef")
            holder = LockHolder(store, lease)
            t0 = time.perf_counter()
            with TrainingWatch(holder) as watch:
                outcome = train_model(pipeline, inputs, settings, out, training_hooks(holder, watch))
            elapsed = time.perf_counter() - t0
            assert outcome.steps_done == settings.num_steps
            holder.release()
            return elapsed

        with tempfile.TemporaryDirectory() as tmp:
            run_raw(Path(tmp) / "warmup")  # first-call costs (kernels, allocator) hit neither side
            raw, agent = [], []
            for i in range(args.repeat):
                # Alternate which side goes first, so neither always inherits the other's state.
                order = [("raw", run_raw, raw), ("agent", run_agent, agent)]
                for name, fn, times in order if i % 2 == 0 else reversed(order):
                    times.append(fn(Path(tmp) / f"{name}{i}"))
    finally:
        server.terminate()

    samples = settings.num_steps * settings.batch_size
    raw_sps, agent_sps = samples / min(raw), samples / min(agent)
    median_ratio = statistics.median(raw) / statistics.median(agent)
    bf16 = bool(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8)
    result = {
        "device": torch.cuda.get_device_name(0) if on == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "bf16": bf16,
        "model": f"scratch:{args.size}",
        "steps": settings.num_steps,
        "batch_size": settings.batch_size,
        "context_length": settings.context_length,
        "raw_seconds": [round(x, 3) for x in raw],
        "agent_seconds": [round(x, 3) for x in agent],
        "raw_samples_per_second": round(raw_sps, 1),
        "agent_samples_per_second": round(agent_sps, 1),
        "ratio": round(agent_sps / raw_sps, 3),
        "median_ratio": round(median_ratio, 3),
        "goal": 0.97,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['device']}, bf16 {'on' if bf16 else 'off'}, {result['model']}, {settings.num_steps} steps x batch {settings.batch_size}")
        print(f"raw fit: {raw_sps:.1f} samples/s   agent: {agent_sps:.1f} samples/s   ratio {result['ratio']:.3f} "
              f"(medians {result['median_ratio']:.3f}; goal >= 0.97)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
