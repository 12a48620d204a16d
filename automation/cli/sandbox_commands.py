"""Commands about the sandbox, the AWS stand-in that --local uses."""
from __future__ import annotations

import click

from ..errors import BAD_INPUT, ERROR
from .group import CliError, Options, emit_json, pass_opts


# -- sandbox ----------------------------------------------------------------------------------
@click.group()
def sandbox() -> None:
    """The embedded AWS stand-in (moto server) that --local uses.

    \b
    Example:
      chronos-train sandbox start
      chronos-train sandbox status --json
    """


@sandbox.command(name="start")
@pass_opts
def sandbox_start(opts: Options) -> None:
    """Start the sandbox on a free loopback port (no-op when running).

    \b
    Example:
      chronos-train sandbox start
    """
    from ..sandbox import control as sb

    info = sb.start()
    click.echo(f"sandbox running at {info.endpoint_url} (bucket {info.bucket(opts.env)})")


@sandbox.command(name="stop")
def sandbox_stop() -> None:
    """Stop the sandbox; everything in it is forgotten.

    \b
    Example:
      chronos-train sandbox stop
    """
    from ..sandbox import control as sb

    click.echo("sandbox stopped" if sb.stop() else "sandbox was not running")


@sandbox.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print endpoint_url, region and bucket as JSON.")
@pass_opts
def sandbox_status(opts: Options, as_json: bool) -> None:
    """Whether the sandbox runs, where, and the env's operator credentials (--json).

    \b
    Example:
      chronos-train sandbox status --json | jq -r .endpoint_url
    """
    from ..sandbox import control as sb

    info = sb.status()
    if as_json:
        emit_json(info.to_json(opts.env) if info else {"running": False})
    elif info:
        click.echo(f"running at {info.endpoint_url}, region {info.region}, bucket {info.bucket(opts.env)}")
    else:
        click.echo("not running; `chronos-train sandbox start` or any --local command starts it")
    if info is None:
        raise SystemExit(ERROR)


@sandbox.command(name="interrupt")
@click.argument("run_id", required=False)
@click.option("--rebalance", is_flag=True,
              help="Give a rebalance recommendation instead: the run saves a checkpoint at once and goes on.")
@pass_opts
def sandbox_interrupt(opts: Options, run_id: str | None, rebalance: bool) -> None:
    """Give the active local run's machine a spot interruption notice, as EC2 does: the machine
    is taken after CHRONOS_SPOT_NOTICE_SECONDS (120); a replacement resumes the run from its
    last checkpoint. Watch it with `monitor --follow`.

    \b
    Example:
      chronos-train --local sandbox interrupt
      chronos-train --local sandbox interrupt --rebalance
      chronos-train --local sandbox interrupt run-20261129-091500-ab12
    """
    from ..executors.local import request_spot_notice

    if not opts.local:
        raise CliError("only a --local run can be interrupted this way; use `chronos-train --local sandbox interrupt`",
                       BAD_INPUT)
    run, seconds = request_spot_notice(opts.target(), run_id, rebalance)
    if rebalance:
        click.echo(f"rebalance recommendation given to run {run}: it saves a full checkpoint at its next step "
                   "and goes on; nothing is taken")
        return
    click.echo(f"spot notice given to run {run}: its machine is taken in {seconds:.0f} s; "
               f"follow it with `chronos-train --local monitor {run} --follow`")


@sandbox.command(name="env")
@pass_opts
def sandbox_env(opts: Options) -> None:
    """Print `export` lines that point awscli and boto3 at the sandbox as the env's operator
    (IAM is enforced there: the operator may do what the operator policy allows, no more).

    \b
    Example:
      eval "$(chronos-train sandbox env)" && aws s3 ls
    """
    import shlex

    from ..sandbox import control as sb

    info = sb.status()
    if info is None:
        raise CliError("the sandbox is not running; start it with `chronos-train sandbox start`")
    # A session token or profile left in the shell would override or spoil these keys.
    click.echo("unset AWS_SESSION_TOKEN AWS_PROFILE")
    for name, value in sb.env_vars(info, opts.env).items():
        click.echo(f"export {name}={shlex.quote(value)}")
