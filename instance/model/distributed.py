"""Data-parallel training on the GPUs of one machine: what each rank does, and the folder
through which the ranks and the agent talk.

The agent starts `torchrun --standalone --nproc_per_node=N -m instance.model.distributed JOB`
(agent/torchrun.py): N processes ("ranks"), one per GPU, each holding a copy of the model.
PyTorch's DistributedDataParallel, which the Hugging Face Trainer under Chronos2Pipeline.fit
sets up by itself under torchrun, averages their gradients at every step. Nothing here is
home-made parallelism; these are the four things Chronos's fit does not know about ranks:

- Batches. `training.batch_size` is the batch of one optimizer step, whatever the machine:
  each rank draws batch_size / N series (the config refuses a batch that does not split
  evenly). Chronos's dataset samples from numpy's global RNG, seeded by the Trainer, so each
  rank gets seed + rank: N different streams, not one stream N times.
- Writes. Only rank 0 writes results: transformers' save_pretrained writes on rank 0 alone once
  a process group exists, rank 0 alone reports to the agent, and every rank waits at a barrier
  before a checkpoint is handed over and before exiting.
- Stops. The agent's stop (kill, soft deadline, spot notice) reaches rank 0 as a file; at every
  step each rank adds its wish to an all-reduce (MAX) on a CPU (gloo) group of its own, started
  at one step and read at the next, so every rank stops at the same step, one step after the
  wish, without a GPU sync. A rank that stopped alone would hang in the next gradient all-reduce.
- Failures. A rank that raises writes `error-rank{r}.json` (class, message, traceback) before it
  exits; torchrun ends the other ranks within a second of one failing (monitor interval 0.1 s)
  and exits non-zero, and the agent puts the earliest report in the run's record.

The folder (`RankChannel`), written only by its one writer each:
    job.json            agent → ranks: data files, settings, base model folder, output folder
    stop.json           agent → rank 0: why training must stop
    events.jsonl        rank 0 → agent: progress, logged losses, staged checkpoints, the outcome (append-only lines)
    error-rank{r}.json  rank r → agent: the exception that ended it
    rank{r}.pid         rank r: its process id (what to look for when a rank vanishes)
Ranks write nothing to S3: the lock, heartbeat, progress, checkpoint uploads and log shipping
stay in the agent process. Each rank's log lines go to torchrun's output, which the agent copies
into agent.log.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..protocol.artifacts import write_json_atomic
from ..protocol.processes import pid_alive
from .training import ONE_PROCESS, TrainingHooks, TrainingOutcome, TrainingSettings, stage_checkpoint

MODULE = "instance.model.distributed"  # what torchrun runs (`-m`), where it is also `__main__`
log = logging.getLogger(MODULE)


class InjectedRankFault(RuntimeError):
    """A rank failure a --local test asked for (CHRONOS_FAULT=training:rank<r>)."""


@dataclass(frozen=True)
class RankJob:
    files: list[str]
    settings: dict[str, Any]  # TrainingSettings
    base_dir: str  # the base model, saved once by the agent: ranks load it from disk, offline
    output_dir: str
    staging_dir: str  # where rank 0 hard-links each checkpoint for the agent to upload
    agent_pid: int  # ranks stop when the agent is gone
    world_size: int
    report_every: float = 15.0
    fault_ranks: list[int] = field(default_factory=list)
    resume_from: str | None = None  # a full checkpoint every rank goes on from (its own RNG state in it)
    columns: dict[str, Any] | None = None  # the run config's column roles (protocol.columns.ColumnNames)

    @property
    def training(self) -> TrainingSettings:
        return TrainingSettings(**self.settings)


@dataclass(frozen=True)
class RankError:
    rank: int
    error_class: str
    message: str
    traceback: str
    at: float  # time.time(): the earliest report is the cause, the later ones its echoes

    def sentence(self, world_size: int) -> str:
        return f"rank {self.rank} of {world_size} failed: {self.error_class}: {self.message}"


class RankChannel:
    """The folder the agent and the ranks share (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._offset = 0
        self._partial = b""

    @property
    def job_path(self) -> Path:
        return self.folder / "job.json"

    @property
    def _stop(self) -> Path:
        return self.folder / "stop.json"

    @property
    def _events(self) -> Path:
        return self.folder / "events.jsonl"

    def _error(self, rank: int) -> Path:
        return self.folder / f"error-rank{rank}.json"

    def pid_path(self, rank: int) -> Path:
        return self.folder / f"rank{rank}.pid"

    # -- the agent's side -------------------------------------------------------------------
    def write_job(self, job: RankJob) -> Path:
        return write_json_atomic(self.job_path, asdict(job))

    def request_stop(self, reason: str) -> None:
        if not self._stop.exists():
            write_json_atomic(self._stop, {"reason": reason, "at": time.time()})

    def new_events(self) -> Iterator[dict[str, Any]]:
        """Events rank 0 appended since the last call (complete lines only)."""
        try:
            with open(self._events, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                yield json.loads(line)

    def errors(self) -> list[RankError]:
        """Every rank's error report, earliest first."""
        found = []
        for path in self.folder.glob("error-rank*.json"):
            try:
                found.append(RankError(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # a report cut short by the kill that followed it
        return sorted(found, key=lambda e: e.at)

    # -- a rank's side ------------------------------------------------------------------------
    def read_job(self) -> RankJob:
        return RankJob(**json.loads(self.job_path.read_text()))

    def stop_reason(self) -> str | None:
        try:
            return json.loads(self._stop.read_text())["reason"]
        except FileNotFoundError:
            return None

    def emit(self, event: str, **payload: Any) -> None:
        """One line, one write on an O_APPEND file: the agent never reads half an event."""
        line = (json.dumps({"event": event, **payload}, default=str) + "\n").encode()
        fd = os.open(self._events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def report_error(self, rank: int, exc: BaseException) -> None:
        err = RankError(rank, type(exc).__name__, str(exc) or type(exc).__name__,
                        "".join(traceback.format_exception(exc)), time.time())
        write_json_atomic(self._error(rank), asdict(err))


# -- ranks over torch.distributed ---------------------------------------------------------------
@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_env(cls, environ=os.environ) -> "RankInfo":
        """What torchrun sets for each process it starts; without torchrun (a sweep's trial on a GPU
        of its own), one process alone: setting the variables would make the Trainer start a
        process group."""
        return cls(int(environ.get("RANK", 0)), int(environ.get("LOCAL_RANK", 0)), int(environ.get("WORLD_SIZE", 1)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class ProcessGroupRanks:
    """training.Ranks over torch.distributed. The training process group is NCCL on GPUs and
    gloo on CPUs; the stop agreement and the barriers use a gloo group of their own, so they
    never wait for the GPU."""

    def __init__(self, info: RankInfo, backend: str):
        import torch.distributed as dist

        self.rank, self.world_size = info.rank, info.world_size
        dist.init_process_group(backend=backend)  # accelerate (inside the Trainer) adopts it
        self.backend = backend
        self._group = dist.new_group(backend="gloo")
        self._flag = None
        self._pending = None

    def agree(self, wish: bool) -> bool:
        import torch
        import torch.distributed as dist

        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if int(self._flag.item()):
                return True
        self._flag = torch.tensor([1 if wish else 0], dtype=torch.int32)
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return False

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self._group)

    def end(self, step: int) -> list[int]:
        import torch.distributed as dist

        if self._pending is not None:  # every rank started one more agreement at its last step
            self._pending.wait()
            self._pending = None
        steps: list[Any] = [None] * self.world_size
        dist.all_gather_object(steps, step, group=self._group)
        return [int(s) for s in steps]

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def rank_device(info: RankInfo) -> tuple[str, str]:
    """(device, process group backend) for this rank: its own GPU with NCCL, or the CPU with gloo."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        return f"cuda:{info.local_rank}", "nccl"
    return "cpu", "gloo"


def rank_hooks(job: RankJob, info: RankInfo, channel: RankChannel) -> TrainingHooks:
    """Rank 0 reports and listens for the agent's stop; every rank may carry a test's fault."""
    fault = None
    if info.rank in job.fault_ranks:
        def fault():
            raise InjectedRankFault(f"fault injected at training on rank {info.rank} (CHRONOS_FAULT)")

    if not info.is_main:
        return TrainingHooks(fault=fault)

    def stop_flag() -> str | None:
        reason = channel.stop_reason()
        if reason is None and not pid_alive(job.agent_pid):
            reason = f"the agent (pid {job.agent_pid}) is gone"
        return reason

    def on_checkpoint(path: Path, step: int) -> None:
        staged = stage_checkpoint(path, Path(job.staging_dir))
        channel.emit("checkpoint", path=str(staged), step=step)

    return TrainingHooks(
        report=lambda progress: channel.emit("progress", progress=progress.to_dict()),
        stop_flag=stop_flag,
        on_checkpoint=on_checkpoint,
        on_log=lambda entry: channel.emit("log", entry=entry),
        fault=fault,
        report_every=job.report_every,
    )


def run_rank(job: RankJob, info: RankInfo, channel: RankChannel) -> TrainingOutcome:
    from .basemodel import load_base
    from .evaluation import training_inputs_of_files
    from .training import train_model

    settings = job.training
    on, backend = rank_device(info)
    # One process alone (a sweep's trial on its own GPU) needs no process group to agree with.
    ranks = ProcessGroupRanks(info, backend) if info.world_size > 1 else ONE_PROCESS
    from ..protocol.columns import ColumnNames

    columns = ColumnNames.from_json(job.columns) if job.columns else None
    inputs = training_inputs_of_files([Path(f) for f in job.files], settings.prediction_length, settings.eval_windows,
                                      columns)
    base = load_base(job.base_dir, context_length=settings.context_length, seed=settings.seed, on=on)
    log.info("rank %d of %d on %s (%s), %d series per step of %d", info.rank, info.world_size, on, backend,
             settings.batch_size // info.world_size, settings.batch_size)
    outcome = train_model(base, inputs, settings, Path(job.output_dir), rank_hooks(job, info, channel), ranks,
                          resume_from=Path(job.resume_from) if job.resume_from else None)
    if info.is_main:
        channel.emit("outcome", outcome=outcome.to_json())
    ranks.barrier()  # no rank leaves before rank 0 has written the model and the outcome
    # Only on success: after a failure, others may still wait in a collective (NCCL's teardown
    # would wait with them); the process exits and torchrun ends the rest.
    if isinstance(ranks, ProcessGroupRanks):
        ranks.close()
    return outcome


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: torchrun ... -m {MODULE} JOB.json", file=sys.stderr)
        return 2
    info = RankInfo.from_env()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"rank{info.rank} %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("filelock", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    channel = RankChannel(Path(argv[0]).parent)
    channel.pid_path(info.rank).write_text(str(os.getpid()))
    try:
        run_rank(channel.read_job(), info, channel)
    except BaseException as exc:
        log.error("rank %d failed:\n%s", info.rank, traceback.format_exc())
        channel.report_error(info.rank, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
