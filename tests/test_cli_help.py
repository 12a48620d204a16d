"""Every command has help with an example (CliRunner: parsing only, no AWS)."""
import click
import pytest
from click.testing import CliRunner

from automation.cli.main import cli


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


ALL = [("",)] + [path for path, _ in _commands(cli)]


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "chronos-train")
def test_every_command_has_help_with_an_example(path):
    args = [p for p in path if p] + ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert "chronos-train" in result.output.split("Example:", 1)[1]


def test_contract_commands_exist():
    names = {" ".join(p) for p, _ in _commands(cli)}
    for expected in ("launch", "monitor", "status", "logs", "kill", "verify-cleanup", "runs", "doctor",
                     "data upload", "data ls", "data validate", "sandbox start", "sandbox stop", "sandbox status",
                     "sandbox env"):
        assert expected in names


def test_unknown_env_is_bad_usage():
    result = CliRunner().invoke(cli, ["--env", "qa", "runs"])
    assert result.exit_code == 2
    assert "unknown environment 'qa'" in result.output
    assert "Traceback" not in result.output


def test_bad_run_id_is_bad_usage():
    result = CliRunner().invoke(cli, ["logs", "nope"])
    assert result.exit_code == 2 and "not a run id" in result.output


def test_launch_help_shows_the_dry_run_example():
    result = CliRunner().invoke(cli, ["launch", "--help"])
    assert "chronos-train launch run.yaml --dry-run" in result.output.split("Example:", 1)[1]
