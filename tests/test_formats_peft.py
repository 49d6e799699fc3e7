"""peft `target_parameters` (LoRA on MoE expert weights): read per expert, checked against peft's own delta
weights, and exported back in peft's layout that `PeftModel.from_pretrained` loads."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from analysis.adapters import load_adapter
from analysis.export import check_round_trip, compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra

IDS = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
EXPERTS = "model.layers.0.mlp.experts"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_moe() -> Qwen3MoeForCausalLM:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_experts=3,
                            num_experts_per_tok=2, head_dim=8)  # fmt: skip
    return Qwen3MoeForCausalLM(config).eval()


def expert_deltas(model) -> dict[str, torch.Tensor]:
    """peft's own per-expert delta weights of every target_parameters wrapper, by our module names."""
    deltas = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "ParamWrapper":
            local = name.removeprefix("base_model.model.")
            for e, delta in enumerate(module.get_delta_weight("default")):
                deltas[f"{local}.expert_{e}"] = delta
    return deltas


def test_target_parameters_are_read_per_expert_and_export_back_to_peft(tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False,
                        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])  # fmt: skip
    source = get_peft_model(tiny_moe(), config)
    source.save_pretrained(tmp_path / "src")
    adapter = load_adapter(tmp_path / "src")
    experts = [m for m in adapter.modules if m.expert]
    assert len(experts) == 6 and {m.expert[2] for m in experts} == {3}  # 2 wrappers x 3 experts, each one module
    spectra = {s.name: s.sigma for s in adapter_spectra(adapter).spectra}
    for name, delta in expert_deltas(source).items():  # the spectrum of the update peft applies to that expert
        torch.testing.assert_close(torch.tensor(spectra[name]), torch.linalg.svdvals(delta.double())[:4])
    with torch.no_grad():
        want = source(input_ids=IDS).logits
    index = para_index(adapter_spectra(adapter))
    everything = save_adapter(compress_adapter(adapter, allocate_ranks(index, 1.0)), tmp_path / "all")
    with torch.no_grad():
        got = PeftModel.from_pretrained(tiny_moe(), everything)(input_ids=IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    allocation = allocate_ranks(index, 0.9)
    assert len({k for n, k in allocation.rank_map.items() if ".expert_" in n}) > 1  # experts cut apart
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path / "cut")
    assert check_round_trip(adapter, allocation, out).is_ok
    loaded = expert_deltas(PeftModel.from_pretrained(tiny_moe(), out))
    for m, k in zip(adapter.modules, allocation.ranks, strict=True):
        if m.expert:
            U, S, Vh = torch.linalg.svd(m.scaling * m.B.double() @ m.A.double(), full_matrices=False)
            truncated = (U[:, :k] * S[:k]) @ Vh[:k]  # (out, k) @ (k, in)
            got = loaded[m.name].double()
            torch.testing.assert_close(got if got.shape == truncated.shape else got.T, truncated, rtol=1e-5, atol=1e-5)
