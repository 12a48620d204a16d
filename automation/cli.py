"""chronos-train: thin click commands. Each parses, calls one function, and turns domain
errors into one sentence with the exit code of DESIGN.md. Heavy modules load lazily, so
`monitor` stays fast (no torch, chronos or pulumi).
"""
from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .errors import BAD_INPUT, ERROR, LEFTOVERS, OK, RUN_FAILED, RUN_KILLED, ChronosError

FINAL_EXIT = {"completed": OK, "failed": RUN_FAILED, "killed": RUN_KILLED}


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = ERROR):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass(frozen=True)
class Options:
    env: str
    local: bool

    def target(self):
        from .context import resolve

        target = resolve(self.env, self.local)
        click.get_current_context().meta["chronos.target"] = target  # for error messages
        return target


def handles_errors(fn):
    """Domain errors → one sentence + exit code; unexpected ones too (traceback with CHRONOS_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ChronosError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise CliError("interrupted", 130) from None
        except Exception as exc:
            if os.environ.get("CHRONOS_DEBUG"):
                raise
            from .context import translate_aws_error

            target = click.get_current_context().meta.get("chronos.target")
            translated = translate_aws_error(exc, target) if target else exc
            if isinstance(translated, ChronosError):
                raise CliError(str(translated), translated.exit_code) from None
            raise CliError(f"{type(exc).__name__}: {exc} (set CHRONOS_DEBUG=1 for a traceback)", ERROR) from None

    return wrapper


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


# ---------------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--env", default=lambda: os.environ.get("CHRONOS_ENV", "dev"), show_default="dev, or $CHRONOS_ENV",
              help="Environment: dev, stage or prod.")
@click.option("--local", is_flag=True, default=lambda: os.environ.get("CHRONOS_LOCAL", "") not in ("", "0"),
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


# -- launch -----------------------------------------------------------------------------------
@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--follow", is_flag=True, help="Stay and watch the run until it ends (exit 0/4/5).")
@click.option("--download/--no-download", default=True, show_default=True,
              help="With --follow: fetch the finished model into ./runs/RUN_ID/.")
@pass_opts
@handles_errors
def launch(opts: Options, config: Path, follow: bool, download: bool) -> None:
    """Validate CONFIG, take the lock, start the run; prints the run id.

    A bad config or dataset costs nothing: exit 2, no lock, no instance.
    Exit 3 when another run holds the lock.

    \b
    Example:
      chronos-train --local launch examples/quickstart.yaml --follow
      RUN=$(chronos-train launch run.yaml)
    """
    from . import executors
    from .launch import launch as do_launch, plan

    target = opts.target()
    lp = plan(target, config)
    err = click.get_text_stream("stderr")
    click.echo(lp.estimate.sentence(), file=err)
    executor = executors.for_target(target)
    launched = do_launch(target, lp, executor)
    click.echo(launched.run_id)
    flag = " --local" if opts.local else ""
    click.echo(
        f"run {launched.run_id} started on {executor.name} (instance {launched.instance_id}, dataset "
        f"{launched.dataset_prefix})\n  watch: chronos-train{flag} monitor {launched.run_id} --follow\n"
        f"  logs:  chronos-train{flag} logs {launched.run_id} --follow\n  stop:  chronos-train{flag} kill {launched.run_id}",
        file=err,
    )
    if follow:
        _follow(opts, target, executor, launched.run_id, download, as_json=False)


# -- monitor / status ---------------------------------------------------------------------------
def _monitor(opts: Options, run_id: str | None, follow: bool, as_json: bool, download: bool) -> None:
    from .runs import view

    target = opts.target()
    if run_id:
        _check_run_id(run_id)
    v = view(target, run_id)
    if not follow or not v.active:
        if as_json:
            emit_json(v.to_json())
        else:
            from .render import console, final_report, run_panel

            console().print(run_panel(v) if v.active else final_report(v))
        if follow:
            raise SystemExit(FINAL_EXIT.get(v.final_status or "", OK))
        return
    from . import executors

    _follow(opts, target, executors.for_target(target), v.run_id, download, as_json)


def _follow(opts, target, executor, run_id: str, download: bool, as_json: bool) -> None:
    from .follow import RunLost, follow
    from .render import console, final_report, run_panel

    out = console()
    if as_json or not out.is_terminal:
        import time

        last = {"status": None, "at": 0.0}

        def on_update(v):
            # Plain output (a pipe, CI, `make demo` in a log): a line per phase, and progress at most every 5 s.
            now = time.monotonic()
            if as_json or not v.active or (v.status == last["status"] and now - last["at"] < 5):
                return
            p = v.progress or {}
            step = f" step {p.get('step')}/{p.get('total_steps')}" if p.get("total_steps") else ""
            loss = f" loss {p['loss']:.4f}" if p.get("loss") is not None else ""
            out.print(f"{run_id}: {v.status}{step}{loss}")
            last.update(status=v.status, at=now)

        try:
            final = follow(target, executor, run_id, on_update)
        except RunLost as exc:
            raise CliError(str(exc), RUN_FAILED) from None
    else:
        from rich.live import Live

        with Live(console=out, refresh_per_second=4, transient=True) as live:
            try:
                final = follow(target, executor, run_id, lambda v: live.update(run_panel(v)))
            except RunLost as exc:
                raise CliError(str(exc), RUN_FAILED) from None
    executor.finalize(run_id)
    if as_json:
        emit_json(final.to_json())
    else:
        out.print(final_report(final))
    if download and final.final_status == "completed":
        from .follow import download as fetch

        dest = fetch(target, run_id, Path("runs") / run_id)
        click.echo(f"model downloaded to {dest}/model", err=True)
    raise SystemExit(FINAL_EXIT.get(final.final_status or "", ERROR))


_monitor_options = [
    click.argument("run_id", required=False),
    click.option("--follow", is_flag=True, help="Stay until the run ends; exit 0 completed, 4 failed, 5 killed."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    click.option("--download/--no-download", default=True, show_default=True,
                 help="With --follow: fetch a completed model into ./runs/RUN_ID/."),
]


def _with(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return deco


@cli.command()
@_with(_monitor_options)
@pass_opts
@handles_errors
def monitor(opts: Options, run_id, follow, as_json, download) -> None:
    """Live status, progress, loss, ETA and cost of the active (or named) run.

    \b
    Example:
      chronos-train monitor --follow
      chronos-train monitor run-20261128-203700-1a2b --json
    """
    _monitor(opts, run_id, follow, as_json, download)


@cli.command(name="status")
@_with(_monitor_options)
@pass_opts
@handles_errors
def status_(opts: Options, run_id, follow, as_json, download) -> None:
    """Same as `monitor`.

    \b
    Example:
      chronos-train status --json
    """
    _monitor(opts, run_id, follow, as_json, download)


def _check_run_id(run_id: str) -> None:
    from instance.protocol.layout import LayoutError, check_run_id

    try:
        check_run_id(run_id)
    except LayoutError as exc:
        raise CliError(str(exc), BAD_INPUT) from None


# -- logs -------------------------------------------------------------------------------------
@cli.command()
@click.argument("run_id")
@click.option("--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@pass_opts
@handles_errors
def logs(opts: Options, run_id: str, follow: bool) -> None:
    """Print the agent's log of RUN_ID (uploaded to S3 about every minute).

    \b
    Example:
      chronos-train logs run-20261128-203700-1a2b --follow
    """
    from .logs import stream

    _check_run_id(run_id)
    for chunk in stream(opts.target(), run_id, follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


# -- kill -------------------------------------------------------------------------------------
@cli.command()
@click.argument("run_id", required=False)
@click.option("--force", is_flag=True, help="Terminate the machine now and complete the cleanup record.")
@click.option("--wait", is_flag=True, help="Wait for the agent to stop; force-terminate after the grace period.")
@pass_opts
@handles_errors
def kill(opts: Options, run_id: str | None, force: bool, wait: bool) -> None:
    """Ask the active run (or RUN_ID) to stop, checkpoint and clean up.

    Without --wait it returns once the request is recorded; the agent stops within seconds.
    --wait force-terminates if the agent has not answered within $CHRONOS_KILL_GRACE_SECONDS (120).

    \b
    Example:
      chronos-train kill --wait
      chronos-train kill run-20261128-203700-1a2b --force
    """
    from . import executors
    from .ending import kill as do_kill

    if run_id:
        _check_run_id(run_id)
    target = opts.target()
    result = do_kill(target, executors.for_target(target), run_id, force, wait)
    # Not requested: the run was already ending (cleanup, failed) and its outcome is decided.
    if result.ended:
        how = "force-terminated" if result.forced else (
            "stopped by its agent" if result.requested else "ended by itself (the stop came too late to change it)")
        click.echo(f"run {result.run_id} {how}; final status: {result.final_status or 'unknown'}")
    elif result.requested:
        click.echo(f"stop requested for run {result.run_id}; follow with `chronos-train monitor {result.run_id} --follow`")
    else:
        click.echo(f"run {result.run_id} is already ending and its outcome is decided, so there is nothing to stop; "
                   f"follow it with `chronos-train monitor {result.run_id} --follow`")


# -- runs -------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=20, show_default=True, help="How many recent runs.")
@pass_opts
@handles_errors
def runs(opts: Options, as_json: bool, limit: int) -> None:
    """History: status, duration, cost and the headline metric of recent runs.

    \b
    Example:
      chronos-train runs --limit 5
      chronos-train --local runs --json
    """
    from .runs import history

    views = history(opts.target(), limit)
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    from .render import console, runs_table

    console().print(runs_table(views) if views else "no runs yet")


# -- verify-cleanup ---------------------------------------------------------------------------
@cli.command(name="verify-cleanup")
@click.option("--fix", is_flag=True, help="Terminate, delete, abort and release what was found (idempotent).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
@handles_errors
def verify_cleanup(opts: Options, fix: bool, as_json: bool) -> None:
    """Find anything that could bill you: instances, volumes, run stacks, stale locks,
    incomplete uploads. Exit 6 when something is left, 0 when clean.

    \b
    Example:
      chronos-train verify-cleanup
      chronos-train verify-cleanup --fix
    """
    from . import executors
    from .verify import verify

    target = opts.target()
    report = verify(target, executors.for_target(target), fix)
    if as_json:
        emit_json(report.to_json())
    else:
        for f in report.fixed:
            click.echo(f"fixed: {f.kind} {f.id} ({f.detail})")
        for f in report.findings:
            click.echo(f"LEFT: {f.kind} {f.id} ({f.detail})")
        for i in report.starting:
            click.echo(f"starting (inside the launch grace window): instance {i}")
        if report.active_run:
            click.echo(f"active run: {report.active_run}")
        st = report.storage
        click.echo(f"S3 at rest: runs and logs ${st['runs_and_logs_usd_per_month']:.4f}/month, "
                   f"datasets ${st['datasets_usd_per_month']:.4f}/month")
        click.echo("clean" if report.clean else f"{len(report.findings)} leftover(s); run with --fix")
    if not report.clean:
        raise SystemExit(LEFTOVERS)


# -- data -------------------------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Datasets: validate, upload and list parquet files.

    \b
    Example:
      chronos-train data validate examples/data/us_employment.parquet
      chronos-train data upload examples/data --month 2026/11
    """


