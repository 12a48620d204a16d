"""The shipped examples stay launchable: `make demo`'s config and data, and the AWS example."""
from pathlib import Path

from automation.datasets import check_local_dataset
from automation.runs.launch import estimate
from instance.protocol.runconfig import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_config_and_dataset_pass_launch_validation():
    cfg = load_config(EXAMPLES / "quickstart.yaml")
    files = check_local_dataset(EXAMPLES / cfg.dataset, cfg).files
    assert [f.name for f in files] == ["us_employment.parquet"]
    assert cfg.model.is_scratch and estimate(cfg, local=True).sentence().startswith("local run: $0.00")


def test_aws_example_parses_and_points_at_the_bucket():
    cfg = load_config(EXAMPLES / "aws.yaml")
    assert cfg.dataset_in_bucket and cfg.model.base == "amazon/chronos-2"
    assert estimate(cfg, local=False).worst_case_usd > 0


def test_spot_example_lists_types_of_one_gpu_count_and_passes_launch_validation():
    cfg = load_config(EXAMPLES / "spot.yaml")
    assert cfg.instance.spot and cfg.instance.instance_types == ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]
    assert cfg.instance.max_machines == 6 and cfg.training.checkpoint_minutes == 5
    assert [f.name for f in check_local_dataset(EXAMPLES / cfg.dataset, cfg).files] == ["us_employment.parquet"]


def test_sweep_example_is_a_four_trial_grid_that_passes_launch_validation():
    cfg = load_config(EXAMPLES / "sweep.yaml")
    assert cfg.sweep.budget == 4 and cfg.sweep.slots(cfg.instance.gpu_count) == 2
    assert (EXAMPLES / cfg.dataset).is_file()
