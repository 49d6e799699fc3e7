"""PARA vs adaptive-rank runs at matched budgets, with task accuracy: the engine of the `compare` command.

Per task: the fixed-rank run of highest rank is PARA's source; every other finished run of the task is
matched with the PARA cut of the source at its LoRA parameter count, and both are evaluated as deployed
(PEFT folder loaded with peft). PARA's accuracy-vs-budget curve is evaluated too. Evaluations go through
an `Evaluations` store keyed by `EvalKey`: known results are reused, missing ones are computed (the
command) or listed as pending (the Compare page evaluates them on request). No streamlit, no printing.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.adapters import LoraAdapter, load_adapter
from analysis.compare import match_allocation
from analysis.para import ParaIndex, RankAllocation, allocate_at, cut_position, para_index
from analysis.spectra import adapter_spectra
from analysis.training.catalog import classification_runs, para_source, split_digest
from analysis.training.evaluate import evaluate_adapter, evaluate_cut
from analysis.training.lora import StepCallback
from analysis.training.records import ADAPTER_DIR, RunRecord
from analysis.training.results import ComparisonReport, CutResult, EvalKey, Evaluation, RunResult, TaskComparison

SELF_CUT_FRACTION = 0.5
"""PARA applied to an adaptive run's own adapter: the cut keeping this share of its LoRA parameters."""
DEFAULT_FRACTIONS = (1.0, 0.5, 0.25, 0.15, 0.1, 0.05)
"""PARA budgets of the accuracy-vs-budget curve, as fractions of the source's LoRA parameters."""

ProgressCallback = Callable[[str, int, int], None]
"""on_progress(label of the evaluation, step, total steps)."""
Compute = Callable[[StepCallback | None], Evaluation]
"""Runs one evaluation: compute(on_step) -> Evaluation."""


@dataclass(frozen=True)
class PendingEvaluation:
    """An evaluation that is not known yet: its key, a label for progress, and how to run it."""

    key: EvalKey
    label: str
    compute: Compute


class Evaluations:
    """Evaluation results by key. A missing one is computed now (`compute=True`) or listed in `pending`."""

    def __init__(
        self, known: Mapping[EvalKey, Evaluation], *, compute: bool, on_progress: ProgressCallback | None = None
    ) -> None:
        self.results = dict(known)
        self.is_computing = compute
        self.on_progress = on_progress
        self.pending: list[PendingEvaluation] = []
        self.n_computed = 0

    def get(self, key: EvalKey, label: str, compute: Compute) -> Evaluation | None:
        """The result for `key`: known, computed now, or None (then listed in `pending`)."""
        if key in self.results:
            return self.results[key]
        if not self.is_computing:
            if all(p.key != key for p in self.pending):
                self.pending.append(PendingEvaluation(key, label, compute))
            return None
        report = self.on_progress
        on_step = (lambda step, total, loss: report(label, step, total)) if report else None
        self.results[key] = compute(on_step)
        self.n_computed += 1
        return self.results[key]


def read_allocation(run: RunRecord) -> dict[str, int]:
    """A run's final rank per module (allocation.json).

    Raises:
        ValueError: when the run has no allocation.json.
    """
    file = run.path / "allocation.json"
    if not file.is_file():
        raise ValueError(f"{run.path}: no allocation.json; is this a complete run record?")
    return {name: int(r) for name, r in json.loads(file.read_text()).items()}


