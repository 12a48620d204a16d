"""chronos-train: the command group with every subject's commands added to it."""
from __future__ import annotations

from . import data_commands, report_commands, run_commands, sandbox_commands
from .group import cli

for command in (run_commands.launch, run_commands.doctor, run_commands.monitor, run_commands.logs,
                run_commands.kill, run_commands.runs, run_commands.verify_cleanup, report_commands.report,
                data_commands.data, sandbox_commands.sandbox):
    cli.add_command(command)
cli.add_command(run_commands.monitor, name="status")
run_commands.runs.add_command(report_commands.runs_compare)


def main() -> None:
    cli(prog_name="chronos-train")
