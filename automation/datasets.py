"""data validate / upload / ls."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from instance.protocol.layout import DATASETS_PREFIX, LayoutError, dataset_prefix, s3_uri

from .context import Target
from .errors import BadInput


def validate(path: Path) -> dict:
    from instance.model.dataset import expand_dataset_path, validate_parquet_paths

    if not path.exists():
        raise BadInput(f"{path}: no such file or folder")
    files = expand_dataset_path(path)
    if not files:
        raise BadInput(f"{path}: holds no .parquet file")
    problems = [str(p) for p in validate_parquet_paths(files)]
    summary = {"ok": not problems, "files": len(files), "problems": problems, "series": None, "rows": None}
    if not problems:
        import pyarrow.parquet as pq

        rows, items = 0, set()
        for f in files:
            table = pq.read_table(f, columns=["item_id"])
            rows += table.num_rows
            items.update(table.column("item_id").to_pylist())
        summary.update(series=len(items), rows=rows)
    return summary


def upload(target: Target, path: Path, month: str) -> list[str]:
    from .launch import check_local_dataset

    try:
        prefix = dataset_prefix(month)
    except LayoutError as exc:
        raise BadInput(str(exc)) from None
    files = check_local_dataset(path)
    uris = []
    for f in files:
        key = prefix + f.name
        target.s3.upload_file(str(f), target.bucket, key)
        uris.append(s3_uri(target.bucket, key))
    return uris


def listing(target: Target) -> list[dict]:
    groups: dict[str, dict] = defaultdict(lambda: {"files": 0, "bytes": 0})
    pages = target.s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=DATASETS_PREFIX)
    for obj in (o for page in pages for o in page.get("Contents", [])):
        if not obj["Key"].endswith(".parquet"):
            continue
        prefix = obj["Key"].rsplit("/", 1)[0] + "/"
        groups[prefix]["files"] += 1
        groups[prefix]["bytes"] += obj["Size"]
    return [{"prefix": p, **g} for p, g in sorted(groups.items())]
