"""Training on several GPUs: the agent starts the ranks with torchrun and relays between them
and the lock.

The agent process keeps everything that talks to S3 (lock, heartbeat, progress, checkpoint
uploads, log shipping); the ranks (model/distributed.py) only train. While torchrun runs, the
agent's main thread relays every `RELAY_SECONDS`:
- rank 0's events (progress → the training watch, logged losses → the loss history, staged
  checkpoints → the uploader);
- a pending stop (kill, soft deadline, spot notice, SIGTERM, fenced) → stop.json, which the
  ranks turn into one common stopping step; ranks still running `STOP_GRACE_SECONDS` later are
  ended (SIGTERM to torchrun, which ends its ranks; SIGKILL after `KILL_AFTER_SECONDS`);
- torchrun's output (every rank's log) → agent.log, line by line, from a reader thread.
A rank that fails makes torchrun end the others (SIGTERM) and exit non-zero within seconds; the
run then fails with the cause (RankFailed, see `root_cause`), unless a stop was pending, which wins.

torchrun is run as its own entry point (torch.distributed.run.main, what the `torchrun` script
calls) inside `launch` below, which adds one thing: the ranks that failed, with their exit code
or signal, written as JSON. torchrun knows them but only prints them, and a rank killed by a
signal (the kernel's OOM killer) leaves no report of its own.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..model.distributed import MODULE, RankChannel, RankError, RankJob
from ..model.training import TrainingOutcome

log = logging.getLogger(__name__)
rank_log = logging.getLogger("ranks")

RELAY_SECONDS = 0.25
STOP_GRACE_SECONDS = 120.0  # to save a checkpoint and the model after the common stopping step
KILL_AFTER_SECONDS = 45.0  # torchrun gives its workers 30 s after SIGTERM
EXIT_SLACK_SECONDS = 1.0
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # holds instance/: the ranks import from it
LAUNCHER = "instance.agent.torchrun"  # this module, run as `launch`


class RankFailed(RuntimeError):
    """A training process (rank) failed; the message is its own error, or what is known of it."""


def torchrun_command(job_path: Path, nproc: int, failures: Path) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N -m instance.model.distributed JOB`, through this
    interpreter and `launch`."""
    return [sys.executable, "-m", LAUNCHER, str(failures), "--standalone", f"--nproc_per_node={nproc}",
            "-m", MODULE, str(job_path)]


