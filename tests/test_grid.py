"""The grid command: learning rate picked on validation, the winner promoted to seed 0, resumable, every
method through the registry; and the seed summary over a comparison's runs."""

from __future__ import annotations

import json
from dataclasses import replace

from analysis.training.grid import SEARCH_DIR, GridRun, grid_methods, pick_lr, run_grid
from analysis.training.methods import METHODS
from analysis.training.records import read_run
from analysis.training.runs import train_run
from tests.test_training import easy_task, tiny_factory


def tiny_train(spec, out, on_step=None):
    """The real train_run, shortened to 2 steps on a tiny BERT and the easy task."""
    spec = replace(spec, train=replace(spec.train, max_steps=2, batch_size=16, max_length=12))
    return train_run(spec, out, model_factory=tiny_factory, task_data=easy_task(), on_step=on_step)


def test_grid_methods_come_from_the_registry_with_lr_lora_last():
    pairs = grid_methods()
    assert pairs[:2] == [("lora", 32), ("lora", 8)] and pairs[-1] == ("lr_lora", 8)
    assert {m for m, _ in pairs} == set(METHODS)


def test_pick_lr_prefers_accuracy_then_loss():
    assert pick_lr({1e-3: {"accuracy": 0.8, "loss": 0.5}, 5e-4: {"accuracy": 0.9, "loss": 0.6}}) == 5e-4
    assert pick_lr({1e-3: {"accuracy": 0.9, "loss": 0.4}, 5e-4: {"accuracy": 0.9, "loss": 0.6}}) == 1e-3


def test_grid_searches_promotes_and_resumes(tmp_path):
    kw = {"tasks": ["bbc-topic"], "methods": ["lora"], "seeds": [0, 1], "lr_grid": (1e-3, 5e-3), "train": tiny_train}
    (tmp_path / ".minilm-bbc-topic-lora-r8-s1.partial-x").mkdir(parents=True)  # what a killed run leaves
    trained = run_grid(tmp_path, **kw)
    assert len(trained) == 2 * (2 + 1)  # per rank: 2 search runs, then seed 1
    assert not (tmp_path / ".minilm-bbc-topic-lora-r8-s1.partial-x").exists()
    selection = json.loads((tmp_path / SEARCH_DIR / "selection.json").read_text())
    for rank in (32, 8):
        chosen = selection[f"lora-r{rank}"]["chosen"]
        assert set(selection[f"lora-r{rank}"]["grid"]) == {"0.001", "0.005"}
        for seed in (0, 1):
            run = read_run(tmp_path / GridRun("bbc-topic", "lora", rank, seed).name)
            assert run.status == "finished" and run.metrics["config"]["lr"] == chosen
            assert run.metrics["split_seed"] == 0 and run.metrics["seed"] == seed
        loser = [lr for lr in (1e-3, 5e-3) if lr != chosen][0]
        other = tmp_path / SEARCH_DIR / GridRun("bbc-topic", "lora", rank, 0, loser).name
        assert (other / "metrics.json").is_file() and not (other / "adapter").exists()
    assert run_grid(tmp_path, **kw) == []  # everything is there: nothing is trained again
