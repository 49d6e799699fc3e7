"""The recommended cut: the knee (known answers), the bisection over evaluations, and the PARA page's buttons."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from analysis.adapters import load_adapter
from analysis.para import allocate_at, para_index
from analysis.recommend import bisection_steps, knee_position, smallest_cut_within
from analysis.spectra import adapter_spectra
from tests.builders import factors_with_sigma

KNEE_SIGMA = [10.0, 10.0, 10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # knee at 4: 40% params, 400/406 energy


def kohya_file(path, modules: dict[str, list[float]]):
    """A kohya .safetensors whose modules' updates have exactly the singular values given (alpha = r: scale 1)."""
    tensors = {}
    for i, (name, sigma) in enumerate(modules.items()):
        B, A = factors_with_sigma(sigma, seed=i)
        tensors |= {
            f"{name}.lora_down.weight": A,
            f"{name}.lora_up.weight": B,
            f"{name}.alpha": torch.tensor(float(len(sigma))),
        }
    save_file(tensors, path)
    return path


@pytest.fixture
def knee_index(tmp_path):
    return para_index(adapter_spectra(load_adapter(kohya_file(tmp_path / "knee.safetensors", {
        "lora_unet_mid_block_attn1_to_k": KNEE_SIGMA}))))  # fmt: skip


def test_the_knee_is_where_the_large_values_end(knee_index):
    p = knee_position(knee_index)
    cut = allocate_at(knee_index, p)
    assert p == 4 and cut.ranks == (4,)
    assert cut.params_fraction == pytest.approx(0.4) and cut.energy_kept == pytest.approx(400 / 406, rel=1e-6)


def test_the_knee_weighs_parameters_not_components(tmp_path):
    # Two modules, one component each of equal sigma, but module b costs 4x as much per rank: the knee keeps
    # the cheap one alone (energy 1/2 for 1/5 of the parameters), not both.
    B1, A1 = factors_with_sigma([3.0], out_features=8, in_features=8, seed=0)
    B2, A2 = factors_with_sigma([2.999], out_features=32, in_features=32, seed=1)
    tensors = {
        "lora_unet_a_0_proj.lora_down.weight": A1, "lora_unet_a_0_proj.lora_up.weight": B1,
        "lora_unet_a_0_proj.alpha": torch.tensor(1.0),
        "lora_unet_b_0_proj.lora_down.weight": A2, "lora_unet_b_0_proj.lora_up.weight": B2,
        "lora_unet_b_0_proj.alpha": torch.tensor(1.0),
    }  # fmt: skip
    save_file(tensors, tmp_path / "two.safetensors")
    index = para_index(adapter_spectra(load_adapter(tmp_path / "two.safetensors")))
    assert knee_position(index) == 1 and allocate_at(index, 1).params_fraction == pytest.approx(16 / 80)


def test_bisection_finds_the_smallest_acceptable_cut_with_few_evaluations():
    calls = []

    def accuracy(p: int) -> float:  # monotone: 0.9 from position 37 on, below it falling off
        calls.append(p)
        return 0.9 if p >= 37 else 0.9 - 0.001 * (37 - p)

    found = smallest_cut_within(accuracy, reference=0.9, tolerance=0.0055, low=0, high=100)
    assert found.position == 32  # 0.005 worse at 37 - 5, 0.006 at 31
    assert len(calls) <= bisection_steps(0, 100) == 8 and calls[0] == 100
    assert set(found.evaluated) == set(calls)


def test_bisection_with_a_lower_is_better_metric_and_a_coarse_resolution():
    perplexity = lambda p: 40.0 + 2.0 * max(0, 600 - p) / 100  # noqa: E731  # 40 from 600 on, rising below
    found = smallest_cut_within(perplexity, reference=40.0, tolerance=1.0, low=0, high=1000, higher_is_better=False,
                                resolution=10)  # fmt: skip
    assert 550 <= found.position <= 560 and perplexity(found.position) <= 41.0
    assert len(found.evaluated) <= bisection_steps(0, 1000, 10)


def test_bisection_says_when_not_even_the_whole_adapter_is_within_tolerance():
    found = smallest_cut_within(lambda p: 0.5, reference=0.9, tolerance=0.01, low=0, high=10)
    assert found.position is None and found.evaluated == {10: 0.5}
    with pytest.raises(ValueError, match="tolerance"):
        smallest_cut_within(lambda p: 0.5, reference=0.9, tolerance=-1, low=0, high=10)


def test_para_page_shows_the_knee_and_applies_it_in_any_unit(home, tmp_path):
    source = kohya_file(tmp_path / "knee.safetensors", {"lora_unet_mid_block_attn1_to_k": KNEE_SIGMA})
    cost = 48 + 40  # out + in per rank of factors_with_sigma's default shapes
    home.radio[0].set_value("Folder on the server").run()
    home.text_input[0].input(str(source))
    home.button[0].click().run()
    home.switch_page("pages/2_PARA.py").run()
    knee_text = next(m.value for m in home.markdown if m.value.startswith("**Knee of the sweep**"))
    assert "**40.0%** of the LoRA parameters (352)" in knee_text and "**98.52%** of the energy" in knee_text
    for unit in ("Energy kept (%)", "Parameter budget (%)", "Mean rank", "Relative threshold τ / σ_max",
                 "Threshold τ (log scale)"):  # fmt: skip
        home.selectbox(key="cut_unit").set_value(unit).run()
        home.slider[0].set_value(home.slider[0].min).run()  # somewhere else first
        home.button(key="para-apply-knee").click().run()
        assert not home.exception, unit
        assert next(m.value for m in home.metric if m.label == "LoRA params") == f"{4 * cost:,}", unit
