"""Principal angles between top-k singular subspaces, from the factors: known answers and a PARA cut."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from analysis.adapters import LoraModule, load_adapter
from analysis.para import allocate_at, cut_position, para_index
from analysis.side_by_side import cut_adapter, module_rows
from analysis.spectra import adapter_spectra
from analysis.subspaces import adapter_similarity, match_modules, module_similarity, principal_angles
from tests.builders import factors_with_sigma


def module_from(B: torch.Tensor, A: torch.Tensor, name: str = "layer.0.q") -> LoraModule:
    return LoraModule(name=name, A=A, B=B, scaling=1.0)


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def test_principal_angles_known_answers():
    Q = orthonormal(10, 4, 0)
    assert torch.allclose(principal_angles(Q[:, :2], Q[:, :2] @ torch.tensor([[0.6, -0.8], [0.8, 0.6]]).double()),
                          torch.zeros(2, dtype=torch.float64), atol=1e-6)  # same span, another basis: 0  # fmt: skip
    assert torch.allclose(principal_angles(Q[:, :2], Q[:, 2:]), torch.full((2,), 90.0, dtype=torch.float64))
    theta = math.radians(30)
    tilted = math.cos(theta) * Q[:, :1] + math.sin(theta) * Q[:, 1:2]
    assert principal_angles(Q[:, :1], tilted).item() == pytest.approx(30.0, abs=1e-9)
    assert principal_angles(Q[:, :3], Q[:, :3]).max() < 1e-5  # identical bases: 0 to float64's precision
    with pytest.raises(ValueError, match="same shape"):
        principal_angles(Q[:, :1], Q[:, :2])


def test_identical_modules_give_0_degrees_and_orthogonal_ones_90():
    B, A = factors_with_sigma([4.0, 2.0, 1.0, 0.5])
    same = module_similarity(module_from(B, A), module_from(B.clone(), A.clone()), k=3)
    assert same.k == 3 and max(same.out_degrees + same.in_degrees) < 1e-5 and same.overlap == pytest.approx(1.0)
    U, V = orthonormal(48, 8, 1), orthonormal(40, 8, 2)
    first = module_from(U[:, :4].float() * 2, V[:, :4].T.float())  # (out, 4) @ (4, in)
    second = module_from(U[:, 4:].float(), V[:, 4:].T.float() * 3)  # spans orthogonal to the first's
    apart = module_similarity(first, second, k=4)
    assert apart.out_degrees == pytest.approx((90.0,) * 4) and apart.in_degrees == pytest.approx((90.0,) * 4)
    assert apart.overlap == pytest.approx(0.0, abs=1e-12)


def test_only_the_top_k_directions_count_and_k_is_capped_by_the_rank():
    U, V = orthonormal(48, 4, 3), orthonormal(40, 4, 4)
    sigma = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    B, A = (U * sigma).float(), V.T.float()
    swapped = torch.cat([U[:, :2], U[:, 3:], U[:, 2:3]], dim=1)  # the 3rd and 4th directions swap places
    other = module_from((swapped * sigma).float(), torch.cat([V[:, :2], V[:, 3:], V[:, 2:3]], 1).T.float())
    top2 = module_similarity(module_from(B, A), other, k=2)
    assert max(top2.out_degrees) < 1e-4  # the top two are the same
    top3 = module_similarity(module_from(B, A), other, k=3)
    assert top3.out_degrees[-1] == pytest.approx(90.0, abs=1e-4)  # the third differs entirely
    rank1 = module_from(B[:, :1], A[:1])
    assert module_similarity(module_from(B, A), rank1, k=3).k == 1


def test_an_adapter_and_its_para_cut_share_their_top_directions(tiny_peft_dir):
    adapter = load_adapter(tiny_peft_dir)
    spectra = adapter_spectra(adapter)
    index = para_index(spectra)
    allocation = allocate_at(index, cut_position(index, 0.8, "energy"))
    cut = cut_adapter(adapter, allocation)
    kept = {n: k for n, k in zip(allocation.names, allocation.ranks, strict=True) if k}
    assert [m.name for m in cut.modules] == list(kept) and [m.r for m in cut.modules] == list(kept.values())
    assert cut.fingerprint != adapter.fingerprint
    cut_spectra = adapter_spectra(cut)
    for s in cut_spectra.spectra:  # the cut keeps the top singular values exactly
        original = next(o for o in spectra.spectra if o.name == s.name)
        assert torch.allclose(torch.as_tensor(s.sigma), torch.as_tensor(original.sigma[: s.r]), rtol=1e-4)
    similarity = adapter_similarity(adapter, cut, k=8)
    assert len(similarity) == len(kept)
    for sim in similarity:
        assert sim.k == min(8, kept[sim.name]) and max(sim.out_degrees + sim.in_degrees) < 0.05
    rows = module_rows(spectra, cut_spectra, similarity)
    assert len(rows) == len(adapter.modules)
    dropped = [r for r in rows if r["rank B"] is None]
    assert len(dropped) == len(adapter.modules) - len(kept) and all(r["overlap"] is None for r in dropped)


def test_match_modules_names_what_the_adapters_do_not_share(tiny_peft_dir):
    adapter = load_adapter(tiny_peft_dir)
    first, second, *rest = adapter.modules
    wider = dataclasses.replace(second, A=torch.zeros(second.r, second.in_features + 1))
    other = dataclasses.replace(adapter, modules=(wider, *rest, dataclasses.replace(first, name="extra")))
    match = match_modules(adapter, other)
    assert match.only_a == (first.name,) and match.only_b == ("extra",) and match.shape_differs == (second.name,)
    assert len(match.common) == len(adapter.modules) - 2
    with pytest.raises(ValueError, match="shapes differ"):
        module_similarity(second, wider, k=2)
