"""Comparison results: what `python -m analysis.training compare` writes and the Compare page reads.

Frozen dataclasses, their JSON form, and the README's markdown tables. No torch here: the page reads a
comparison.json instantly. Every evaluation is keyed by what it depends on (`EvalKey`: the adapter's
fingerprint, the PARA cut if any, the task, the split and a digest of its example ids), so a result can be
reused exactly when it is still current.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
"""Version 1 (one seed, no predictions) still reads: its evaluations have no predictions."""
REDUCTION_CLAIMS = {0.25: "−75%, PARA's lower claim", 0.10: "−90%, PARA's upper claim"}
"""Budget fractions at which the PARA paper claims accuracy is preserved (75% and 90% fewer parameters)."""


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and mean cross-entropy of one adapter on one split."""

    accuracy: float
    loss: float
    n_examples: int
    n_lora_params: int
    predictions: tuple[int, ...] = ()
    """The predicted label of every example, in the split's order (empty in old reports)."""
    targets: tuple[int, ...] = ()
    """The true labels, in the same order."""

    def correct(self) -> tuple[bool, ...]:
        """Per-example correctness (empty when the predictions were not stored)."""
        return tuple(p == t for p, t in zip(self.predictions, self.targets, strict=True))


@dataclass(frozen=True)
class EvalKey:
    """What an evaluation depends on; equal keys give equal results (evaluation is deterministic)."""

    fingerprint: str
    """Content hash of the evaluated adapter; for a PARA cut, of the adapter it was cut from."""
    task: str
    split: str
    split_digest: str
    """sha256 of the split's example ids (`catalog.split_digest`); "" for the task's default split."""
    position: int | None = None
    """PARA cut position (the number of pooled components kept); None for the adapter as it is."""
    min_rank: int = 0


@dataclass(frozen=True)
class CutResult:
    """A PARA cut of the source adapter and its evaluation."""

    position: int
    min_rank: int
    n_params: int
    params_fraction: float
    energy_kept: float
    evaluation: Evaluation | None
    """None while not evaluated yet (the page evaluates on request); the command always fills it."""
    target_fraction: float | None = None
    """The budget asked for on the accuracy-vs-budget curve (None for a budget-matched cut)."""


@dataclass(frozen=True)
class RunResult:
    """One other run of the task, its evaluation, and the PARA cut at its parameter count."""

    run: str
    method: str
    fingerprint: str
    n_params: int
    evaluation: Evaluation | None
    split_digest: str
    para: CutResult
    spearman: float
    """Spearman correlation of per-module ranks, PARA vs the run (nan if either is uniform)."""
    l1_distance: float
    by_type: Mapping[str, tuple[int, int]]
    """Module type -> (PARA's total rank, the run's)."""
    by_layer: Mapping[str, tuple[int, int]]
    """Layer index (as text) -> (PARA's total rank, the run's)."""
    ranks: Mapping[str, int]
    """The run's rank per module (allocation.json)."""
    para_ranks: Mapping[str, int]
    """PARA's rank per module at the matched budget."""
    seed: int | None = None
    """The run's training seed (metrics.json)."""
    n_steps: int | None = None
    wall_time_s: float | None = None
    lr: float | None = None
    self_cut: CutResult | None = None
    """PARA applied to this run's own adapter (adaptive runs), at `SELF_CUT_FRACTION` of its parameters."""

    @property
    def params_gap(self) -> int:
        return self.para.n_params - self.n_params


@dataclass(frozen=True)
class TaskComparison:
    """Per task: the PARA source run, its accuracy-vs-budget curve and every other run against PARA."""

    task: str
    split: str
    source: str
    source_fingerprint: str
    source_n_params: int
    split_digest: str
    source_evaluation: Evaluation | None
    curve: tuple[CutResult, ...]
    runs: tuple[RunResult, ...]
    seed: int | None = None
    """The training seed shared by the source and the runs (None: one seed, not recorded)."""
    source_n_steps: int | None = None
    source_wall_time_s: float | None = None
    source_lr: float | None = None


@dataclass(frozen=True)
class ComparisonReport:
    """All tasks of one `compare` command, with where and how it was measured."""

    tasks: tuple[TaskComparison, ...]
    command: str = ""
    machine: str = ""
    seconds: float = 0.0

    def evaluations(self) -> dict[EvalKey, Evaluation]:
        """Every evaluation in the report by its key (for reuse by the command and lookups by the page)."""
        found: dict[EvalKey, Evaluation | None] = {}
        for t in self.tasks:
            found[EvalKey(t.source_fingerprint, t.task, t.split, t.split_digest)] = t.source_evaluation
            for c in (*t.curve, *(r.para for r in t.runs)):
                key = EvalKey(t.source_fingerprint, t.task, t.split, t.split_digest, c.position, c.min_rank)
                found[key] = c.evaluation
            for r in t.runs:
                found[EvalKey(r.fingerprint, t.task, t.split, r.split_digest)] = r.evaluation
                if r.self_cut is not None:
                    c = r.self_cut
                    key = EvalKey(r.fingerprint, t.task, t.split, r.split_digest, c.position, c.min_rank)
                    found[key] = c.evaluation
        return {k: v for k, v in found.items() if v is not None}


