"""kohya and LyCORIS single-file LoRAs: `<name>.lora_down/lora_up.weight` with an optional `<name>.alpha` per
module (scale alpha / rank, kohya's networks/lora.py), LyCORIS LoCon's Tucker core `<name>.lora_mid.weight`
folded into the down factor, and the file's training metadata. LoHa / LoKr / OFT are refused: they are not
a low-rank product. No streamlit, no prints."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from analysis.formats.base import (
    LoraAdapter,
    LoraModule,
    adapter_fingerprint,
    adapter_warnings,
    as_matrices,
    check_finite,
    no_lora_error,
    split_keys,
)
from analysis.safe_io import AdapterError

if TYPE_CHECKING:
    from analysis.para import RankAllocation

KOHYA_KEY = re.compile(r"^(?P<name>.+)\.(?P<part>lora_down|lora_up|lora_mid|lora_A|lora_B)\.weight$")
# LyCORIS algorithms whose update is no product of two factors (Hadamard, Kronecker, orthogonal): their weights.
NOT_LOW_RANK = re.compile(r"\.(hada_w[12]_[ab]|hada_t[12]|lokr_w[12](_[ab])?|lokr_t2|oft_blocks|oft_diag)(\.weight)?$")


def load_kohya_file(
    file: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], buffer
) -> LoraAdapter:
    """A kohya / LyCORIS LoCon file (read by `analysis.adapters.load_adapter`, which picks the reader).

    Raises:
        AdapterError: a LoHa / LoKr / OFT weight, a half pair, a bad alpha, a Tucker core of the wrong shape.
    """
    if other := next((k for k in tensors if NOT_LOW_RANK.search(k)), None):
        raise AdapterError(
            f"{file}: {other!r} is a LyCORIS LoHa / LoKr / OFT weight, whose update is no low-rank product B @ A, "
            "so it has no singular spectrum of rank r here; train or convert it as LoRA / LoCon instead"
        )
    parts, extra = split_keys(file, tensors, KOHYA_KEY)
    if not parts:
        raise no_lora_error(file, tensors)
    modules, keys = single_file_modules(file, parts, extra)
    config = {"kohya_metadata": dict(metadata)}
    fingerprint = adapter_fingerprint(buffer, config)  # first: its two threads fault the lazy mapping in
    check_finite(file, modules)
    return LoraAdapter(
        source=str(file),
        fingerprint=fingerprint,
        format="kohya",
        config=config,
        modules=tuple(modules),
        extra_tensors=extra,
        file_size=file.stat().st_size,
        single_file_keys=keys,
        warnings=adapter_warnings(config, extra) + _tucker_note(parts),
    )


def single_file_modules(
    file: Path, parts: Mapping[str, dict[str, torch.Tensor]], extra: dict[str, torch.Tensor]
) -> tuple[list[LoraModule], dict[str, tuple[str, str, bool]]]:
    """One module per down/up pair, scale alpha / rank (a missing or zero alpha: scale 1, as kohya reads it).

    The `<name>.alpha` tensors are taken out of `extra`; everything else in it is passed through.
    """
    modules, keys = [], {}
    for name, p in parts.items():
        down, up = ("lora_down", "lora_up") if "lora_down" in p or "lora_up" in p else ("lora_A", "lora_B")
        keys[name] = (down, up, f"{name}.alpha" in extra)
        A, B = p.get(down), p.get(up)
        if A is None or B is None:
            raise AdapterError(f"{file}: module {name} has only half of its down/up pair; corrupt file")
        if "lora_mid" in p:
            A = _fold_tucker(file, name, p["lora_mid"], A, B)
        weight_shape = (B.shape[0], *A.shape[1:])
        A, B, kind = as_matrices(file, name, A, B)
        alpha_t = extra.pop(f"{name}.alpha", None)
        r = A.shape[0]
        if alpha_t is not None and (alpha_t.numel() != 1 or not alpha_t.is_floating_point()):
            raise AdapterError(
                f"{file}: module {name} has an alpha of shape {tuple(alpha_t.shape)} and dtype "
                f"{str(alpha_t.dtype).removeprefix('torch.')}; {name}.alpha must be one float"
            )
        alpha = float(alpha_t) if alpha_t is not None else 0.0  # one float, checked above
        if not math.isfinite(alpha):
            raise AdapterError(f"{file}: module {name} has alpha {alpha}; set {name}.alpha to a finite number")
        alpha = alpha or float(r)  # kohya reads a missing or zero alpha as alpha = rank (scale 1)
        is_dora = f"{name}.dora_scale" in extra
        modules.append(LoraModule(name, A, B, alpha / r if r else 0.0, kind, weight_shape, alpha, is_dora))
    return modules, keys


def _fold_tucker(file: Path, name: str, mid: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """LyCORIS Tucker LoCon: delta[o, i, h, w] = sum_ab up[o, a] mid[a, b, h, w] down[b, i]; the core goes into
    the down factor, which then has the kernel: (r, in, kh, kw). Same rank, same update, plain LoCon form."""
    r = mid.shape[0] if mid.ndim == 4 else -1
    if mid.ndim != 4 or mid.shape[1] != r or down.ndim != 4 or down.shape[0] != r or up.ndim != 4 or up.shape[1] != r:
        raise AdapterError(
            f"{file}: module {name} has a lora_mid {tuple(mid.shape)} that does not fit lora_down "
            f"{tuple(down.shape)} and lora_up {tuple(up.shape)} (LyCORIS Tucker: (r, r, kh, kw)); corrupt file"
        )
    # (r, r, kh, kw) x (r, in) -> (r, in, kh, kw), in float32 for half-precision files, then back
    folded = torch.einsum("abhw,bi->aihw", mid.float(), down.reshape(r, -1).float())
    return folded.to(down.dtype)


def _tucker_note(parts: Mapping[str, dict[str, torch.Tensor]]) -> tuple[str, ...]:
    n = sum("lora_mid" in p for p in parts.values())
    if not n:
        return ()
    return (
        f"LyCORIS Tucker (lora_mid) in {n} module(s): the core is folded into lora_down, so spectra and parameter "
        "counts are those of the same update as plain LoCon (r x in x kh x kw), and an export writes plain LoCon",
    )


def kohya_alpha(ranks: Sequence[int]) -> float:
    """The one alpha a kohya export writes in every module: the largest kept rank.

    kohya scales each module by alpha / rank (its rank read from lora_down); diffusers reads a kohya file's
    alphas as one value when they are all equal and mis-scales modules otherwise (diffusers 0.42). So every
    module gets the same alpha and its factors carry sqrt(k / alpha) each: both read the same update.
    """
    return float(max(ranks, default=1) or 1)


def kohya_tensors(
    module: LoraModule, B_k: torch.Tensor, A_k: torch.Tensor, keys: tuple[str, str, bool], alpha: float
) -> dict[str, torch.Tensor]:
    """The module in its source file's layout: kohya's lora_down/lora_up with `alpha` (uniform, see
    `kohya_alpha`), or diffusers' lora_A/lora_B at scale 1 (no alpha)."""
    k = A_k.shape[0]
    down, up, has_alpha = keys
    if module.kind == "conv":
        A_k = A_k.reshape(k, *module.weight_shape[1:])  # (k, in*kh*kw) -> (k, in, kh, kw)
        B_k = B_k.reshape(*B_k.shape, *([1] * (len(module.weight_shape) - 2)))  # (out, k) -> (out, k, 1, 1)
    tensors = {f"{module.name}.{down}.weight": A_k, f"{module.name}.{up}.weight": B_k}
    if has_alpha or down == "lora_down":
        # the reader applies alpha / k; the factors carry k / alpha, split evenly between them
        root = math.sqrt(k / alpha)
        tensors[f"{module.name}.{down}.weight"] = (A_k.float() * root).to(A_k.dtype)
        tensors[f"{module.name}.{up}.weight"] = (B_k.float() * root).to(B_k.dtype)
        tensors[f"{module.name}.alpha"] = torch.tensor(float(alpha))  # float32: bfloat16 would round above 256
    return tensors