def by_seed(runs: Sequence[RunRecord]) -> dict[int, list[RunRecord]]:
    """Runs grouped by training seed (metrics.json; 0 when not recorded), seeds in order."""
    groups: dict[int, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(int(run.metrics.get("seed") or 0), []).append(run)
    return dict(sorted(groups.items()))


def _index(adapter: LoraAdapter) -> ParaIndex:
    return para_index(adapter_spectra(adapter))


def compare_task(
    task: str,
    runs: Sequence[RunRecord],
    evaluations: Evaluations,
    *,
    source: RunRecord | None = None,
    split: str = "test",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    min_rank: int = 0,
    load: Callable[[Path], LoraAdapter] = load_adapter,
    index_of: Callable[[LoraAdapter], ParaIndex] = _index,
    digest_of: Callable[[Path, str], str] = split_digest,
) -> TaskComparison | None:
    """One task: PARA's curve on the source and every other run against PARA at its parameter count.

    Args:
        task: the task all `runs` were trained on.
        runs: finished classification runs of the task (the source among them or not).
        evaluations: where results are looked up, computed or left pending.
        source: PARA's fixed-rank run (default: `para_source(runs)`).
        split: "test" or "validation".
        fractions: PARA budgets of the accuracy-vs-budget curve.
        min_rank: as in `allocate_ranks`.
        load: reads an adapter folder (the app passes its cached loader).
        index_of: an adapter's PARA index (the app passes its cached one).
        digest_of: a run's split digest (the app passes its cached one).

    Returns:
        The comparison (evaluations None where pending), or None when there is no fixed-rank run.
    """
    source = source or para_source(runs)
    if source is None:
        return None
    adapter = load(source.path / ADAPTER_DIR)
    index = index_of(adapter)
    digest = digest_of(source.path, split)
    source_eval = evaluations.get(
        EvalKey(adapter.fingerprint, task, split, digest),
        f"{source.name} as trained",
        lambda on_step: evaluate_adapter(source.path, task, split=split, on_step=on_step),
    )

    def cut(allocation: RankAllocation, position: int, label: str, fraction: float | None = None) -> CutResult:
        evaluation = evaluations.get(
            EvalKey(adapter.fingerprint, task, split, digest, position, min_rank),
            label,
            lambda on_step: evaluate_cut(adapter, allocation, task, run=source.path, split=split, on_step=on_step),
        )
        return CutResult(
            position, min_rank, allocation.n_params_after, allocation.params_fraction, allocation.energy_kept,
            evaluation, fraction,
        )  # fmt: skip

    curve = []
    for f in fractions:
        position = cut_position(index, f, "params_fraction")
        allocation = allocate_at(index, position, min_rank=min_rank)
        curve.append(cut(allocation, position, f"PARA {f:.0%} of {source.name}", f))
    results = []
    for run in runs:
        if run.path == source.path:
            continue
        run_adapter = load(run.path / ADAPTER_DIR)
        # dense updates (LR-LoRA): matched at the trained parameter count, r (in + out) + 2K per module
        trained = run_adapter.n_params if any(m.is_dense for m in run_adapter.modules) else None
        matched = match_allocation(index, run.name, read_allocation(run), min_rank=min_rank, n_params=trained)
        run_digest = digest_of(run.path, split)
        run_eval = evaluations.get(
            EvalKey(run_adapter.fingerprint, task, split, run_digest),
            run.name,
            lambda on_step, run=run: evaluate_adapter(run.path, task, split=split, on_step=on_step),
        )
        self_cut = None
        if run.metrics.get("method") != "lora":  # PARA applied to the adaptive run itself, at a smaller budget
            run_index = index_of(run_adapter)
            position = cut_position(run_index, SELF_CUT_FRACTION, "params_fraction")
            allocation = allocate_at(run_index, position, min_rank=min_rank)
            self_key = EvalKey(run_adapter.fingerprint, task, split, run_digest, position, min_rank)
            # the command measures it; the page shows it only when comparison.json has it (never pending)
            if evaluations.is_computing or self_key in evaluations.results:
                self_eval = evaluations.get(
                    self_key,
                    f"PARA {SELF_CUT_FRACTION:.0%} of {run.name}",
                    lambda on_step, a=run_adapter, c=allocation, run=run: evaluate_cut(
                        a, c, task, run=run.path, split=split, on_step=on_step
                    ),
                )
                self_cut = CutResult(
                    position, min_rank, allocation.n_params_after, allocation.params_fraction,
                    allocation.energy_kept, self_eval, SELF_CUT_FRACTION,
                )  # fmt: skip
        c = matched.comparison
        results.append(
            RunResult(
                run=run.name,
                method=str(run.metrics.get("method")),
                fingerprint=run_adapter.fingerprint,
                n_params=matched.n_params,
                evaluation=run_eval,
                split_digest=run_digest,
                para=cut(matched.para, matched.position, f"PARA matched to {run.name}"),
                spearman=c.spearman,
                l1_distance=c.l1_distance,
                by_type=dict(c.by_type),
                by_layer={str(k): v for k, v in c.by_layer.items()},
                ranks=dict(matched.ranks),
                para_ranks=dict(matched.para.rank_map),
                seed=run.metrics.get("seed"),
                n_steps=run.metrics.get("n_steps"),
                wall_time_s=run.metrics.get("wall_time_s"),
                lr=run.metrics.get("config", {}).get("lr"),
                self_cut=self_cut,
            )
        )
    m = source.metrics
    return TaskComparison(
        task, split, source.name, adapter.fingerprint, adapter.n_params, digest, source_eval,
        tuple(curve), tuple(results), m.get("seed"), m.get("n_steps"), m.get("wall_time_s"),
        m.get("config", {}).get("lr"),
    )  # fmt: skip


def compare_runs(
    folder: str | Path,
    *,
    split: str = "test",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    min_rank: int = 0,
    previous: ComparisonReport | None = None,
    on_progress: ProgressCallback | None = None,
    command: str = "",
) -> tuple[ComparisonReport, int]:
    """Compare every task's runs under `folder` (classification runs only; others are ignored).

    Args:
        folder: a folder of run records, e.g. sample_adapters/.
        split: "test" or "validation".
        fractions: PARA budgets of the accuracy-vs-budget curve.
        min_rank: as in `allocate_ranks`.
        previous: a report whose still-current evaluations (same keys) are reused.
        on_progress: progress of each evaluation.
        command: the command line, recorded in the report.

    Returns:
        The report and the number of evaluations computed (the rest were reused).

    Raises:
        ValueError: when `folder` holds no classification run with a fixed-rank source.
    """
    start = time.perf_counter()
    evaluations = Evaluations(previous.evaluations() if previous else {}, compute=True, on_progress=on_progress)
    tasks = []
    for task, runs in classification_runs(folder).items():
        for seed_runs in by_seed(runs).values():  # PARA cuts the source of the same training seed
            result = compare_task(task, seed_runs, evaluations, split=split, fractions=fractions, min_rank=min_rank)
            if result is not None:
                tasks.append(result)
    if not tasks:
        raise ValueError(f"{folder}: no finished classification run with a fixed-rank (lora) run to cut")
    machine = f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"
    return ComparisonReport(tuple(tasks), command, machine, time.perf_counter() - start), evaluations.n_computed
