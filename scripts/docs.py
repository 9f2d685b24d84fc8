"""Regenerate the measured parts of docs/experiments.md and the README figure from real runs.

    bash scripts/docs.sh                       # every experiment below (~40 min on 2 cores)
    bash scripts/docs.sh demo grokking_small   # some of them
    bash scripts/docs.sh --reuse               # keep finished runs and their scores, redo the rest
    bash scripts/docs.sh demo --seed-sets 15-19 20-24   # the demo on other seed sets

For each experiment: train it with `python -m train experiment=<name>` into
multirun/docs/<name>, run `python -m analysis` on it, and write, between the markers
`<!-- docs:<name> -->` and `<!-- /docs:<name> -->` of docs/experiments.md, the chosen sections
of its report.md (their tables are computed by the analysis, never typed), the figures (copied
to docs/figures/) and the time training and analysis took. An experiment with seed sets is
trained and analysed once per disjoint set of seeds (multirun/docs/<name>/seeds_<set>): the
block shows the first set's sections and every set's findings, so a verdict that depends on the
seeds shows it. Text outside the markers is kept, so
the prose says how to read a block and the block says what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.tables import markdown_table

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "experiments.md"
FIGURES = ROOT / "docs" / "figures"
RUNS = ROOT / "multirun" / "docs"


@dataclass(frozen=True)
class Experiment:
    name: str
    sections: tuple[str, ...]  # report.md headings (after "## ") copied into the block
    figures: tuple[str, ...]  # globs of <analysis>/figures/*.png copied to docs/figures/
    analysis: tuple[str, ...] = ()  # extra `python -m analysis` flags
    sweep: bool = True  # a multirun (hydra.sweep.dir) or a single run (hydra.run.dir)
    report: str = "report.md"
    readme_figure: dict[str, str] = field(default_factory=dict)  # stem -> docs/figures name
    slice_table: tuple[str, ...] = ()  # attributes whose slices get a table per layout
    ladder_table: bool = False  # a table of seed means per rung (ladder_table below)
    seed_sets: tuple[str, ...] = ()  # disjoint seed ranges ("0-4"), each a sweep of its own


EMERGENCE = ("Emergence across model sizes", "Verdicts", "Where the errors are")
EXPERIMENTS = (
    # The main job: the addition ladder (addition_emergence_small) with checkpoints every 500
    # steps, on three disjoint seed sets.
    Experiment("demo", (*EMERGENCE, "Forecast of exact match"),
               ("arithmetic_mirage", "arithmetic_answer_positions",
                "arithmetic_eval_exact_match_vs_step", "arithmetic_exact_match_by_len_a",
                "forecast"),
               ("--forecast",), ladder_table=True,
               readme_figure={"arithmetic_mirage": "demo_mirage.png"},
               seed_sets=("0-4", "5-9", "10-14")),
    Experiment("addition_layouts", ("Runs",), (), ("--last",), slice_table=("len_a", "len_b")),
    Experiment("addition_format_small", ("Runs", "Where the errors are"), (), ("--last",)),
    Experiment("grokking_small", ("Events during training", "Causal checks"),
               ("modular_grokking_*",), sweep=False),
    Experiment("grokking_sweep_small", ("Runs", "Events during training"), ()),
    Experiment("induction_heads_small", ("Events during training", "Causal checks"),
               ("induction_induction", "induction_attention")),
    Experiment("parity_small", ("Events during training",), ("parity_eval_loss_vs_step",),
               sweep=False),
    Experiment("mup_transfer_small", ("Learning-rate transfer",), ("lr_transfer",),
               ("--transfer",), report="transfer.md"),
    Experiment("grokking_stages_small", ("Developmental stages",), ("llc_stages",),
               ("--llc", "--llc-workers", "2")),
    Experiment("induction_stages_small", ("Developmental stages",), ("llc_stages",),
               ("--llc", "--llc-workers", "2")),
)


def sections(markdown: str, headings: tuple[str, ...]) -> list[str]:
    """The `#`/`##` sections of a report whose heading starts with one of `headings`, in that
    order, as `####` (to nest under the docs' own headings), without their image links (the
    chosen figures are copied and linked separately)."""
    found = {}
    for part in re.split(r"(?m)^#{1,2} ", markdown)[1:]:
        title, _, body = part.partition("\n")
        body = "\n".join(line for line in body.splitlines() if not line.startswith("!["))
        found[title.strip()] = f"#### {title.strip()}\n{body.strip()}"
    return [text for h in headings for title, text in found.items() if title.startswith(h)]


def slice_table(scores: pd.DataFrame, attributes: tuple[str, ...],
                metric: str = "eval/exact_match") -> str:
    """Markdown: `metric` at each run's last step on the whole set and on every slice of
    `attributes`, one row per setting of the coordinates that vary (seeds pooled): the mean over
    seeds, and the lowest seed in brackets."""
    rows = scores[scores["metric"] == metric]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    wanted = rows["slice"].eq("all") | rows["slice"].str.split("=").str[0].isin(attributes)
    fixed = {"run", "step", "tokens", "flops", "params", "non_embedding_params", "metric",
             "slice", "value", "seed"}
    keys = [c for c in rows.columns if c not in fixed and rows[c].nunique(dropna=False) > 1]
    rows = rows[wanted].astype({k: object for k in keys}).fillna({k: "null" for k in keys})
    table = rows.groupby([*keys, "slice"], dropna=False)["value"].agg(["mean", "min"])
    cells = table.apply(lambda r: f"{r['mean']:.3f} ({r['min']:.3f})", axis=1).unstack("slice")
    cells = cells[["all", *sorted(c for c in cells.columns if c != "all")]]
    return (f"{metric} at the last step, mean over seeds (lowest seed):\n\n"
            + markdown_table(cells.reset_index()))


LADDER = {"eval/exact_match": "exact match", "eval/token_accuracy": "token accuracy",
          "eval/edit_distance": "edit distance", "eval/answer_logprob": "answer log-prob",
          "eval/predicted_exact_match_from_positions": "p^L, product over positions"}


def ladder_table(scores: pd.DataFrame) -> str:
    """Markdown: per rung (d_model), at each run's last step, the seed mean [lowest, highest
    seed] of the exact and continuous metrics, the seed mean of each answer position's
    log-probability (chance for a digit: log 1/10 = -2.30), and how many seeds solved it."""
    rows = scores[scores["slice"] == "all"]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    stats = rows.groupby(["d_model", "params", "metric"])["value"].agg(["mean", "min", "max"])
    main = stats[stats.index.get_level_values("metric").isin(LADDER)].apply(
        lambda r: f"{r['mean']:.3f} [{r['min']:.3f}, {r['max']:.3f}]", axis=1).unstack("metric")
    table = main[[m for m in LADDER if m in main.columns]].rename(columns=LADDER)
    positions = stats["mean"].unstack("metric").filter(like="answer_position/logprob/")
    if len(positions.columns):
        table["log p per answer position"] = positions.apply(
            lambda r: " / ".join(f"{v:.2f}" for v in r), axis=1)
    exact = rows[rows["metric"] == "eval/exact_match"]
    table["seeds solved"] = exact.groupby(["d_model", "params"])["value"].agg(
        lambda v: f"{(v >= 0.5).sum()}/{len(v)}")
    seeds = rows.groupby("d_model")["run"].nunique()
    return (f"Per rung, at the last step: mean over seeds [lowest, highest] ({seeds.min()} "
            "seeds per rung), and the seeds that solved it (exact match >= 0.5):\n\n"
            + markdown_table(table.reset_index()))


def method_table(outs: dict[str, Path], metrics=("eval/exact_match", "eval/token_accuracy",
                                                 "eval/edit_distance")) -> str:
    """Markdown: each seed set's sudden-or-smooth verdict against parameters by both ways of
    summarizing seeds (analysis.summary.summarize's `over`): statistics of the seed-mean curve
    with a bootstrap over seeds, and per-seed statistics with their t-interval."""
    from analysis import summary
    from analysis.phenomena.mirage import sudden_or_smooth

    rows = []
    for name, out in outs.items():
        scores = pd.read_csv(out / "scores.csv")
        scores = scores[scores["slice"] == "all"].drop(columns="slice")
        scores = scores[scores["step"] == scores.groupby("run")["step"].transform("max")]
        for over, label in (("mean", "seed-mean curve, bootstrap"),
                            ("seeds", "per seed, t-interval (log)")):
            table = summary.summarize(scores, over=over)
            rows.append({"seeds": name, "statistics": label, **{
                metric.removeprefix("eval/"): sudden_or_smooth(summary.select(
                    table, metric, "breakthroughness", "params").iloc[0]).replace(
                        "breakthroughness ", "")
                for metric in metrics}})
    return ("Sudden or smooth against parameters, by each way of summarizing the seeds:\n\n"
            + markdown_table(pd.DataFrame(rows)))


def replace_block(text: str, name: str, block: str) -> str:
    """`text` with the lines between its markers for `name` replaced by `block`."""
    start, end = f"<!-- docs:{name} -->", f"<!-- /docs:{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"docs: {DOC.relative_to(ROOT)} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return head + start + "\n" + block.strip() + "\n" + end + rest.split(end, 1)[1]


def completed(run_dir: Path) -> bool:
    """Every run below `run_dir` finished (summary.json status completed)."""
    summaries = list(run_dir.rglob("summary.json"))
    return bool(summaries) and all(
        json.loads(p.read_text()).get("status") == "completed" for p in summaries)


def timed(cmd: list[str], log: Path, check: bool = True) -> float:
    """Run `cmd` from the repository root, its output appended to `log`; seconds it took.
    SystemExit if it fails and `check`."""
    print("docs: " + " ".join(cmd), flush=True)
    began = time.perf_counter()
    with log.open("a") as f:
        result = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode and check:
        raise SystemExit(f"docs: {' '.join(cmd)} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - began


def seeds(text: str) -> str:
    """A seed range "5-9" (or one seed "5") as Hydra's sweep "5,6,7,8,9"; SystemExit if bad."""
    low, _, high = text.partition("-")
    if not (low.isdigit() and (high or low).isdigit()) or int(high or low) < int(low):
        raise SystemExit(f"docs: seed set {text!r}: expected a range like 0-4 or one seed")
    return ",".join(str(s) for s in range(int(low), int(high or low) + 1))


def train(exp: Experiment, run_dir: Path, reuse: bool, *overrides: str) -> dict:
    """Train `exp` into `run_dir` unless `reuse` and it finished there; its timing record.
    With `reuse`, an unfinished sweep is resumed (each run from its last checkpoint)."""
    record = run_dir / "docs_time.json"
    if reuse and completed(run_dir) and record.exists():
        return json.loads(record.read_text())
    resumed = reuse and (run_dir / "docs.log").exists()
    if not resumed:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    where = "hydra.sweep.dir" if exp.sweep else "hydra.run.dir"
    # Resumed, the runs that finished before refuse to start again (and fail the sweep's exit
    # status): what counts is that every run is complete afterwards.
    seconds = timed([sys.executable, "-m", "train", f"experiment={exp.name}",
                     f"{where}={run_dir}", "wandb.mode=disabled", *overrides],
                    run_dir / "docs.log", check=not resumed)
    if not completed(run_dir):
        raise SystemExit(f"docs: {exp.name}: runs in {run_dir} did not complete; see "
                         f"{run_dir / 'docs.log'}")
    summaries = [json.loads(p.read_text()) for p in run_dir.rglob("summary.json")]
    runs = len(summaries)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    info = {"train_s": round(seconds), "resumed": resumed, "runs": runs, "commit": commit,
            "run_s": round(sum(s.get("wall_time_s", 0) for s in summaries)),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    record.write_text(json.dumps(info))
    return info


def analyse(exp: Experiment, run_dir: Path, reuse: bool = False) -> tuple[Path, float]:
    """`python -m analysis` on `run_dir` afresh (with `reuse`, keeping the checkpoints' scores,
    which it extends incrementally): its output directory and the seconds it took."""
    out = run_dir / "analysis"
    kept = (out / "scores.csv").read_bytes() if reuse and (out / "scores.csv").exists() else None
    shutil.rmtree(out, ignore_errors=True)
    if kept is not None:
        out.mkdir(parents=True)
        (out / "scores.csv").write_bytes(kept)
    return out, timed([sys.executable, "-m", "analysis", str(run_dir), *exp.analysis],
                      run_dir / "docs.log")


def measured(exp: Experiment, info: dict, analysis_s: float, what: str = "") -> str:
    """The italic line that says when, where and how long."""
    return (f"_Measured by `bash scripts/docs.sh {exp.name}{what}` on {info['date']} (commit "
            f"{info.get('commit', 'unknown')}; {info['machine']}, shared with other work): "
            + (f"training resumed after an interruption, the runs' own wall times summing to "
               f"{info['run_s']} s for {info['runs']} runs, " if info.get("resumed") else
               f"training {info['train_s']} s for {info['runs']} runs, ")
            + f"`python -m analysis{''.join(' ' + a for a in exp.analysis)}` {analysis_s:.0f} s._")


def seed_sets(exp: Experiment, sets: tuple[str, ...], reuse: bool) -> tuple[Path, str]:
    """Train and analyse every seed set, the sets side by side (each analysed once its own
    training ends); the first set's analysis directory and a section with every set's
    findings."""
    dirs = {s: RUNS / exp.name / f"seeds_{s}" for s in sets}

    def one(s: str) -> tuple[dict, Path, float]:
        info = train(exp, dirs[s], reuse, f"seed={seeds(s)}")
        return (info, *analyse(exp, dirs[s], reuse))

    with ThreadPoolExecutor(len(sets)) as pool:  # each thread waits on its subprocesses
        done = dict(zip(sets, pool.map(one, sets), strict=True))
    parts = ["#### Findings on each seed set",
             f"The same ladder trained on {len(sets)} disjoint sets of seeds, each analysed on "
             "its own."]
    for s, (info, out, analysis_s) in done.items():
        findings = sections((out / exp.report).read_text(), ("Findings",))
        body = findings[0].split("\n", 1)[1] if findings else "(no findings)"
        parts += [f"**Seeds {s}** " + measured(exp, info, analysis_s, f" --seed-sets {s}"),
                  body]
    parts.append(method_table({s: out for s, (_, out, _) in done.items()}))
    return done[sets[0]][1], "\n\n".join(parts)


def document(exp: Experiment, reuse: bool, sets: tuple[str, ...] = ()) -> str:
    """Train and analyse `exp` (on each of `sets`, default its own seed sets); the markdown
    block for docs/experiments.md."""
    sets = sets or exp.seed_sets
    if sets:
        out, comparison = seed_sets(exp, sets, reuse)
        parts = [*sections((out / exp.report).read_text(), exp.sections), comparison]
        parts.insert(0, f"First seed set ({sets[0]}), analysed in full:")
    else:
        run_dir = RUNS / exp.name
        info = train(exp, run_dir, reuse)
        out, analysis_s = analyse(exp, run_dir, reuse)
        parts = [measured(exp, info, analysis_s), *sections((out / exp.report).read_text(),
                                                            exp.sections)]
    if exp.ladder_table:
        parts.append(ladder_table(pd.read_csv(out / "scores.csv")))
    if exp.slice_table:
        parts.append(slice_table(pd.read_csv(out / "scores.csv"), exp.slice_table))
    for pattern in exp.figures:
        found = sorted((out / "figures").glob(f"{pattern}.png"))
        if not found:
            raise SystemExit(f"docs: {exp.name}: no figure {pattern}.png in {out / 'figures'}")
        for source in found:
            target = FIGURES / f"{exp.name}_{source.name}"
            shutil.copyfile(source, target)
            parts.append(f"![{exp.name}: {source.stem}](figures/{target.name})")
            if source.stem in exp.readme_figure:
                shutil.copyfile(source, FIGURES / exp.readme_figure[source.stem])
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    names = [e.name for e in EXPERIMENTS]
    parser = argparse.ArgumentParser(prog="scripts/docs.sh", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(names)}")
    parser.add_argument("--reuse", action="store_true",
                        help="keep finished runs and their scores, resume the rest")
    parser.add_argument("--seed-sets", nargs="+", default=(), metavar="A-B",
                        help="train and analyse each named experiment on these disjoint seed "
                             "ranges (default: the experiment's own, e.g. demo's 0-4 5-9 10-14)")
    args = parser.parse_args(argv)
    for s in args.seed_sets:
        seeds(s)  # a bad range fails before anything is trained
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown experiment {', '.join(unknown)}: choose from {', '.join(names)}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    for exp in EXPERIMENTS:
        if args.names and exp.name not in args.names:
            continue
        block = document(exp, args.reuse, tuple(args.seed_sets))
        DOC.write_text(replace_block(DOC.read_text(), exp.name, block))  # after each one
        print(f"docs: {exp.name} written to {DOC.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
