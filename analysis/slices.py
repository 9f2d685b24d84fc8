"""Metrics per slice: the examples of a fixed set grouped by one of their integer attributes
(`tasks.Task.attributes`: operand lengths, carries, segment length, ...).

Pure functions of `Outputs` and the attributes ({name: [N] int}). A slice is named
`<attribute>=<value>` (`carries=2`); `all` is the whole set. The slices of one attribute
partition the set; an attribute with a single value is left out (its one slice is `all`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import Tensor

from analysis import metrics
from analysis.evaluate import Outputs

if TYPE_CHECKING:  # pandas is imported where tables are built, not by training
    import pandas as pd

ALL = "all"


def masks(attributes: dict[str, Tensor], names=None) -> dict[str, Tensor]:
    """{slice name: [N] bool} for every value of each attribute in `names` (default: all) that
    takes more than one value, values in increasing order."""
    found = {}
    for name in attributes if names is None else names:
        values = attributes[name].cpu()
        levels = values.unique()
        if len(levels) > 1:
            found |= {f"{name}={int(v)}": values == v for v in levels}
    return found


def subset(out: Outputs, rows: Tensor) -> Outputs:
    """The outputs of the examples `rows` (a [N] bool mask or indices)."""
    return dataclasses.replace(out, **{
        f.name: getattr(out, f.name)[rows] for f in dataclasses.fields(out)
        if isinstance(getattr(out, f.name), Tensor)})


def by_slice(out: Outputs, attributes: dict[str, Tensor], names=None,
             metric_names=None) -> dict[str, dict[str, float]]:
    """{slice: {metric: value}}: `metrics.compute` (or just `metric_names`) on every slice."""
    scores = {}
    for name, rows in masks(attributes, names).items():
        values = metrics.compute(subset(out, rows))
        scores[name] = values if metric_names is None else {
            m: values[m] for m in metric_names if m in values}
    return scores


def table(out: Outputs, attributes: dict[str, Tensor], names=None) -> pd.DataFrame:
    """One row per slice (`all` first): attribute, value, count of examples, every metric."""
    import pandas as pd

    rows = [{"slice": ALL, "attribute": ALL, "value": None, "count": len(out.mask),
             **metrics.compute(out)}]
    for name, rows_in in masks(attributes, names).items():
        attribute, value = name.split("=")
        rows.append({"slice": name, "attribute": attribute, "value": int(value),
                     "count": int(rows_in.sum()), **metrics.compute(subset(out, rows_in))})
    return pd.DataFrame(rows)


def split_key(key: str) -> tuple[str, str]:
    """`eval/exact_match@carries=2` -> (`eval/exact_match`, `carries=2`); no `@` -> `all`."""
    metric, _, name = key.partition("@")
    return metric, name or ALL


def key(metric: str, name: str) -> str:
    """The flat score name of `metric` on slice `name` (the inverse of split_key)."""
    return metric if name == ALL else f"{metric}@{name}"



def worst(scores: pd.DataFrame, metric: str = "eval/exact_match", n: int = 8) -> pd.DataFrame:
    """The `n` slices with the lowest `metric` at the largest model's last scored step (mean
    over its runs, e.g. seeds), beside the whole set: where the errors of the best model are."""
    import pandas as pd

    rows = scores[scores["metric"] == metric]
    if rows.empty or (rows["slice"] == ALL).all():
        return pd.DataFrame()
    top = rows[rows["params"] == rows["params"].max()]
    last = top[top["step"] == top.groupby("run")["step"].transform("max")]
    mean = last.groupby("slice")["value"].agg(["mean", "min", "max", "count"])
    worst_slices = mean.drop(index=ALL, errors="ignore").sort_values("mean").head(n)
    return pd.concat([mean.loc[[ALL]] if ALL in mean.index else None, worst_slices])
