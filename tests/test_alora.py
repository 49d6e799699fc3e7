"""ALoRA by Algorithm 1: AB-LoRA scores on a constructed case, the even reallocation, one optimizer across the
phases, and round records with scores and Kendall tau; seeds share their data split."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from analysis.training.alora import (
    AloraConfig,
    kendall_tau,
    reallocate,
    reset_adam_state,
    score_ranks,
    train_alora,
)
from analysis.training.gated import GatedLoraLinear
from analysis.training.lora import TrainConfig
from analysis.training.runs import RunSpec, train_run
from tests.test_training import easy_task, tiny_factory


class BagOfTokens(nn.Module):
    """One-hot token bag -> a gated LoRA layer over a zero base weight -> logits: its ranks are set by hand."""

    def __init__(self, n_tokens: int = 3) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.proj = GatedLoraLinear(nn.Linear(n_tokens, 2, bias=False), cap=4, n_active=3, scaling=1.0)
        with torch.no_grad():
            self.proj.base.weight.zero_()
            self.proj.A.zero_()
            self.proj.B.zero_()
            self.proj.A[0, 0] = self.proj.A[1, 1] = self.proj.A[2, 2] = 1.0  # rank i reads token i
            self.proj.B[:, 0] = torch.tensor([2.0, -2.0])  # token 0 -> class 0
            self.proj.B[:, 1] = torch.tensor([-2.0, 2.0])  # token 1 -> class 1
            # rank 2 reads token 2 (present in every example) and writes nothing: known to be useless

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bag = nn.functional.one_hot(input_ids, self.n_tokens).float().mean(1)  # (b, n_tokens)
        return self.proj(bag)


def test_useless_rank_scores_lowest_and_is_pruned_first():
    model = BagOfTokens()
    ids = torch.tensor([[0, 2]] * 4 + [[1, 2]] * 4)  # token 0 or 1 decides the class; token 2 is everywhere
    labels = torch.tensor([0] * 4 + [1] * 4)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    layers = {"proj": model.proj}
    scores, errors = score_ranks(model, layers, inputs, labels, configs_per_pass=2)
    # known answers: IS = CE(without r) - CE(only r). Each useful rank alone is as good as the other one
    # without it (IS = 0); the useless rank scores CE(full model) - CE(no LoRA) = log(1 + e^-2) - log 2
    assert scores[("proj", 0)] == pytest.approx(0.0, abs=1e-6) and scores[("proj", 1)] == pytest.approx(0.0, abs=1e-6)
    assert scores[("proj", 2)] == pytest.approx(math.log1p(math.exp(-2.0)) - math.log(2.0), abs=1e-6)
    assert errors[("proj", 2)] == pytest.approx(0.0, abs=1e-6)  # the same on every example
    moves = reallocate(layers, scores, n_prune=1)
    assert moves["pruned"][0][:2] == ["proj", 2] and not bool(model.proj.active[2])
    assert moves["added"] == {}  # the only module lost a rank: nobody receives, the total falls (Algorithm 1)


def test_reallocation_splits_evenly_with_the_remainder_to_higher_mean_score():
    layers = {n: GatedLoraLinear(nn.Linear(4, 4), cap=16, n_active=8 if n == "p" else 2, scaling=1.0) for n in "pabc"}
    scores = {("p", i): -10.0 + i for i in range(8)}  # module p holds the 8 lowest ranks
    scores |= {(n, i): mean for n, mean in (("a", 1.0), ("b", 3.0), ("c", 2.0)) for i in range(2)}
    moves = reallocate(layers, scores, n_prune=8)
    assert [p[:2] for p in moves["pruned"]] == [["p", i] for i in range(8)]
    assert {n: len(s) for n, s in moves["added"].items()} == {"b": 3, "c": 3, "a": 2}  # the paper's 8 -> 3, 3, 2
    assert sum(int(layer.active.sum()) for layer in layers.values()) == 8 + 3 * 2  # rank budget kept
    assert all(float(layers["b"].B[:, s].abs().sum()) == 0 for s in moves["added"]["b"])  # fresh: B column 0


def test_reset_adam_state_zeroes_only_the_new_slots():
    layer = GatedLoraLinear(nn.Linear(3, 5), cap=4, n_active=4, scaling=1.0)
    nn.init.normal_(layer.B)
    optimizer = torch.optim.AdamW([layer.A, layer.B], lr=1e-2)
    layer(torch.randn(6, 3)).sum().backward()
    optimizer.step()
    reset_adam_state(optimizer, layer, [1])
    state_a, state_b = optimizer.state[layer.A], optimizer.state[layer.B]
    assert float(state_a["exp_avg"][1].abs().sum()) == 0 and float(state_b["exp_avg_sq"][:, 1].abs().sum()) == 0
    assert float(state_a["exp_avg"][0].abs().sum()) > 0 and float(state_b["exp_avg"][:, 2].abs().sum()) > 0


def test_kendall_tau_known_answers():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant of 3 pairs


def test_one_optimizer_and_schedule_survive_the_phases_and_rounds_record_scores_and_tau():
    model, tok = tiny_factory(2)
    task = easy_task()  # 160 train examples: 10 steps per epoch at batch 16
    config = TrainConfig(epochs=2, lr=5e-3, batch_size=16, max_length=12, lora_alpha=4.0, r=2)
    settings = AloraConfig(r_init=2, rounds=3, n_prune=2, val_batch=16)
    layers, losses, trajectory, details = train_alora(model, tok, task.train, task.validation, config, settings)
    assert len(losses) == 20 and details["k1_steps"] == 10 and details["k2_steps"] == 2
    assert details["round_steps"] == [10, 12, 14] and details["rounds_done"] == 3
    assert details["optimizer_steps"] == 20  # one AdamW took every step: no fresh optimizer per phase
    rounds = [t for t in trajectory if t["round"]]
    assert len(rounds) == 3
    for r in rounds:
        assert len(r["scores"]) == 24 and all(len(s) == 4 for s in r["scores"])  # module, slot, batch 1, batch 2
        assert -1.0 <= r["kendall_tau"] <= 1.0 and set(r["spread"]) >= {"min", "median", "max", "std"}
        assert r["median_standard_error"] >= 0 and len(r["pruned"]) == 2
        assert sum(r["ranks"]) == 24  # 12 modules x r_init 2: the rank budget holds every round
    json.dumps(trajectory)  # the record is JSON as written


def test_training_seeds_share_the_split_and_the_split_seed_changes_it(tmp_path):
    config = TrainConfig(epochs=1, lr=5e-3, batch_size=16, max_length=12, max_steps=1)
    splits = {}
    for name, seed, split_seed in (("a", 0, 0), ("b", 1, 0), ("c", 0, 1)):
        spec = RunSpec("lora", "bbc-topic", replace(config, seed=seed), budget_rank=2, split_seed=split_seed,
                       train_limit=64, validation_limit=64)  # fmt: skip
        metrics = train_run(spec, tmp_path / name, model_factory=tiny_factory)
        splits[name] = json.loads((tmp_path / name / "splits.json").read_text())
        predictions = json.loads((tmp_path / name / "predictions.json").read_text())
        assert len(predictions["test"]["predictions"]) == len(splits[name]["test"]) == 444
        assert metrics["seed"] == seed and metrics["split_seed"] == split_seed and metrics["n_train"] == 64
        correct = sum(p == t for p, t in zip(predictions["test"]["predictions"], predictions["test"]["targets"]))
        assert correct / 444 == pytest.approx(metrics["test"]["accuracy"])
    assert splits["a"] == splits["b"]  # another training seed, the same examples in the same order
    assert splits["a"]["test"] != splits["c"]["test"]
