"""The user's data as a `CutEvaluator`: what the PARA page's evaluation and recommended-cut search call.

A cut at full size is the adapter itself (loaded from its folder); any other cut is exported and loaded by peft
on the shared base model (see cut.py). No streamlit, no printing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from analysis.adapters import LoraAdapter
from analysis.evaluation.base_model import BaseModel
from analysis.evaluation.cut import evaluate_cut
from analysis.evaluation.metrics import EvalData
from analysis.para import RankAllocation
from analysis.recommend import CutEvaluator, StepCallback


def file_digest(path: str | Path) -> str:
    """SHA-256 of a data file's bytes: evaluations are cached by what the file holds, not its name."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def own_data_evaluator(
    adapter: LoraAdapter, base: BaseModel, data: EvalData, *, reference: float | None = None
) -> CutEvaluator:
    """Perplexity (causal LM, lower is better) or accuracy (classifier) of any cut of `adapter` on `data`.

    Args:
        adapter: the adapter whose cuts are scored.
        base: its base model, loaded once (`open_base`).
        data: the user's data for that base (`prepare_data`).
        reference: the uncompressed adapter's figure, when already measured.
    """
    is_lm = base.task == "causal-lm"
    name = f"{'perplexity' if is_lm else 'accuracy'} on {Path(data.source).name}"

    def evaluate(allocation: RankAllocation, on_step: StepCallback | None) -> float:
        whole = allocation.n_params_after == adapter.n_params  # every component kept: the adapter as it is
        step = None if on_step is None else lambda done, total: on_step(done, total, float("nan"))
        return evaluate_cut(base, adapter, None if whole else allocation, data, on_step=step).value

    settings = data.settings
    return CutEvaluator(
        key=("own-data", adapter.fingerprint, str(base.info.folder), base.task, file_digest(data.source), settings),
        name=name,
        higher_is_better=not is_lm,
        evaluate=evaluate,
        reference=reference,
        percent=not is_lm,
        description=f"Exports the cut, loads it with peft on {base.info.folder.name} and scores "
        f"{data.describe()}{' (lower is better)' if is_lm else ''}.",
    )
