"""Tables for the report: a markdown pipe table, and the summary's rows on one axis as text."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import summary


def _cell(value) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (numbers to 4 significant digits, NaN blank)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def statistics_table(table: pd.DataFrame, axis: str, statistics, prefix: str = "",
                     wide: bool = True) -> pd.DataFrame:
    """The summary's rows on `axis` for `statistics` of metrics starting with `prefix`, each as
    text (summary.describe: mean [interval], seeds, or why there is none). Wide: one row per
    series and metric, a column per statistic; else one row per statistic."""
    if table.empty:
        return pd.DataFrame()
    rows = table[(table["axis"] == axis) & table["statistic"].isin(statistics)
                 & table["metric"].str.startswith(prefix)]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(series=summary.series_labels(rows),
                       estimate=[summary.describe(r) for _, r in rows.iterrows()])
    if not wide:
        order = {s: i for i, s in enumerate(statistics)}
        rows = rows.sort_values("statistic", key=lambda c: c.map(order), kind="stable")
        return rows.sort_values(["series", "metric"], kind="stable")[
            ["series", "metric", "statistic", "estimate"]]
    pivot = rows.pivot_table(index=["series", "metric"], columns="statistic", values="estimate",
                             aggfunc="first", sort=False)
    return pivot[[s for s in statistics if s in pivot.columns]].reset_index()
