"""ALoRA = Allocating LoRA (Liu et al., arXiv 2403.16187), NOT peft's "aLoRA" (Activated LoRA).

Every rank of every module has a 0/1 gate; all modules start at r_init = the budget's uniform rank (the
paper's super-network never exceeds the budget). After K1 of training, each of N_A rounds scores every
active rank with AB-LoRA, IS(r) = CE(model with only gate r off) - CE(model with only rank r on) on a fixed
validation batch ("only rank r on" read globally: every other LoRA rank of the network off), switches off
the n_A lowest, and gives that many fresh ranks (LoRA init: A row random, B column 0, gate 1) to modules
that lost none this round, split evenly with the remainder to higher mean score (Algorithm 1), then
trains K2; training then continues to the end. The scale stays alpha / r_init when ranks move.

Our additions: a rank is only added while the parameter count stays within the budget (a rank of an FFN
module costs 1920 parameters on MiniLM, an attention one 768), and a module holds at most 2 * r_init
slots. Scaled to MiniLM on 2 CPU cores (paper: r_init 8, n_A = modules per block, N_A 8, K1 1 epoch,
K2 0.25 epoch, |B_val| 32): n_A = 6 (module types per block), N_A = 8, |B_val| = 16 headlines; K1 = a
third of the steps, the rounds share the middle third (K2 = T / (3 N_A) steps), the last third trains
on. The 2 x (active ranks) ablations per round run 16 gate settings per forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from analysis.training.data import Example
from analysis.training.gated import GatedLoraLinear, wrap_targets
from analysis.training.lora import StepCallback, TrainConfig, encode, total_steps, train_loop


@dataclass(frozen=True)
class AloraConfig:
    r_init: int = 8
    """Initial rank of every module (the budget's uniform rank)."""
    rounds: int = 8
    """N_A: prune-and-reallocate rounds."""
    n_prune: int = 6
    """n_A: ranks switched off per round."""
    val_batch: int = 16
    capacity: int = 16
    """Rank slots per module (a module can grow up to this)."""
    configs_per_pass: int = 16
    """Gate settings evaluated in one forward pass."""


@torch.no_grad()
def importance_scores(
    model: nn.Module, layers: dict[str, GatedLoraLinear], inputs: dict[str, torch.Tensor], labels: torch.Tensor,
    configs_per_pass: int = 16,
) -> dict[tuple[str, int], float]:  # fmt: skip
    """AB-LoRA IS(r) = CE(M without r) - CE(M with only r) for every active rank, G gate settings per pass."""
    model.eval()
    ranks = [(name, i) for name, layer in layers.items() for i in layer.active.nonzero().flatten().tolist()]
    scores: dict[tuple[str, int], float] = {}
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
            per_example = nn.functional.cross_entropy(logits, labels.repeat(g), reduction="none")
            ce[mode] = per_example.reshape(g, b).mean(1)  # (g,)
        for j, key in enumerate(chunk):
            scores[key] = float(ce["without"][j] - ce["alone"][j])
    for layer in layers.values():
        layer.gate_override = torch.ones(layer.cap)
    return scores


def reallocate(
    layers: dict[str, GatedLoraLinear], scores: dict[tuple[str, int], float], n_prune: int, budget: int
) -> dict:
    """Switch off the n_prune lowest-scoring ranks; give as many fresh ranks to modules that lost none.

    Additions go round-robin over receivers in order of mean score (the paper's even split with the
    remainder to higher mean score) and skip a receiver that is full or would break the parameter budget.
    """
    lowest = sorted(scores, key=scores.get)[:n_prune]
    for name, i in lowest:
        layers[name].active[i] = False
    lost = {name for name, _ in lowest}
    per_module: dict[str, list[float]] = {}
    for (name, _), value in scores.items():
        per_module.setdefault(name, []).append(value)
    mean_score = {name: sum(v) / len(v) for name, v in per_module.items()}
    receivers = sorted((n for n in layers if n not in lost), key=lambda n: -mean_score.get(n, -math.inf))
    used = sum(int(layer.active.sum()) * layer.cost for layer in layers.values())
    added: dict[str, int] = {}
    to_add = len(lowest)
    while to_add and receivers:
        progressed = False
        for name in receivers:
            layer = layers[name]
            free = (~layer.active).nonzero().flatten()
            if not to_add or not free.numel() or used + layer.cost > budget:
                continue
            layer.init_slot(int(free[0]))
            used += layer.cost
            added[name] = added.get(name, 0) + 1
            to_add -= 1
            progressed = True
        if not progressed:
            break
    return {"pruned": [[n, i, round(scores[(n, i)], 5)] for n, i in lowest], "added": added}


def train_alora(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    validation: Sequence[Example],
    config: TrainConfig,
    alora: AloraConfig,
    budget: int,
    *,
    on_step: StepCallback | None = None,
) -> tuple[dict[str, GatedLoraLinear], list[float], list[dict]]:
    """Train with ALoRA within `budget` parameters; returns the gated layers, loss curve and round trajectory."""
    torch.manual_seed(config.seed)
    scaling = config.lora_alpha / alora.r_init
    layers = wrap_targets(model, GatedLoraLinear, cap=alora.capacity, n_active=alora.r_init, scaling=scaling)
    names = sorted(layers)
    batch = list(validation[: alora.val_batch])
    inputs = encode(tokenizer, [e.text for e in batch], config.max_length)
    labels = torch.tensor([e.label for e in batch])
    total = total_steps(len(train), config)
    k1 = total // 3
    rounds = min(alora.rounds, total // 3)  # short runs (tests) get fewer rounds, at least one step each
    k2 = (total // 3) // rounds if rounds else 0
    phases = [k1] + [k2] * rounds + [total - k1 - k2 * rounds]
    done = 0
    losses: list[float] = []
    trajectory = [{"step": 0, "round": None, "ranks": [int(layers[n].active.sum()) for n in names]}]
    for phase, steps in enumerate(phases):
        if 0 < phase <= rounds:
            scores = importance_scores(model, layers, inputs, labels, alora.configs_per_pass)
            moves = reallocate(layers, scores, alora.n_prune, budget)
            ranks = [int(layers[n].active.sum()) for n in names]
            trajectory.append({"step": done, "round": phase, "ranks": ranks, **moves})
        if steps == 0:
            continue
        epochs = math.ceil(steps * config.batch_size / max(1, len(train))) or 1
        phase_config = replace(config, epochs=float(epochs), max_steps=steps, seed=config.seed + 1000 * phase)

        def progress(step: int, _total: int, loss: float, offset: int = done) -> None:
            if on_step is not None:
                on_step(offset + step, total, loss)

        more = train_loop(model, tokenizer, train, phase_config, on_step=progress)
        losses += more
        done += len(more)
    return layers, losses, trajectory
