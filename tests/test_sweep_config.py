"""The run config's `sweep:` section (instance/protocol/sweepspec.py): what a sweep may change, how
it is refused (one sentence, exit 2, nothing changed), and the time estimate that refuses a budget
the run's time limit cannot hold."""
from __future__ import annotations

import pytest

from instance.protocol.runconfig import ConfigError, parse_config
from instance.protocol.sweepspec import apply, sweep_seconds, trial_key
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet
from tests.cli_helpers import run_cli
from tests.test_reliability_bad_inputs import (  # noqa: F401 - the catalogue's sandbox and harness
    assert_refused,
    assert_unchanged,
    env,
    sandbox,
    snapshot,
    write_config,
)

GRID = {"grid": {"learning_rate": [1.0e-4, 1.0e-3], "num_steps": [20, 40]}}


def config(sweep, base="scratch:tiny", **instance):
    doc = run_config(base=base)
    doc["instance"].update(instance)
    return parse_config({**doc, "sweep": sweep})


def test_a_grid_is_every_combination_and_its_budget_by_default():
    sweep = config(GRID).sweep
    assert sweep.budget == 4 and sweep.sampler_name == "grid" and sweep.metric == "wql" and sweep.pruner == "none"
    assert {(c["learning_rate"], c["num_steps"]) for c in sweep.corners()} == {
        (1.0e-4, 20), (1.0e-4, 40), (1.0e-3, 20), (1.0e-3, 40)}


def test_ranges_take_a_budget_and_default_to_tpe():
    sweep = config({"space": {"learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
                              "finetune_mode": ["full", "lora"]}, "trials": 6}).sweep
    assert sweep.budget == 6 and sweep.sampler_name == "tpe"


def test_a_trial_s_config_is_the_run_s_with_its_settings():
    doc = run_config()
    trial = apply(doc, {"learning_rate": 0.01, "num_steps": 30.0, "lora_rank": 4})
    assert trial["training"]["learning_rate"] == 0.01 and trial["training"]["num_steps"] == 30
    assert trial["model"] == {"base": "scratch:tiny", "finetune_mode": "lora", "lora_rank": 4}
    assert doc["training"]["learning_rate"] == 1.0e-3, "the run's own config is left as it was"
    assert trial_key({"a": 1, "b": 2}) == trial_key({"b": 2, "a": 1}) != trial_key({"a": 1, "b": 3})


def test_trials_side_by_side_end_when_the_longest_lane_ends():
    assert sweep_seconds([10, 10, 10, 10], 2) == 20
    assert sweep_seconds([30, 10, 10, 10], 2) == 30
    assert sweep_seconds([5, 5], 1) == 10


BAD = {
    "unknown key": ({**GRID, "samplr": "tpe"}, "sweep.samplr: unknown key; remove it or check its spelling"),
    "unknown setting": ({"grid": {"lr": [1.0e-3]}}, "'lr' is not a setting a sweep can change"),
    "empty grid": ({"grid": {}}, "sweep.grid: is empty; name at least one of learning_rate"),
    "a setting with no value": ({"grid": {"learning_rate": []}}, "learning_rate lists no value"),
    "grid and space": ({**GRID, "space": {"num_steps": {"low": 1, "high": 5}}}, "not both"),
    "ranges without a budget": ({"space": {"num_steps": {"low": 10, "high": 50}}}, "needs trials: (the budget)"),
    "grid sampler on ranges": ({"space": {"num_steps": {"low": 10, "high": 50}}, "trials": 2, "sampler": "grid"},
                               "sampler grid needs grid:"),
    "more trials than the grid": ({**GRID, "trials": 5}, "trials (5) exceeds the grid's 4 combinations"),
    "a trial that cannot run": ({"grid": {"learning_rate": [1.0e-3, 2.0]}},
                                "the trial with learning_rate=2.0 cannot run: training.learning_rate"),
    "a range of modes": ({"space": {"finetune_mode": {"low": 1, "high": 2}}, "trials": 2}, "takes a list of choices"),
    "a context shorter than the horizon": ({"space": {"context_length": {"low": 4, "high": 64}}, "trials": 2},
                                           "the trial with context_length=4 cannot run"),
    "more trials at a time than GPUs": ({**GRID, "parallel": 2}, "sweep.parallel (2) exceeds the 1 GPU"),
    "a budget past the time limit": ({"grid": {"num_steps": [1000000], "batch_size": [256, 512]}},
                                     "take at least"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_sweeps_are_refused_in_one_sentence(case):
    sweep, expected = BAD[case]
    with pytest.raises(ConfigError) as err:
        config(sweep, base="amazon/chronos-2")  # hub-sized: the time estimate of a full model
    assert expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_the_time_estimate_counts_trials_side_by_side():
    """A hub-sized model on T4s, 60 minutes: two trials of 30,000 steps one after the other on one
    GPU do not fit by the estimate (at least ~32 minutes each); the same two side by side on two
    GPUs of the type do."""
    sweep = {"grid": {"num_steps": [30000, 30010]}}
    one = run_config(base="amazon/chronos-2", batch_size=64, context_length=512, prediction_length=24)
    one["instance"].update(type="g4dn.12xlarge", max_runtime_minutes=60)
    with pytest.raises(ConfigError, match="2 trials \\(1 at a time on g4dn.12xlarge\\) take at least"):
        parse_config({**one, "sweep": {**sweep, "parallel": 1}, "instance": {**one["instance"], "gpus": 1}})
    assert parse_config({**one, "sweep": {**sweep, "parallel": 2}}).sweep.slots(4) == 2


CLI_CASES = {
    "unknown key": ({**GRID, "metrik": "wql"}, "sweep.metrik: unknown key"),
    "empty grid": ({"grid": {"learning_rate": []}}, "learning_rate lists no value"),
    "a budget past the time limit": ({"grid": {"num_steps": [1000000], "batch_size": [256, 512]}},
                                     "more than instance.max_runtime_minutes (60)"),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_launch_refuses_a_bad_sweep_and_changes_nothing(case, env, sandbox, tmp_path):  # noqa: F811
    sweep, expected = CLI_CASES[case]
    data = write_parquet(tmp_path / "data.parquet", synthetic_frame())
    before = snapshot(sandbox)
    path = write_config(tmp_path, str(data), sweep=sweep, model={"base": "amazon/chronos-2"})
    assert_refused(run_cli(env, "--local", "launch", path), expected)
    assert_unchanged(before, sandbox)