def _float(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def report_to_json(report: ComparisonReport) -> dict[str, Any]:
    """The JSON-ready form (nan -> null, tuples -> lists)."""
    data = asdict(report)
    for t in data["tasks"]:
        for r in t["runs"]:
            r["spearman"] = _float(r["spearman"])
            r["by_type"] = {k: list(v) for k, v in r["by_type"].items()}
            r["by_layer"] = {k: list(v) for k, v in r["by_layer"].items()}
    return {"schema": SCHEMA_VERSION, **data}


def _evaluation(d: Mapping[str, Any] | None) -> Evaluation | None:
    if d is None:
        return None
    return Evaluation(**{**d, "predictions": tuple(d.get("predictions", ())), "targets": tuple(d.get("targets", ()))})


def _cut(d: Mapping[str, Any]) -> CutResult:
    return CutResult(**{**d, "evaluation": _evaluation(d["evaluation"])})


def _run(d: Mapping[str, Any]) -> RunResult:
    return RunResult(
        **{
            **d,
            "evaluation": _evaluation(d["evaluation"]),
            "para": _cut(d["para"]),
            "spearman": float("nan") if d["spearman"] is None else float(d["spearman"]),
            "by_type": {k: (int(a), int(b)) for k, (a, b) in d["by_type"].items()},
            "by_layer": {k: (int(a), int(b)) for k, (a, b) in d["by_layer"].items()},
            "self_cut": None if d.get("self_cut") is None else _cut(d["self_cut"]),
        }
    )


def report_from_json(data: Mapping[str, Any]) -> ComparisonReport:
    """Inverse of `report_to_json`.

    Raises:
        ValueError: for another schema version or a malformed file.
    """
    if data.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(
            f"comparison schema {data.get('schema')!r} is not {SCHEMA_VERSION}; rerun the compare command"
        )
    try:
        tasks = tuple(
            TaskComparison(
                **{
                    **t,
                    "source_evaluation": _evaluation(t["source_evaluation"]),
                    "curve": tuple(_cut(c) for c in t["curve"]),
                    "runs": tuple(_run(r) for r in t["runs"]),
                }
            )
            for t in data["tasks"]
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"malformed comparison file ({type(err).__name__}: {err}); rerun the compare command"
        ) from err
    return ComparisonReport(tasks, data.get("command", ""), data.get("machine", ""), data.get("seconds", 0.0))


def write_report(report: ComparisonReport, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the JSON atomically (temp file, then rename); `extra` keys (the seed summary) are added as they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({**report_to_json(report), **(extra or {})}, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_report(path: str | Path) -> ComparisonReport | None:
    """The report at `path`, or None when there is none. Raises ValueError for a malformed file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return report_from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the compare command") from err
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _pct(e: Evaluation | None) -> str:
    return "–" if e is None else f"{100 * e.accuracy:.2f}%"


def _gap(a: Evaluation | None, b: Evaluation | None) -> str:
    return "–" if a is None or b is None else f"{100 * (a.accuracy - b.accuracy):+.2f}"


def matched_table(t: TaskComparison) -> str:
    """Markdown: every run against the PARA cut of the source at the same LoRA parameter count."""
    n = f"{t.source_evaluation.n_examples:,} " if t.source_evaluation else ""
    lines = [
        f"**{t.task}** ({n}{t.split} examples; PARA source `{t.source}`, "
        f"{t.source_n_params:,} LoRA params, {t.split} accuracy {_pct(t.source_evaluation)})",
        "",
        "| run | method | LoRA params | accuracy | PARA params (matched) | PARA accuracy | PARA − run (points) "
        "| Spearman | L1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in t.runs:
        rho = "n/a (uniform)" if math.isnan(r.spearman) else f"{r.spearman:.2f}"
        lines.append(
            f"| {r.run} | {r.method} | {r.n_params:,} | {_pct(r.evaluation)} | {r.para.n_params:,} | "
            f"{_pct(r.para.evaluation)} | {_gap(r.para.evaluation, r.evaluation)} | {rho} | {r.l1_distance:.2f} |"
        )
    return "\n".join(lines)


def curve_table(tasks: Sequence[TaskComparison]) -> str:
    """Markdown: PARA accuracy at each budget fraction of the curve, one column pair per task."""
    header = "| LoRA params kept | " + " | ".join(f"{t.task}: params | {t.task}: accuracy" for t in tasks) + " |"
    lines = [header, "| ---: |" + " ---: | ---: |" * len(tasks)]
    fractions = list(dict.fromkeys(c.target_fraction for t in tasks for c in t.curve))
    for f in fractions:
        note = "original" if f == 1.0 else REDUCTION_CLAIMS.get(f)
        label = f"{f:.0%}" + (f" ({note})" if note else "")
        cells = []
        for t in tasks:
            c = next((c for c in t.curve if c.target_fraction == f), None)
            cells += [f"{c.n_params:,}", _pct(c.evaluation)] if c else ["–", "–"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_tables(report: ComparisonReport) -> str:
    """The README section's tables: one matched-budget table per task, then the PARA curve table."""
    parts = [matched_table(t) for t in report.tasks]
    if report.tasks:
        parts.append("PARA accuracy against budget (cuts of the source adapter):\n\n" + curve_table(report.tasks))
    return "\n\n".join(parts)
