"""Training backends on a tiny BERT built from a config (MiniLM's tokenizer files only, not its weights).

Every method trains a few steps on a tiny easy task and writes a complete record that the engine and peft
load; adaptive methods end within the budget with non-uniform ranks; failures leave no finished adapter.
"""

from __future__ import annotations

import json
import random
import warnings
from functools import cache

import pytest
import torch
from transformers import AutoTokenizer

from analysis.adapters import load_adapter
from analysis.training import __main__ as cli
from analysis.training.adalora import budget_trim
from analysis.training.alora import importance_scores, reallocate
from analysis.training.baselines import fit_probe, majority_accuracy
from analysis.training.data import TASKS, Example, TaskData, load_task
from analysis.training.deploy import adapted_model
from analysis.training.gated import GatedLoraLinear, wrap_targets
from analysis.training.lora import TrainConfig, encode
from analysis.training.methods import METHODS, rank_cost, resolve_budget
from analysis.training.model import minilm_path, tiny_bert
from analysis.training.records import read_run
from analysis.training.runs import RunSpec, train_run
from analysis.training.samples import SAMPLE_RUNS, runs_table

CONFIG = TrainConfig(epochs=1, lr=5e-3, batch_size=16, max_length=12, max_steps=6)
ADAPTIVE = ["alora", "adalora", "masked_rank"]  # integer ranks (lr_lora learns a continuous one)


@cache
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)  # small files, not the weights


def tiny_factory(n_labels: int, seed: int = 0):
    return tiny_bert(n_labels, seed=seed, vocab_size=tokenizer().vocab_size), tokenizer()


@cache
def easy_task() -> TaskData:
    """Two classes told apart by their topic words: a tiny BERT learns it in a few dozen steps."""
    rng = random.Random(0)
    words = (["apple", "banana", "cherry", "grape"], ["engine", "wheel", "brake", "piston"])
    filler = ["the", "a", "of", "and", "with", "today", "new", "big"]

    def example(i: int) -> Example:
        label = i % 2
        text = " ".join(rng.choice(words[label] if rng.random() < 0.5 else filler) for _ in range(8))
        return Example(f"e{i}", text + f" {words[label][i % 4]}", label)

    items = [example(i) for i in range(240)]
    return TaskData("bbc-topic", ("fruit", "car"), tuple(items[:160]), tuple(items[160:200]), tuple(items[200:]))


def run(tmp_path, method: str, **kw):
    spec = RunSpec(method, "bbc-topic", kw.pop("config", CONFIG), budget_rank=kw.pop("budget_rank", 2), **kw)
    return train_run(spec, tmp_path / method, model_factory=tiny_factory, task_data=easy_task())


def test_registry_and_cli_choices_agree():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    choices = next(a.choices for a in train._actions if a.dest == "method")
    assert list(choices) == list(METHODS) == ["lora", "alora", "lr_lora", "adalora", "masked_rank"]
    from pages.shared import train_widgets  # the Train page's labels cover exactly the registry and the tasks

    assert list(train_widgets.METHODS) == list(METHODS) and tuple(train_widgets.TASKS) == TASKS


