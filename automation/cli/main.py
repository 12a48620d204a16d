"""chronos-train: the command group with every subject's commands added to it."""
from __future__ import annotations

from . import data_commands, forecast_commands, report_commands, run_commands, sandbox_commands
from .group import cli

for command in (run_commands.launch, run_commands.doctor, run_commands.monitor, run_commands.logs,
                run_commands.kill, run_commands.runs, run_commands.verify_cleanup, report_commands.report,
                data_commands.data, sandbox_commands.sandbox, forecast_commands.forecast):
    cli.add_command(command)
cli.add_command(run_commands.monitor, name="status")
run_commands.runs.add_command(report_commands.runs_compare)


def main() -> None:
    try:
        cli(prog_name="chronos-train")
    finally:
        # The command is done and its output written: at exit Python runs the cyclic garbage
        # collector over everything still alive (botocore's service models: hundreds of thousands
        # of objects, EC2's alone parsed from 4 MB of JSON), about a third of `monitor`'s CPU,
        # to free memory the OS takes back anyway. Frozen objects are left out of that pass.
        import gc

        gc.freeze()
