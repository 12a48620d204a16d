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
@click.option("--config", "config", type=click.Path(path_type=Path),
              help="A run config: its columns: roles, and its series lengths as launch judges them.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def data_validate(path: Path, config: Path | None, as_json: bool) -> None:
    """Check a parquet file or folder against the long format (item_id, timestamp, target, every
    other column a covariate, numeric or categorical) and say each column's role and type.

    \b
    Example:
      chronos-train data validate ./my-data/
      chronos-train data validate ./sales.parquet --config run.yaml
    """
    from ..datasets import validate

    result = validate(path, config)
    if as_json:
        emit_json(result)
    else:
        for p in result["problems"]:
            click.echo(p, err=True)
        if result["ok"]:
            click.echo(f"ok: {result['files']} file(s), {result['series']} series, {result['rows']} rows")
            for line in column_lines(result["columns"]):
                click.echo(line)
    if not result["ok"]:
        raise SystemExit(BAD_INPUT)


def column_lines(columns: list[dict]) -> list[str]:
    """`  promo  known covariate  numeric (int64)`: one aligned line per column."""
    from instance.protocol.columns import ROLE_NAMES

    if not columns:
        return []
    width = max(len(c["name"]) for c in columns)
    roles = [ROLE_NAMES.get(c["role"], c["role"]) for c in columns]
    role_width = max(len(r) for r in roles)
    return ["columns:"] + [f"  {c['name']:<{width}}  {role:<{role_width}}  {c['type']} ({c['dtype']})"
                           for c, role in zip(columns, roles)]


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
