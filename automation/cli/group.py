"""The command group: global options, the one mapping from what a command raised to a sentence
and the exit code of DESIGN.md (`ChronosGroup.invoke`), and the output helpers every command
uses. Heavy modules load lazily, so `monitor` stays fast (no torch, chronos or pulumi).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import click

from ..errors import BAD_INPUT, ERROR, INTERRUPTED, OK, RUN_FAILED, RUN_KILLED, ChronosError

FINAL_EXIT = {"completed": OK, "failed": RUN_FAILED, "killed": RUN_KILLED}


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = ERROR):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def as_cli_error(exc: BaseException) -> CliError | None:
    """The one mapping from what a command raised to a sentence and an exit code; None for what
    click handles itself (its own errors, exits, aborts)."""
    if isinstance(exc, (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit)):
        return None
    if isinstance(exc, ChronosError):
        return CliError(str(exc), exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return CliError("interrupted", INTERRUPTED)
    from ..context import translate_aws_error

    target = click.get_current_context().meta.get("chronos.target")
    translated = translate_aws_error(exc, target) if target and isinstance(exc, Exception) else exc
    if isinstance(translated, ChronosError):
        return CliError(str(translated), translated.exit_code)
    return CliError(f"{type(exc).__name__}: {exc} (set CHRONOS_DEBUG=1 for a traceback)", ERROR)


class ChronosGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BaseException as exc:
            from ..settings import settings

            error = as_cli_error(exc)
            if error is None or (settings().debug and not isinstance(exc, (ChronosError, KeyboardInterrupt))):
                raise
            raise error from None


@dataclass(frozen=True)
class Options:
    env: str
    local: bool

    def target(self, verify: bool = False):
        """Where the command acts; `verify`: see context.resolve."""
        from ..context import resolve

        target = resolve(self.env, self.local, verify)
        click.get_current_context().meta["chronos.target"] = target  # for error messages
        return target


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def emit(as_json: bool, doc, lines) -> None:
    """A reading command's answer: the JSON document, or its lines for people."""
    if as_json:
        emit_json(doc)
        return
    for line in lines:
        click.echo(line)


def say(line: str) -> None:
    """A progress line for people, on stderr (stdout stays for what scripts read)."""
    click.echo(line, err=True)


# ---------------------------------------------------------------------------------------------
def _default_env() -> str:
    from ..settings import settings

    return settings().env


def _default_local() -> bool:
    from ..settings import settings

    return settings().local


@click.group(cls=ChronosGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--env", default=_default_env, show_default="dev, or $CHRONOS_ENV", help="Environment: dev, stage or prod.")
@click.option("--local", is_flag=True, default=_default_local,
              help="Use the embedded sandbox (moto) and a local agent process instead of AWS ($CHRONOS_LOCAL=1).")
@click.pass_context
def cli(ctx: click.Context, env: str, local: bool) -> None:
    """Train Chronos models on a rented AWS GPU; pay only while it trains.

    \b
    Example:
      chronos-train --local launch examples/quickstart.yaml --follow
      chronos-train runs
    """
    ctx.obj = Options(env=env, local=local)


pass_opts = click.make_pass_decorator(Options)

def check_run_id(run_id: str) -> None:
    from instance.protocol.layout import LayoutError, check_run_id

    try:
        check_run_id(run_id)
    except LayoutError as exc:
        raise CliError(str(exc), BAD_INPUT) from None