# Metadata that describes the old weights: kohya's and modelspec's hashes (they would name the old file), and
# diffusers' LoraConfig of the old ranks and alphas (diffusers builds the config from it when it is there;
# without it, it reads the ranks from the shapes and, with no alphas, scale 1, as the export needs).
STALE_METADATA_KEYS = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256", "lora_adapter_metadata")


def kohya_metadata(adapter: LoraAdapter, allocation: RankAllocation) -> dict[str, str]:
    """The source file's metadata with the ranks of the cut, as kohya's resize_lora.py marks a resized file.

    Training settings, base model and tag counts stay (UIs show them); the network dim becomes "Dynamic"
    (each module has its own rank) and the network alpha the one alpha of `kohya_alpha`, the training comment
    says what PARA kept, and what describes the old weights goes (`STALE_METADATA_KEYS`).
    """
    source = adapter.config.get("kohya_metadata") or {}
    metadata = {k: v for k, v in source.items() if k not in STALE_METADATA_KEYS}
    metadata.setdefault("format", "pt")
    if any(k.startswith("ss_") for k in source):  # a kohya-trained file: keep its own keys up to date
        a = allocation
        kept = [k for k in a.ranks if k]
        comment = (
            f"PARA (LoRA Rank Lab): ranks {min(kept)}-{max(kept)}, {a.params_fraction:.1%} of the LoRA parameters, "
            f"{a.energy_kept:.2%} of the energy kept"
        )
        if old := source.get("ss_training_comment"):
            comment += f"; {old}"
        alpha = f"{kohya_alpha(a.ranks):g}"
        metadata.update(ss_network_dim="Dynamic", ss_network_alpha=alpha, ss_training_comment=comment)
    return metadata


def single_file_name(source: str) -> str:
    """A kohya export's file name: the source file's, with "-para" ("my_lora.safetensors" -> "my_lora-para...")."""
    name = Path(source).name  # an upload's source reads "my_lora.safetensors (uploaded)"
    stem = name.split(".safetensors")[0] if ".safetensors" in name else Path(name).stem
    return f"{stem or 'adapter'}-para.safetensors"