def launch(argv: list[str]) -> int:
    """`python -m instance.agent.torchrun FAILURES.json <torchrun arguments>`: torchrun, which
    also writes the ranks that failed to FAILURES.json (see `RankExit`)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    from ..protocol.artifacts import write_json_atomic

    failures, args = Path(argv[0]), argv[1:]
    try:
        torchrun_main(args)
    except ChildFailedError as exc:
        write_json_atomic(failures, [asdict(RankExit.of(rank, f)) for rank, f in exc.failures.items()])
        raise
    return 0


@dataclass(frozen=True)
class RankExit:
    """How torchrun saw a rank end: its exit code, or the signal that ended it."""

    rank: int
    exitcode: int
    signal: str | None  # SIGTERM: torchrun ending the rank because another failed
    at: float  # when torchrun noticed (whole seconds)

    @classmethod
    def of(cls, rank: int, failure) -> "RankExit":  # a torch ProcessFailure
        name = signal.Signals(-failure.exitcode).name if failure.exitcode < 0 else None
        return cls(rank, failure.exitcode, name, float(failure.timestamp))


def root_cause(reports: list[RankError], exits: list[RankExit], world_size: int) -> str | None:
    """Which rank failed first, in one sentence; None when nothing says.

    A rank that raised left a report. A rank killed by a signal other than torchrun's SIGTERM
    left none, and the ranks waiting for it in a collective may raise after it (gloo: "connection
    closed by peer"): its death counts as first unless a report is more than `EXIT_SLACK_SECONDS`
    older, since torchrun notices an exit within a fraction of a second and stamps it in whole
    seconds."""
    reported = {r.rank for r in reports}
    killed = [e for e in exits if e.signal not in (None, "SIGTERM") and e.rank not in reported]
    first_report = reports[0] if reports else None
    first_kill = min(killed, key=lambda e: e.at) if killed else None
    if first_kill is not None and (first_report is None or first_kill.at <= first_report.at + EXIT_SLACK_SECONDS):
        return (f"rank {first_kill.rank} of {world_size} was killed by {first_kill.signal} without an error of its "
                f"own (out of memory? a crash in native code?)")
    return first_report.sentence(world_size) if first_report else None


def one_process_command(job_path: Path) -> list[str]:
    """A training of one process (a sweep's trial on a GPU of its own): the rank's module run
    directly, as torchrun would run it with one rank, without a process group."""
    return [sys.executable, "-m", MODULE, str(job_path)]


def train_on_ranks(job: RankJob, folder: Path, *, stop_reason: Callable[[], str | None],
                   on_progress: Callable[[dict], None], on_checkpoint: Callable[[Path, int], None],
                   on_log: Callable[[dict], None] = lambda entry: None, devices: str | None = None,
                   threads: int | None = None) -> TrainingOutcome:
    """Run `job` on `job.world_size` ranks and return rank 0's outcome (its pipeline not loaded).

    `stop_reason` (no I/O) says why training must stop, or None; `on_progress`, `on_log` and
    `on_checkpoint` receive rank 0's progress reports, logged losses and staged checkpoints.
    `devices`: the GPUs the ranks may see (CUDA_VISIBLE_DEVICES), when not all of them;
    `threads`: CPU threads for a process alone (OMP_NUM_THREADS), when it shares the CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    channel = RankChannel(folder)
    channel.write_job(job)
    failures = folder / "failures.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    if job.world_size == 1:
        cmd = one_process_command(channel.job_path)
        if threads is not None:
            # What torchrun does for its ranks: trials side by side on one CPU must not each start
            # a thread per core (OpenMP's spinning threads then fight; measured: 100 tiny steps
            # took 7 minutes instead of seconds with two trials on two shared cores).
            env.setdefault("OMP_NUM_THREADS", str(threads))
    else:
        cmd = torchrun_command(channel.job_path, job.world_size, failures)
    log.info("starting %d rank%s: %s", job.world_size, "s" if job.world_size > 1 else "", " ".join(cmd))
    # In the agent's process group: whatever ends the agent's group (kill --force of a local run,
    # Ctrl-C) ends torchrun, which ends its ranks; ranks left behind stop on their own once they
    # see the agent gone (distributed.rank_hooks).
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    output = _OutputCopier(proc)
    outcome: dict[str, Any] = {}
    stop_sent: float | None = None

    def relay() -> None:
        for event in channel.new_events():
            kind = event["event"]
            if kind == "progress":
                on_progress(event["progress"])
            elif kind == "log":
                on_log(event["entry"])
            elif kind == "checkpoint":
                on_checkpoint(Path(event["path"]), int(event["step"]))
            elif kind == "outcome":
                outcome.update(event["outcome"])

    try:
        while proc.poll() is None:
            relay()
            reason = stop_reason()
            if reason is not None and stop_sent is None:
                log.warning("asking the ranks to stop: %s", reason)
                channel.request_stop(reason)
                stop_sent = time.monotonic()
            if stop_sent is not None and time.monotonic() - stop_sent > STOP_GRACE_SECONDS:
                log.error("the ranks did not stop within %.0f s of the request; ending them", STOP_GRACE_SECONDS)
                _end(proc)
            time.sleep(RELAY_SECONDS)
    finally:
        if proc.poll() is None:  # the agent itself is leaving (an exception): take the ranks along
            _end(proc)
        output.join()
    relay()
    log.info("torchrun exited with %d", proc.returncode)
    if proc.returncode == 0 and outcome:
        return TrainingOutcome.from_json(outcome)
    raise RankFailed(_failure(channel, failures, job.world_size, proc.returncode))


def _failure(channel: RankChannel, failures: Path, world_size: int, code: int) -> str:
    try:
        exits = [RankExit(**e) for e in json.loads(failures.read_text())]
    except (OSError, ValueError, TypeError):
        exits = []
    cause = root_cause(channel.errors(), exits, world_size)
    if cause is not None:
        return cause
    if code == 0:
        return "the ranks ended without rank 0's outcome"
    return f"torchrun ended with exit code {code} and no rank's account of why; its output is in agent.log"


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun (it ends its ranks, SIGKILL after 30 s), then SIGKILL torchrun itself."""
    proc.terminate()
    try:
        proc.wait(KILL_AFTER_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("torchrun did not end within %.0f s of SIGTERM; killing it", KILL_AFTER_SECONDS)
        proc.kill()
        proc.wait()


class _OutputCopier:
    """Copies torchrun's output (every rank's log lines) into agent.log."""

    def __init__(self, proc: subprocess.Popen):
        self._thread = threading.Thread(target=self._copy, args=(proc.stdout,), name="ranks-output", daemon=True)
        self._thread.start()

    @staticmethod
    def _copy(stream) -> None:
        for line in stream:
            line = line.rstrip()
            if line:
                rank_log.info("%s", line)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