@data.command(name="validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handles_errors
def data_validate(path: Path, as_json: bool) -> None:
    """Check a parquet file or folder against the long format (item_id, timestamp, target).

    \b
    Example:
      chronos-train data validate ./my-data/
    """
    from .datasets import validate

    result = validate(path)
    if as_json:
        emit_json(result)
    else:
        for p in result["problems"]:
            click.echo(p, err=True)
        if result["ok"]:
            click.echo(f"ok: {result['files']} file(s), {result['series']} series, {result['rows']} rows")
    if not result["ok"]:
        raise SystemExit(BAD_INPUT)


@data.command(name="upload")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--month", required=True, help="YYYY/MM: the folder under cached-datasets/.")
@pass_opts
@handles_errors
def data_upload(opts: Options, path: Path, month: str) -> None:
    """Validate, then upload PATH to cached-datasets/YYYY/MM/ in the bucket.

    \b
    Example:
      chronos-train data upload ./sales.parquet --month 2026/11
    """
    from .datasets import upload

    for uri in upload(opts.target(), path, month):
        click.echo(uri)


@data.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
@handles_errors
def data_ls(opts: Options, as_json: bool) -> None:
    """List datasets in the bucket, by month.

    \b
    Example:
      chronos-train --local data ls
    """
    from .datasets import listing

    rows = listing(opts.target())
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['prefix']}  {r['files']} file(s)  {r['bytes']:,} bytes")
    if not rows:
        click.echo("no datasets yet; add one with `chronos-train data upload PATH --month YYYY/MM`")


