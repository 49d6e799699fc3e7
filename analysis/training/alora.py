"""ALoRA = Allocating LoRA (Liu et al., arXiv 2403.16187, Algorithm 1), NOT peft's "aLoRA" (Activated LoRA).

Every rank of every module has a 0/1 gate; all modules start at r_init = the budget's uniform rank (the
paper's super-network never exceeds its rank budget R_target = sum of r_init). Algorithm 1, as here:
1. train K1 = 1 epoch;
2. for up to N_A rounds: score every active rank with AB-LoRA, IS(r) = CE(M without r) - CE(M with only r)
   on a fixed batch of 32 validation examples ("only r" read globally: every other LoRA rank of the network
   off), switch off the n_A lowest, give n_A fresh ranks (LoRA init: A row random, B column 0, gate 1) to the
   modules that lost none this round, split evenly with the remainder to higher mean score (8 over 3 -> 3, 3,
   2), then train K2 = 0.25 epoch;
3. train on to the end of the schedule.
The total rank stays R_target (it falls only if no module is left to receive); there is no per-module cap:
each module holds r_init + N_A n_A slots, more than any module can receive. The parameter count can move
either way (an FFN rank costs 1920 parameters on MiniLM, an attention one 768), as in the paper (20.0M ->
19.6M). One AdamW and one warm-up / decay schedule run through every phase; a re-added rank starts with
zero Adam moments (the step count, and so the bias correction, is the run's). The scale stays alpha / r_init.

Each round also scores the ranks on a second, disjoint validation batch of the same size and records the
Kendall tau between the two orders, the per-rank standard error of IS over the batch's examples, and how
many of the pruned ranks the second batch would have pruned: whether the pruning follows signal or noise.

Our choices: n_A = 6 (module types per block, the paper's N_mod read per block) and N_A = 4 rounds (the
paper: at most 8) to fit the 2-core CPU; each round costs 4 x (active ranks) forward passes of 32 examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.training.data import Example
from analysis.training.gated import GatedLoraLinear, wrap_targets
from analysis.training.lora import StepCallback, TrainConfig, encode, total_steps, train_loop

RankKey = tuple[str, int]
"""(module name, slot index) of one rank."""


@dataclass(frozen=True)
class AloraConfig:
    r_init: int = 8
    """Initial rank of every module (the budget's uniform rank)."""
    rounds: int = 4
    """N_A: the most prune-and-reallocate rounds (fewer when the schedule ends first)."""
    n_prune: int = 6
    """n_A: ranks switched off (and re-added elsewhere) per round."""
    k1_epochs: float = 1.0
    """K1: training before the first round."""
    k2_epochs: float = 0.25
    """K2: recovery training after each round."""
    val_batch: int = 32
    """|B_val|: validation examples each score is measured on (a second, disjoint batch checks the order)."""
    configs_per_pass: int = 16
    """Gate settings evaluated in one forward pass."""

    @property
    def capacity(self) -> int:
        """Slots per module: more than any module can hold, so no cap ever binds."""
        return self.r_init + self.rounds * self.n_prune


@torch.no_grad()
def score_ranks(
    model: nn.Module, layers: dict[str, GatedLoraLinear], inputs: dict[str, torch.Tensor], labels: torch.Tensor,
    configs_per_pass: int = 16,
) -> tuple[dict[RankKey, float], dict[RankKey, float]]:  # fmt: skip
    """AB-LoRA IS(r) = CE(M without r) - CE(M with only r) of every active rank, and its standard error over
    the batch's examples; G gate settings per forward pass."""
    was_training = model.training
    model.eval()
    ranks = [(name, i) for name, layer in layers.items() for i in layer.active.nonzero().flatten().tolist()]
    scores: dict[RankKey, float] = {}
    errors: dict[RankKey, float] = {}
    b = labels.shape[0]
    for start in range(0, len(ranks), configs_per_pass):
        chunk = ranks[start : start + configs_per_pass]
        g = len(chunk)
        ids = inputs["input_ids"].repeat(g, 1)  # (g * b, t)
        mask = inputs["attention_mask"].repeat(g, 1)
        ce = {}
        for mode in ("without", "alone"):
            for name, layer in layers.items():
                layer.gate_override = torch.full((g, layer.cap), 1.0 if mode == "without" else 0.0)
            for j, (name, i) in enumerate(chunk):
                layers[name].gate_override[j, i] = 0.0 if mode == "without" else 1.0
            logits = model(ids, mask)  # (g * b, classes)
            ce[mode] = nn.functional.cross_entropy(logits, labels.repeat(g), reduction="none").reshape(g, b)
        diff = ce["without"] - ce["alone"]  # (g, b): per example
        for j, key in enumerate(chunk):
            scores[key] = float(diff[j].mean())
            errors[key] = float(diff[j].std() / math.sqrt(b)) if b > 1 else float("nan")
    for layer in layers.values():
        layer.gate_override = torch.ones(layer.cap)
    model.train(was_training)
    return scores, errors


def importance_scores(
    model: nn.Module, layers: dict[str, GatedLoraLinear], inputs: dict[str, torch.Tensor], labels: torch.Tensor,
    configs_per_pass: int = 16,
) -> dict[RankKey, float]:  # fmt: skip
    """AB-LoRA IS(r) of every active rank (see `score_ranks`)."""
    return score_ranks(model, layers, inputs, labels, configs_per_pass)[0]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists over the same items (1: same order; nan for fewer than 2)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2:
        return float("nan")
    da = np.sign(a[:, None] - a[None, :])  # (n, n)
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(a.size, k=1)
    sa, sb = da[upper], db[upper]
    n_a, n_b = np.count_nonzero(sa), np.count_nonzero(sb)
    if n_a == 0 or n_b == 0:
        return float("nan")
    return float((sa * sb).sum() / math.sqrt(n_a * n_b))


def reallocate(layers: dict[str, GatedLoraLinear], scores: dict[RankKey, float], n_prune: int) -> dict:
    """Switch off the n_prune lowest-scoring ranks and give as many fresh ranks to the modules that lost none.

    Receivers are the modules with an active rank and none pruned this round; each gets n_prune // k, and the
    n_prune % k with the highest mean score get one more (Algorithm 1's even split). No cap: a module's slots
    (`AloraConfig.capacity`) always suffice.

    Returns:
        {"pruned": [[module, slot, score], ...] lowest first, "added": {module: [slots]}}.
    """
    lowest = sorted(scores, key=lambda k: (scores[k], k))[:n_prune]
    for name, i in lowest:
        layers[name].active[i] = False
    lost = {name for name, _ in lowest}
    per_module: dict[str, list[float]] = {}
    for (name, _), value in scores.items():
        per_module.setdefault(name, []).append(value)
    mean_score = {name: sum(v) / len(v) for name, v in per_module.items()}
    receivers = sorted((n for n in mean_score if n not in lost), key=lambda n: (-mean_score[n], n))
    added: dict[str, list[int]] = {}
    if receivers:
        share, extra = divmod(len(lowest), len(receivers))
        for rank_in_order, name in enumerate(receivers):
            layer = layers[name]
            for _ in range(share + (rank_in_order < extra)):
                free = (~layer.active).nonzero().flatten()
                if not free.numel():
                    raise RuntimeError(f"{name}: no free rank slot; capacity must be r_init + rounds * n_prune")
                slot = int(free[0])
                layer.init_slot(slot)
                added.setdefault(name, []).append(slot)
    return {"pruned": [[n, i, round(scores[(n, i)], 6)] for n, i in lowest], "added": added}


def reset_adam_state(optimizer: torch.optim.Optimizer, layer: GatedLoraLinear, slots: Sequence[int]) -> None:
    """Zero the Adam moments of re-initialised rank slots: a new rank joins the run's optimizer afresh."""
    for param, index in ((layer.A, (list(slots), slice(None))), (layer.B, (slice(None), list(slots)))):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0


def _batch(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int):
    inputs = encode(tokenizer, [e.text for e in examples], max_length)
    return inputs, torch.tensor([e.label for e in examples])


def _round_record(
    names: list[str], scores: dict, errors: dict, check: dict, moves: dict, n_prune: int
) -> dict:  # fmt: skip
    """What a reader needs to judge a round: every score on both batches, their spread, the order's stability."""
    keys = sorted(scores, key=lambda k: (names.index(k[0]), k[1]))
    first = np.array([scores[k] for k in keys])
    second = np.array([check[k] for k in keys])
    pruned = {(n, i) for n, i, _ in moves["pruned"]}
    lowest_check = set(sorted(check, key=lambda k: (check[k], k))[:n_prune])
    q1, median, q3 = np.quantile(first, [0.25, 0.5, 0.75])
    return {
        "scores": [[names.index(n), i, round(scores[(n, i)], 6), round(check[(n, i)], 6)] for n, i in keys],
        "spread": {
            "min": round(float(first.min()), 6),
            "q1": round(float(q1), 6),
            "median": round(float(median), 6),
            "q3": round(float(q3), 6),
            "max": round(float(first.max()), 6),
            "std": round(float(first.std()), 6),
        },  # fmt: skip
        "median_standard_error": round(float(np.nanmedian([errors[k] for k in keys])), 6),
        "kendall_tau": round(kendall_tau(first, second), 4),
        "pruned_also_lowest_on_check_batch": len(pruned & lowest_check),
    }


def train_alora(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    validation: Sequence[Example],
    config: TrainConfig,
    alora: AloraConfig,
    *,
    on_step: StepCallback | None = None,
) -> tuple[dict[str, GatedLoraLinear], list[float], list[dict], dict]:
    """Train with ALoRA (Algorithm 1); returns the gated layers, loss curve, round trajectory and details.

    Raises:
        ValueError: when the validation split cannot give two disjoint scoring batches.
    """
    if len(validation) < 2 * alora.val_batch:
        raise ValueError(
            f"ALoRA needs {2 * alora.val_batch} validation examples (two scoring batches), got {len(validation)}"
        )
    torch.manual_seed(config.seed)
    scaling = config.lora_alpha / alora.r_init
    layers = wrap_targets(model, GatedLoraLinear, cap=alora.capacity, n_active=alora.r_init, scaling=scaling)
    names = sorted(layers)
    batch = _batch(tokenizer, validation[: alora.val_batch], config.max_length)
    check_batch = _batch(tokenizer, validation[alora.val_batch : 2 * alora.val_batch], config.max_length)
    total = total_steps(len(train), config)
    per_epoch = math.ceil(len(train) / config.batch_size)
    k1 = max(1, round(alora.k1_epochs * per_epoch))
    k2 = max(1, round(alora.k2_epochs * per_epoch))
    round_steps = [k1 + j * k2 for j in range(alora.rounds) if k1 + j * k2 < total]
    trajectory = [{"step": 0, "round": None, "ranks": [int(layers[n].active.sum()) for n in names]}]
    optimizers: list[torch.optim.Optimizer] = []

    def after_step(step: int) -> None:
        if step not in round_steps:
            return
        scores, errors = score_ranks(model, layers, *batch, alora.configs_per_pass)
        check, _ = score_ranks(model, layers, *check_batch, alora.configs_per_pass)
        moves = reallocate(layers, scores, alora.n_prune)
        for name, slots in moves["added"].items():
            reset_adam_state(optimizers[0], layers[name], slots)
        record = _round_record(names, scores, errors, check, moves, alora.n_prune)
        ranks = [int(layers[n].active.sum()) for n in names]
        trajectory.append({"step": step, "round": round_steps.index(step) + 1, "ranks": ranks, **moves, **record})

    losses = train_loop(
        model, tokenizer, train, config, on_step=on_step, after_step=after_step, on_optimizer=optimizers.append
    )
    details = {
        "modules": names, "r_init": alora.r_init, "rank_budget": alora.r_init * len(names),
        "n_prune": alora.n_prune, "rounds_planned": alora.rounds, "rounds_done": len(round_steps),
        "k1_steps": k1, "k2_steps": k2, "round_steps": round_steps, "val_batch": alora.val_batch,
        "capacity": alora.capacity, "optimizer_steps": _optimizer_steps(optimizers[0]),
    }  # fmt: skip
    return layers, losses, trajectory, details


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Steps the run's one optimizer took (its per-parameter count; equal to the run's steps)."""
    counts = [int(s["step"]) for s in optimizer.state.values() if "step" in s]
    return max(counts, default=0)