def test_load_task_splits_are_fixed_stratified_and_disjoint():
    task, again = load_task("bbc-topic"), load_task("bbc-topic")
    assert task.split_ids() == again.split_ids()
    ids = [set(v) for v in task.split_ids().values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(task.labels) == 5 and sum(len(v) for v in ids) == 2225
    share = [sum(e.label == c for e in task.test) / len(task.test) for c in range(5)]
    full = [sum(e.label == c for e in task.train + task.validation + task.test) / 2225 for c in range(5)]
    assert max(abs(a - b) for a, b in zip(share, full, strict=True)) < 0.01
    with pytest.raises(ValueError, match="task must be one of"):
        load_task("nope")


@pytest.mark.parametrize("method", list(METHODS))
def test_train_run_writes_a_complete_record_that_engine_and_peft_load(tmp_path, method, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # as a user runs the CLI
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run(tmp_path, method)
    # peft's save_pretrained(save_embedding_layers="auto") asked the Hub for the base model's config.json
    assert not [w for w in caught if "remote file" in str(w.message) or "config file" in str(w.message)]
    folder = tmp_path / method
    assert read_run(folder).status == "finished" and metrics["method"] == method
    adapter_file = "adapter/lr_lora_config.json" if method == "lr_lora" else "adapter/adapter_config.json"
    for file in ("metrics.json", "allocation.json", "splits.json", "log.txt", adapter_file):
        assert (folder / file).is_file(), file
    assert metrics["n_steps"] == 6 and all(torch.isfinite(torch.tensor(metrics["loss_curve"])))
    adapter = load_adapter(folder / "adapter")
    allocation = json.loads((folder / "allocation.json").read_text())
    assert len(allocation) == 12  # 2 layers x 6 target modules
    if method == "lr_lora":  # dense updates; its learned rank is the stable rank of dW, rounded in allocation.json
        stable = metrics["method_details"]["stable_rank"]
        assert allocation == {n: round(v) for n, v in stable.items()} and all(m.is_dense for m in adapter.modules)
        assert metrics["rank_trajectory"][-1]["final"] and "stable_rank" in metrics["rank_trajectory"][0]
    else:
        assert {m.name: m.r for m in adapter.modules} == {n: r for n, r in allocation.items() if r}
    assert metrics["n_lora_params"] == adapter.n_params
    if method != "alora":  # ALoRA's budget is in ranks (the paper's R_target)
        assert adapter.n_params <= metrics["budget"]["params"]
    model, _ = tiny_factory(2)
    trained = adapted_model(model, folder / "adapter")  # peft for PEFT folders
    ids = encode(tokenizer(), ["apple engine"], 12)
    assert torch.isfinite(trained(ids["input_ids"], ids["attention_mask"])).all()
    if method not in ("lora", "lr_lora"):
        assert metrics["rank_trajectory"] and "ranks" in metrics["rank_trajectory"][-1]


@pytest.mark.parametrize("method", list(METHODS))
def test_train_run_loss_decreases_on_an_easy_task(tmp_path, method):
    # 60 steps: AdaLoRA's triple product (E starts at 0, A and B ~ N(0, 0.02)) needs a few dozen to get going
    config = TrainConfig(epochs=6, lr=5e-3, batch_size=16, max_length=12, constant_lr=True)
    curve = run(tmp_path, method, config=config)["loss_curve"]
    assert sum(curve[-8:]) / 8 < 0.8 * sum(curve[:8]) / 8


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_end_non_uniform_within_budget(tmp_path, method):
    config = TrainConfig(epochs=4, lr=5e-3, batch_size=16, max_length=12, constant_lr=True)
    metrics = run(tmp_path, method, config=config, budget_rank=4)
    ranks = list(json.loads((tmp_path / method / "allocation.json").read_text()).values())
    if method == "alora":  # the paper's budget is in ranks: ranks move between modules of different cost
        assert sum(ranks) == metrics["method_details"]["rank_budget"] == 4 * 12
        assert metrics["method_details"]["rounds_done"] == 4
    else:
        assert metrics["n_lora_params"] <= metrics["budget"]["params"]
    if method == "adalora":  # the budget trim happens where the final ranks are fixed, before tfinal recovery steps
        details = metrics["method_details"]
        assert details["trim_step"] == details["total_step"] - details["tfinal"] and details["tfinal"] > 0
        assert details["recovery_steps"] == details["tfinal"] and details["budget_trimmed_after_training"] == 0
        assert details["beta1"] == details["beta2"] == 0.85 and details["budget_trimmed_components"] >= 0
    assert len(set(ranks)) > 1, ranks


def test_alora_vectorised_scores_match_one_setting_per_pass():
    model, tok = tiny_factory(2)
    layers = wrap_targets(model, GatedLoraLinear, cap=4, n_active=2, scaling=2.0)
    torch.manual_seed(1)
    for layer in layers.values():
        torch.nn.init.normal_(layer.B, std=0.5)
    task = easy_task()
    inputs = encode(tok, [e.text for e in task.validation[:6]], 12)
    labels = torch.tensor([e.label for e in task.validation[:6]])
    one = importance_scores(model, layers, inputs, labels, configs_per_pass=1)
    many = importance_scores(model, layers, inputs, labels, configs_per_pass=7)
    assert len(one) == 24 and all(abs(one[k] - many[k]) < 1e-5 for k in one)
    moves = reallocate(layers, one, n_prune=3)
    assert len(moves["pruned"]) == 3 and not set(moves["added"]) & {n for n, _, _ in moves["pruned"]}
    assert sum(int(layer.active.sum()) for layer in layers.values()) == 24  # the rank budget is kept


def test_adalora_budget_trim_drops_smallest_components_until_within_budget():
    factors = {
        "a": (torch.ones(3, 4), torch.ones(2, 3), torch.tensor([3.0, 1.0, 0.0])),  # cost 6 per rank
        "b": (torch.ones(2, 4), torch.ones(2, 2), torch.tensor([2.0, 0.5])),
    }
    kept, trimmed = budget_trim(factors, budget=12)
    assert {n: A.shape[0] for n, (A, _) in kept.items()} == {"a": 1, "b": 1} and trimmed == 2


def test_resolve_budget_units_and_errors():
    model, _ = tiny_factory(2)
    assert rank_cost(model) == 2 * (4 * 64 + 2 * 96)
    assert resolve_budget(model, rank=3).params == 3 * rank_cost(model)
    assert resolve_budget(model, params=3 * rank_cost(model) + 5).rank == 3
    for kw in ({"rank": 0}, {"rank": 33}, {"params": 10}, {}, {"rank": 2, "params": 2000}):
        with pytest.raises(ValueError, match="budget"):
            resolve_budget(model, **kw)


def test_failed_run_is_marked_failed_and_leaves_no_adapter(tmp_path):
    def broken(n_labels, seed=0):
        raise RuntimeError("simulated crash while building the model")

    spec = RunSpec("lora", "bbc-topic", CONFIG)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(spec, tmp_path / "run", model_factory=broken, task_data=easy_task())
    assert not (tmp_path / "run").exists()
    failed = read_run(tmp_path / "run.failed")
    assert failed.status == "failed" and not (tmp_path / "run.failed" / "adapter").exists()
    assert "simulated crash" in (tmp_path / "run.failed" / "log.txt").read_text()


def test_bad_budget_leaves_nothing_and_cli_exits_nonzero(tmp_path, capsys):
    with pytest.raises(ValueError, match="method must be one of"):
        train_run(RunSpec("dora", "bbc-topic", CONFIG), tmp_path / "a")
    with pytest.raises(ValueError, match="budget-rank must be between"):
        run(tmp_path, "alora", budget_rank=99)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exit_info:  # refused by the parser, before torch is imported
        cli.main(["train", "--method", "lora", "--task", "bbc-topic", "--budget-params", "0", "--out", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: python -m analysis.training train: argument --budget-params: 0 is below 1; give an integer >= 1\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--method", "dora", "--task", "bbc-topic", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2


def test_fit_probe_and_majority_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 8, generator=g) + 4, torch.randn(40, 8, generator=g) - 4])  # two far blobs
    y = torch.tensor([0] * 40 + [1] * 40)
    head = fit_probe(x, y, n_labels=2, weight_decay=1e-3)
    assert float((head(x).argmax(-1) == y).float().mean()) == 1.0
    train = [Example(str(i), "", label) for i, label in enumerate([0, 1, 1, 2, 1])]
    test = [Example(str(i), "", label) for i, label in enumerate([1, 0, 1, 2])]
    assert majority_accuracy(train, test) == 0.5  # label 1 is the majority of train


def test_sample_runs_cover_every_task_with_a_source_and_each_adaptive_method():
    names = [run.name for run in SAMPLE_RUNS]
    assert len(set(names)) == len(names) and all(run.method in METHODS for run in SAMPLE_RUNS)
    for task in ("bbc-topic", "tweet-sentiment"):
        methods = {(run.method, run.budget_rank) for run in SAMPLE_RUNS if run.task == task}
        assert methods == {("lora", 32), ("lora", 8), ("alora", 8), ("lr_lora", 8), ("adalora", 8)}


def test_runs_table_lists_finished_runs_and_baselines(tmp_path):
    metrics = run(tmp_path, "alora")
    (tmp_path / "broken.failed").mkdir()
    (tmp_path / "broken.failed" / "status").write_text("failed\n")
    baselines = {"bbc-topic": {"majority_test_accuracy": 0.25, "probe_test_accuracy": 0.875}}
    (tmp_path / "baselines.json").write_text(json.dumps(baselines))
    lines = runs_table(tmp_path).splitlines()
    assert len(lines) == 2 + 1 + 2  # header, one finished run, two baselines
    assert lines[2].startswith("| alora | alora | bbc-topic |") and f"{metrics['n_lora_params']:,}" in lines[2]
    assert lines[3].endswith("| 25.00% | - |") and "87.50%" in lines[4]