# -- sandbox ----------------------------------------------------------------------------------
@cli.group()
def sandbox() -> None:
    """The embedded AWS stand-in (moto server) that --local uses.

    \b
    Example:
      chronos-train sandbox start
      chronos-train sandbox status --json
    """


@sandbox.command(name="start")
@pass_opts
@handles_errors
def sandbox_start(opts: Options) -> None:
    """Start the sandbox on a free loopback port (no-op when running).

    \b
    Example:
      chronos-train sandbox start
    """
    from . import sandbox as sb

    info = sb.start()
    click.echo(f"sandbox running at {info.endpoint_url} (bucket {info.bucket(opts.env)})")


@sandbox.command(name="stop")
@handles_errors
def sandbox_stop() -> None:
    """Stop the sandbox; everything in it is forgotten.

    \b
    Example:
      chronos-train sandbox stop
    """
    from . import sandbox as sb

    click.echo("sandbox stopped" if sb.stop() else "sandbox was not running")


@sandbox.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print endpoint_url, region and bucket as JSON.")
@pass_opts
@handles_errors
def sandbox_status(opts: Options, as_json: bool) -> None:
    """Whether the sandbox runs, where, and the env's operator credentials (--json).

    \b
    Example:
      chronos-train sandbox status --json | jq -r .endpoint_url
    """
    from . import sandbox as sb

    info = sb.status()
    if as_json:
        emit_json(info.to_json(opts.env) if info else {"running": False})
    elif info:
        click.echo(f"running at {info.endpoint_url}, region {info.region}, bucket {info.bucket(opts.env)}")
    else:
        click.echo("not running; `chronos-train sandbox start` or any --local command starts it")
    if info is None:
        raise SystemExit(ERROR)


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

    from . import sandbox as sb

    info = sb.status()
    if info is None:
        raise CliError("the sandbox is not running; start it with `chronos-train sandbox start`")
    # A session token or profile left in the shell would override or spoil these keys.
    click.echo("unset AWS_SESSION_TOKEN AWS_PROFILE")
    for name, value in sb.env_vars(info, opts.env).items():
        click.echo(f"export {name}={shlex.quote(value)}")


def main() -> None:
    cli(prog_name="chronos-train")


if __name__ == "__main__":
    main()
