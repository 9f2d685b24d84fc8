"""The report's "Causal checks" section: the loss with parts of the model zero-ablated, at each
run's last scored checkpoint, from the causal/ scores of this package's probes.
"""

from __future__ import annotations

import pandas as pd

from analysis.phenomena.causal import HEAD_LOSS, LAYER_LOSS, PREFIX, PREVIOUS_TOKEN
from analysis.phenomena.induction import PER_HEAD
from analysis.tables import markdown_table


def _last(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Each run's metrics starting with `prefix` at its last step that has them: run x metric."""
    rows = df[df["metric"].str.startswith(prefix)]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    return rows.pivot_table(index="run", columns="metric", values="value", aggfunc="first")


def _per_head(df: pd.DataFrame, prefix: str, name: str) -> pd.DataFrame:
    """Columns run, head (L0H1, ...) and `name`: the per-head metrics `prefix`L0H1, ..."""
    values = _last(df, prefix).stack().dropna().rename(name).reset_index()
    return values.assign(head=values["metric"].str.removeprefix(prefix)).drop(columns="metric")


def causal_section(df: pd.DataFrame) -> str | None:
    """The report's "Causal checks" section from the causal/ scores at each run's last scored
    checkpoint (None when there are none)."""
    if not len(df) or not df["metric"].str.startswith(PREFIX).any():
        return None
    parts = ["## Causal checks",
             "Loss at each run's last scored checkpoint with parts of the model zero-ablated "
             "through its hooks (analysis/phenomena/causal/measures.py), on the eval set: for "
             "induction, on the repeated tokens. Heads are often redundant, so a set of heads "
             "can matter where each alone barely does."]
    final = _last(df, PREFIX)
    if f"{PREFIX}clean_loss" in final:
        head = _per_head(df, HEAD_LOSS, "ablated_loss")
        for prefix, name in ((PER_HEAD, "prefix_matching"), (PREVIOUS_TOKEN, "previous_token")):
            head = head.merge(_per_head(df, prefix, name), on=["run", "head"], how="left")
        # The head whose previous-token score is highest: the one the probe ablated.
        top = head.loc[head.groupby("run")["previous_token"].idxmax()].set_index("run")["head"]
        table = pd.DataFrame({
            "clean": final[f"{PREFIX}clean_loss"],
            "induction heads (prefix matching > 0.5)": final[f"{PREFIX}n_induction_heads"],
            "those ablated": final[f"{PREFIX}induction_heads_loss"],
            "top previous-token head": top,
            "it ablated": final[f"{PREFIX}previous_token_head_loss"]}).reset_index()
        parts += [markdown_table(table), "Each head ablated alone, beside its scores:",
                  markdown_table(head[["run", "head", "prefix_matching", "previous_token",
                                       "ablated_loss"]])]
    layer = final.filter(like=LAYER_LOSS)
    if len(layer.columns):
        layer.columns = [c.removeprefix(LAYER_LOSS) for c in layer.columns]
        layer = layer[["clean", *sorted(c for c in layer.columns if c != "clean")]]
        parts += ["Loss with each layer's attention or MLP output zeroed:",
                  markdown_table(layer.reset_index())]
    return "\n\n".join(parts)


def section(evidence) -> str | None:
    return causal_section(evidence.scores)

