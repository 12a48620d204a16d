"""The lanes of a sweep whose trials run side by side (instance/agent/sweep.py), on a real Optuna
study, with each trial's work played here (no training): when the sweep's own bookkeeping fails
in one lane (an upload, the journal), the other lanes start no new trial: the run fails anyway,
and a trial started after the failure would only be paid for. The whole sweep through the agent
is tests/test_sweep_agent.py."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from instance.agent.sweep import Sweep
from instance.protocol.layout import Layout
from instance.protocol.runconfig import parse_config
from tests.agent_fixtures import run_config

FOUR_GPUS = {"type": "g5.12xlarge", "gpus": 4, "spot": False, "max_runtime_minutes": 60}


class _NoStop:
    def pending_stop(self):
        return None


class PlayedSweep(Sweep):
    """A sweep whose trials take `seconds` each; with `fail_first`, the bookkeeping of the first
    one asked fails after its trial was told (as an upload of its model would)."""

    def __init__(self, work: Path, sweep: dict, seconds: float = 0.3, fail_first: bool = True):
        cfg = parse_config(run_config() | {"instance": FOUR_GPUS, "sweep": sweep})
        ctx = SimpleNamespace(work_dir=work, attempt=1, run_id="run-20261204-000000-1a2b", layout=Layout("dev"),
                              holder=_NoStop())
        super().__init__(ctx, SimpleNamespace(config=cfg))
        self.seconds, self.fail_first = seconds, fail_first
        self.started: list[int] = []
        self._started_lock = threading.Lock()
        self.study = self._study()

    def _save_journal(self) -> None:  # no bucket here
        pass

    def _run_trial(self, trial, params, slot) -> None:
        with self._started_lock:
            self.started.append(trial.number)
        if self.fail_first and trial.number == 0:
            self.study.tell(trial, 1.0)
            raise OSError("could not upload the trial's model")
        time.sleep(self.seconds)
        self.study.tell(trial, 1.0 + trial.number)


EIGHT = {"grid": {"learning_rate": [1e-2, 1e-3, 1e-4, 1e-5, 2e-2, 2e-3, 2e-4, 2e-5]}, "parallel": 2}


def test_a_lane_whose_bookkeeping_failed_stops_the_other_lanes_from_starting_trials(tmp_path):
    sweep = PlayedSweep(tmp_path, EIGHT)
    sweep._run_lanes()
    assert [type(e).__name__ for e in sweep._errors] == ["OSError"]
    # The other lane ends the trial it had started (if it had one), and starts no other.
    assert sorted(sweep.started) in ([0], [0, 1]), sweep.started


def test_lanes_without_a_failure_run_the_whole_budget(tmp_path):
    sweep = PlayedSweep(tmp_path, EIGHT, seconds=0.02, fail_first=False)
    sweep._run_lanes()
    assert sweep._errors == [] and sorted(sweep.started) == list(range(8))
