"""kohya / LyCORIS files: LoCon with a Tucker core (lora_mid) read as the update LyCORIS applies, cut and written
back as plain LoCon; the forward passes here are LyCORIS' and kohya's (1x1 -> kxk -> 1x1 convs, kxk -> 1x1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from analysis.adapters import load_adapter
from analysis.export import check_round_trip, compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra

NAME = "lora_unet_down_blocks_0_resnets_0_conv1"


def tucker_file(path, *, r: int = 4, n_in: int = 6, n_out: int = 5, alpha: float = 2.0):
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"{NAME}.lora_down.weight": torch.randn(r, n_in, 1, 1, generator=g),
        f"{NAME}.lora_mid.weight": torch.randn(r, r, 3, 3, generator=g),
        f"{NAME}.lora_up.weight": torch.randn(n_out, r, 1, 1, generator=g),
        f"{NAME}.alpha": torch.tensor(alpha),
    }
    save_file(tensors, path)
    return tensors


def test_lycoris_tucker_locon_loads_as_the_update_lycoris_applies(tmp_path):
    t = tucker_file(tmp_path / "tucker.safetensors")
    adapter = load_adapter(tmp_path / "tucker.safetensors")
    m = adapter.module(NAME)
    assert (m.kind, m.r, m.weight_shape, m.scaling) == ("conv", 4, (5, 6, 3, 3), 0.5)
    assert any("Tucker" in w for w in adapter.warnings)
    x = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    # LyCORIS' Tucker forward: down (1x1) -> mid (3x3) -> up (1x1), times alpha / r
    lycoris = F.conv2d(F.conv2d(F.conv2d(x, t[f"{NAME}.lora_down.weight"]), t[f"{NAME}.lora_mid.weight"], padding=1),
                       t[f"{NAME}.lora_up.weight"]) * 0.5  # fmt: skip
    delta = (m.scaling * m.B @ m.A).reshape(m.weight_shape)  # (out, r) @ (r, in*3*3) -> (out, in, 3, 3)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), lycoris, rtol=1e-5, atol=1e-5)
    # cut and written back as plain LoCon, which kohya applies as down (3x3) -> up (1x1), times alpha / rank
    for energy in (1.0, 0.9):
        allocation = allocate_ranks(para_index(adapter_spectra(adapter)), energy, "energy")
        out = save_adapter(compress_adapter(adapter, allocation), tmp_path / f"out{energy}.safetensors")
        e = load_file(out)
        assert f"{NAME}.lora_mid.weight" not in e and e[f"{NAME}.lora_down.weight"].shape[1:] == (6, 3, 3)
        assert check_round_trip(adapter, allocation, out).max_rel_error < 1e-5
        if energy == 1.0:
            k = e[f"{NAME}.lora_down.weight"].shape[0]
            kohya = F.conv2d(F.conv2d(x, e[f"{NAME}.lora_down.weight"], padding=1), e[f"{NAME}.lora_up.weight"])
            torch.testing.assert_close(kohya * float(e[f"{NAME}.alpha"]) / k, lycoris, rtol=1e-4, atol=1e-4)
