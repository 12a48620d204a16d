"""Commands about datasets: validate, upload and list."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import BAD_INPUT
from .group import Options, emit_json, pass_opts


# -- data -------------------------------------------------------------------------------------
@click.group()
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
def data_validate(path: Path, as_json: bool) -> None:
    """Check a parquet file or folder against the long format (item_id, timestamp, target).

    \b
    Example:
      chronos-train data validate ./my-data/
    """
    from ..datasets import validate

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
def data_upload(opts: Options, path: Path, month: str) -> None:
    """Validate, then upload PATH (a parquet file, or a folder of them: one dataset) to its own
    folder cached-datasets/YYYY/MM/<name>-<hash>/; prints the prefix to put in a run config.

    \b
    Example:
      chronos-train data upload ./sales.parquet --month 2026/11
    """
    from ..datasets import upload

    target = opts.target()
    done = upload(target, path, month)
    sent = done.files - done.skipped
    already = f", {done.skipped} already there" if done.skipped else ""
    click.echo(f"s3://{target.bucket}/{done.prefix}")
    click.echo(f"uploaded {sent} file(s), {done.bytes:,} bytes in all{already}; train on it with "
               f"`dataset: {done.prefix}`", err=True)


@data.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
def data_ls(opts: Options, as_json: bool) -> None:
    """List datasets in the bucket: one line per dataset prefix.

    \b
    Example:
      chronos-train --local data ls
    """
    from ..datasets import listing

    rows = listing(opts.target())
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['prefix']}  {r['files']} file(s)  {r['bytes']:,} bytes")
    if not rows:
        click.echo("no datasets yet; add one with `chronos-train data upload PATH --month YYYY/MM`")
