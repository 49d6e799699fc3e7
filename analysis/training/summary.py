"""Over seeds: each method's accuracy as mean ± sd, and every PARA − method gap with a paired 95% bootstrap
interval and McNemar's p pooled over seeds (from the per-example predictions in a comparison report).

A run's seeds are found by name (`...-s0`, `-s1`, ... share a group) and paired seed by seed: PARA's cut of
seed s's fixed-rank source against the run of seed s, on the same test examples. No torch, no streamlit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from analysis.stats import PairedDifference, mean_sd, paired_difference
from analysis.training.results import ComparisonReport, Evaluation

SEED_SUFFIX = re.compile(r"-s\d+$")


@dataclass(frozen=True)
class GapSummary:
    """One row: a method (over its seeds) against PARA, or PARA applied to the method's own adapter."""

    task: str
    group: str
    """The run name without its seed suffix, e.g. `minilm-bbc-topic-alora-r8`."""
    method: str
    kind: str
    """"matched": PARA's cut of the fixed-rank source at the run's parameter count, minus the run;
    "self": PARA applied to the run's own adapter (at a smaller budget), minus the run."""
    seeds: tuple[int, ...]
    n_params: float
    """Mean LoRA parameters of the run."""
    para_n_params: float
    accuracy: tuple[float, float]
    """(mean, sd) over seeds of the run's accuracy."""
    para_accuracy: tuple[float, float]
    gap: PairedDifference | None
    """PARA − run, pooled over seeds; None when predictions are missing or the examples differ."""
    n_steps: float | None = None
    wall_time_s: float | None = None
    lr: float | None = None

    @property
    def significant(self) -> bool:
        return self.gap is not None and self.gap.excludes_zero


def group_name(run: str) -> str:
    return SEED_SUFFIX.sub("", run)


def _paired(pairs: Sequence[tuple[Evaluation | None, Evaluation | None]]) -> PairedDifference | None:
    """PARA − run over the seeds, when every seed has predictions on the same targets."""
    a, b = [], []
    for para, run in pairs:
        if para is None or run is None or not para.predictions or para.targets != run.targets:
            return None
        a.append(para.correct())
        b.append(run.correct())
    if not a or any(len(x) != len(a[0]) for x in a):
        return None
    return paired_difference(a, b)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def summarize(report: ComparisonReport) -> list[GapSummary]:
    """Every (task, run group) of the report against PARA, and PARA applied to each adaptive group."""
    rows: dict[tuple[str, str, str], list] = {}
    for t in report.tasks:
        for r in t.runs:
            rows.setdefault((t.task, group_name(r.run), "matched"), []).append((r, r.para))
            if r.self_cut is not None:
                rows.setdefault((t.task, group_name(r.run), "self"), []).append((r, r.self_cut))
    out = []
    for (task, group, kind), items in sorted(rows.items()):
        evaluated = [(r, c) for r, c in items if r.evaluation is not None and c.evaluation is not None]
        if not evaluated:
            continue
        first = evaluated[0][0]
        out.append(
            GapSummary(
                task=task,
                group=group,
                method=first.method,
                kind=kind,
                seeds=tuple(r.seed if r.seed is not None else 0 for r, _ in evaluated),
                n_params=sum(r.n_params for r, _ in evaluated) / len(evaluated),
                para_n_params=sum(c.n_params for _, c in evaluated) / len(evaluated),
                accuracy=mean_sd([r.evaluation.accuracy for r, _ in evaluated]),
                para_accuracy=mean_sd([c.evaluation.accuracy for _, c in evaluated]),
                gap=_paired([(c.evaluation, r.evaluation) for r, c in evaluated]),
                n_steps=_mean([r.n_steps for r, _ in evaluated]),
                wall_time_s=_mean([r.wall_time_s for r, _ in evaluated]),
                lr=first.lr,
            )  # fmt: skip
        )
    return out


def summary_to_json(rows: Sequence[GapSummary]) -> list[dict]:
    data = []
    for row in rows:
        d = asdict(row)
        d["significant"] = row.significant
        data.append(d)
    return data


def _pm(mean_sd_pair: tuple[float, float], n: int) -> str:
    mean, sd = mean_sd_pair
    return f"{100 * mean:.2f}%" + (f" ± {100 * sd:.2f}" if n > 1 else "")


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def summary_table(rows: Sequence[GapSummary], task: str, *, partial: bool = False) -> str:
    """Markdown: per method, accuracy mean ± sd over seeds, PARA's, and the paired gap with its interval."""
    lines = [
        f"**{task}**{' (PARTIAL: the grid has not finished; seeds listed per row)' if partial else ''}",
        "",
        "| method (runs) | seeds | lr | steps | wall time | LoRA params | accuracy | PARA | PARA params "
        "| PARA − method, 95% CI (points) | McNemar p (exact / mid) | gap shown? |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in rows:
        if row.task != task:
            continue
        n = len(row.seeds)
        label = f"{row.group} ({row.method})" if row.kind == "matched" else f"PARA applied to {row.group} (50%)"
        if row.gap is None:
            gap, p, shown = "–", "–", "no predictions"
        else:
            g = row.gap
            gap = f"{100 * g.difference:+.2f} [{100 * g.low:+.2f}, {100 * g.high:+.2f}]"
            p = f"{_p(g.mcnemar.p_exact)} / {_p(g.mcnemar.p_mid)}"
            shown = "yes" if row.significant else "no difference shown"
        steps = "–" if row.n_steps is None else f"{row.n_steps:.0f}"
        wall = "–" if row.wall_time_s is None or math.isnan(row.wall_time_s) else f"{row.wall_time_s:.0f} s"
        lr = "–" if row.lr is None else f"{row.lr:g}"
        lines.append(
            f"| {label} | {','.join(map(str, row.seeds))} | {lr} | {steps} | {wall} | {row.n_params:,.0f} "
            f"| {_pm(row.accuracy, n)} | {_pm(row.para_accuracy, n)} | {row.para_n_params:,.0f} | {gap} | {p} "
            f"| {shown} |"
        )
    return "\n".join(lines)


def source_line(report: ComparisonReport, task: str) -> str:
    """What PARA's sources trained, over seeds: parameters, steps, wall time (so its 4x budget is visible)."""
    sources = [t for t in report.tasks if t.task == task]
    if not sources:
        return ""
    steps = _mean([t.source_n_steps for t in sources])
    wall = _mean([t.source_wall_time_s for t in sources])
    seeds = ",".join(str(t.seed if t.seed is not None else 0) for t in sources)
    return (
        f"PARA cuts `{group_name(sources[0].source)}` (seeds {seeds}): it trained {sources[0].source_n_params:,} "
        f"LoRA parameters for {'–' if steps is None else f'{steps:.0f}'} steps"
        f"{'' if wall is None else f' in {wall:.0f} s'} (lr {sources[0].source_lr or '–'}), "
        "then is cut to each budget."
    )
