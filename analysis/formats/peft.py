"""PEFT and AdaLoRA adapter folders: `adapter_config.json` beside `adapter_model.safetensors` (or a
tensors-only `.bin`). The config is cross-checked against the tensors' shapes. The writer side, for an
export: tensors at scale 1 and the config with rank_pattern = alpha_pattern = k. No streamlit, no prints."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from analysis.formats.base import (
    PEFT_PREFIX,
    LoraAdapter,
    LoraModule,
    adapter_fingerprint,
    adapter_warnings,
    as_matrices,
    check_finite,
    no_lora_error,
    split_keys,
)
from analysis.formats.peft_experts import split_experts
from analysis.patterns import MATCH_BUDGET_S, MatchBudget, PatternTimeout, pattern_problem
from analysis.safe_io import AdapterError, read_json_file, read_pickled_tensors, read_safetensors

if TYPE_CHECKING:
    from analysis.para import RankAllocation

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# <name>.<part>[.<adapter name>][.weight]; the adapter name ("default") appears in unsaved state dicts. A LoRA
# bias (`lora_B.bias`, peft's lora_bias=True) is no factor: it stays unmatched and is passed through.
PEFT_KEY = re.compile(
    r"^(?P<name>.+)\.(?P<part>lora_A|lora_B|lora_E|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?!(?:weight|bias)$)(?P<adapter>[^.]+))?(?:\.weight)?$"
)


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    config = read_json_file(file, "fix or re-save the config")  # size-capped, symlinks too
    if not isinstance(config, dict):
        raise AdapterError(f"{file}: expected a JSON object; re-save the config with peft")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in ("LORA", "ADALORA"):
        raise AdapterError(f"{file}: peft_type {config.get('peft_type')!r} is not LORA or ADALORA; only LoRA is read")
    _check_config_values(file, config, is_adalora=peft_type == "ADALORA")
    return config


def _check_config_values(file: Path, config: Mapping[str, Any], *, is_adalora: bool) -> None:
    """The fields the scale and the ranks come from have the types peft writes, or one line says which does not."""

    def bad(key: str, value: Any, want: str) -> AdapterError:
        shown = json.dumps(value, default=str)  # as the config spells it: null, NaN, "abc"
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return AdapterError(f"{file}: {key} is {shown}, not {want}; fix it in {CONFIG_NAME}")

    def is_number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    def is_count(x: Any) -> bool:
        return is_number(x) and x >= 0 and float(x).is_integer()

    for key, check, want in (("r", is_count, "a whole number"), ("lora_alpha", is_number, "a finite number"),
                             ("init_r", is_count, "a whole number")):  # fmt: skip
        if key in config and not check(config[key]):
            raise bad(key, config[key], want)
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict):
            raise bad(key, pattern, "an object of module patterns")
        for name, value in pattern.items():
            if is_adalora and key == "rank_pattern":  # AdaLoRA's masks: one bool per initial rank
                if not (isinstance(value, list) and all(isinstance(x, bool | int) for x in value)):
                    raise bad(f"{key}[{name!r}]", value, "a list of booleans")
                continue
            if not (is_count(value) if key == "rank_pattern" else is_number(value)):
                raise bad(f"{key}[{name!r}]", value, "a whole number" if key == "rank_pattern" else "a finite number")
            if problem := pattern_problem(name):  # matched in bounded time only (analysis/patterns.py)
                raise bad(f"{key} key", name, f"a module pattern that matches in bounded time: {problem}")
    for key in ("target_modules", "exclude_modules"):  # peft matches a string as one regex, with Python's re
        if isinstance(config.get(key), str) and (problem := pattern_problem(config[key])):
            raise bad(key, config[key], f"a module pattern that matches in bounded time: {problem}")


def pattern_value(pattern: Mapping[str, Any], name: str, budget: MatchBudget | None = None) -> tuple[str, Any] | None:
    """PEFT's rank_pattern / alpha_pattern rule: keys are regexes matched as dotted suffixes, first wins.

    Raises:
        PatternTimeout: matching took longer than `budget` allows (a fresh MatchBudget if None).
    """
    budget = budget or MatchBudget()
    for key, value in pattern.items():
        if budget.matches_suffix(key, name):
            return key, value
    return None


def load_peft_folder(folder: Path, *, in_memory: bool) -> LoraAdapter:
    if not (folder / CONFIG_NAME).is_file():
        raise AdapterError(f"{folder}: missing {CONFIG_NAME}; save the adapter with peft's save_pretrained")
    config = _read_config(folder)
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise AdapterError(f"{folder}: missing adapter_model.safetensors (or .bin); put the weights beside the config")
    if weights.suffix == ".bin":
        tensors = read_pickled_tensors(weights)
        buffer = weights.read_bytes()
    else:
        tensors, _, buffer = read_safetensors(weights, in_memory=in_memory)
    is_adalora = str(config.get("peft_type")).upper() == "ADALORA"
    parts, extra = split_keys(weights, tensors, PEFT_KEY, PEFT_PREFIX)
    if not parts:
        raise no_lora_error(weights, tensors)
    fingerprint = adapter_fingerprint(buffer, config)  # first: its two threads fault the lazy mapping in
    budget = MatchBudget()  # for all of this config's pattern matching
    try:
        modules = []
        for name, p in parts.items():
            module = _peft_module(weights, config, name, p, is_adalora, budget)
            modules += module if isinstance(module, list) else [module]
    except PatternTimeout as err:
        raise AdapterError(
            f"{folder / CONFIG_NAME}: matching the pattern key {err.args[0]!r} against the module names took over "
            f"{MATCH_BUDGET_S:g} s; write it as a plain module path"
        ) from None
    magnitudes = {
        k.removeprefix(PEFT_PREFIX).split(".lora_magnitude_vector")[0] for k in extra if ".lora_magnitude_vector" in k
    }
    modules = [dataclasses.replace(m, is_dora=True) if m.name in magnitudes else m for m in modules]
    check_finite(weights, modules)
    return LoraAdapter(
        source=str(folder),
        fingerprint=fingerprint,
        format="adalora" if is_adalora else "peft",
        config=config,
        modules=tuple(modules),
        extra_tensors=extra,
        warnings=adapter_warnings(config, extra),
        file_size=weights.stat().st_size,
    )


def _peft_module(
    file: Path, config: Mapping[str, Any], name: str, p: dict, is_adalora: bool, budget: MatchBudget | None = None
) -> LoraModule | list[LoraModule]:
    """One module, or a `target_parameters` wrapper's experts (see `analysis.formats.peft_experts`)."""
    is_embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
    A = p.get("lora_embedding_A" if is_embedding else "lora_A")
    B = p.get("lora_embedding_B" if is_embedding else "lora_B")
    if A is None or B is None:
        missing = "A" if A is None else "B"
        raise AdapterError(f"{file}: module {name} has no lora_{missing} tensor (only half of the pair); corrupt file")
    A, B, kind = as_matrices(file, name, A, B)
    if not is_adalora and (experts := split_experts(file, config, name, A, B, budget or MatchBudget())):
        return experts
    r = A.shape[0]
    weight_shape = (B.shape[0], A.shape[1])
    if is_embedding:
        kind, weight_shape = "embedding", (A.shape[1], B.shape[0])  # peft: delta = (B @ A)^T
    elif kind == "conv":
        weight_shape = (B.shape[0], *p["lora_A"].shape[1:])
    elif config.get("fan_in_fan_out"):
        weight_shape = (A.shape[1], B.shape[0])  # Conv1D stores (in, out); spectra are unchanged
    rank_pattern = config.get("rank_pattern") or {}
    alpha = float(config.get("lora_alpha", 8))
    if not is_adalora and "lora_E" in p:
        raise AdapterError(
            f"{file}: module {name} has an AdaLoRA lora_E tensor but the config says peft_type LORA; "
            "set peft_type to ADALORA (with its init_r) or point at the right adapter"
        )
    if is_adalora:
        E = p.get("lora_E")
        if E is None:
            raise AdapterError(f"{file}: AdaLoRA module {name} has no lora_E tensor; corrupt file")
        if E.numel() != r:
            raise AdapterError(f"{file}: AdaLoRA module {name} has lora_E of {E.numel()} values for rank {r}; corrupt")
        mask = rank_pattern.get(f"{name}.lora_E")
        if mask is not None and sum(bool(x) for x in mask) != r:
            raise AdapterError(
                f"{file}: AdaLoRA module {name} keeps {sum(map(bool, mask))} ranks in rank_pattern but has {r} "
                "in the tensors; re-save the adapter with peft"
            )
        init_r = int(config.get("init_r", 12))
        A = A * E.reshape(r, 1).to(A.dtype)  # fold the singular values in: (r, in) * (r, 1)
        # peft: scaling / (ranknum + 1e-5), ranknum = init_r; with alpha 0 the scaling is the module's rank, which
        # is the kept rank once peft resizes the module to its rank_pattern at load
        scaling = (alpha if alpha > 0 else r) / (init_r + 1e-5)
        return LoraModule(name, A, B, scaling, kind, weight_shape, alpha)
    matched = pattern_value(rank_pattern, name, budget)
    expected_r = int(matched[1]) if matched else int(config.get("r", 8))
    if expected_r != r:
        source = f"rank_pattern key {matched[0]!r}" if matched else "r"
        raise AdapterError(
            f"{file}: module {name} has rank {r} in the tensors but the config says {expected_r} ({source}); "
            "fix r / rank_pattern in adapter_config.json"
        )
    matched_alpha = pattern_value(config.get("alpha_pattern") or {}, name, budget)
    alpha = float(matched_alpha[1]) if matched_alpha else alpha
    if r == 0:
        scaling = 0.0  # an empty module: its update is zero whatever the scale
    else:
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return LoraModule(name, A, B, scaling, kind, weight_shape, alpha)


# AdaLoRA-only config fields that a plain LoRA config must not carry; the readers' own keys in `config`.
ADALORA_FIELDS = ("target_r", "init_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step")
READER_KEYS = ("kohya_metadata", "diffusers_header")


def pattern_key(name: str) -> str:
    """A rank_pattern key that matches exactly this module under PEFT's `(.*\\.)?(key)$` rule (PEFT >= 0.15)."""
    return "^" + re.escape(name)


def peft_tensors(module: LoraModule, B_k: torch.Tensor, A_k: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = PEFT_PREFIX + module.name
    k = A_k.shape[0]
    if module.kind == "embedding":
        return {f"{prefix}.lora_embedding_A": A_k, f"{prefix}.lora_embedding_B": B_k}
    if module.kind == "conv":
        A_k = A_k.reshape(k, *module.weight_shape[1:])  # (k, in*kh*kw) -> (k, in, kh, kw)
        B_k = B_k.reshape(*B_k.shape, *([1] * (len(module.weight_shape) - 2)))  # (out, k) -> (out, k, 1, 1)
    return {f"{prefix}.lora_A.weight": A_k, f"{prefix}.lora_B.weight": B_k}


def peft_config(adapter: LoraAdapter, allocation: RankAllocation) -> dict[str, Any]:
    """The adapter_config.json of a PEFT export (cheap: no factors are computed)."""
    config = {k: v for k, v in adapter.config.items() if k not in ADALORA_FIELDS and k not in READER_KEYS}
    ranks = dict(zip(allocation.names, allocation.ranks, strict=True))
    r_max = max(ranks.values(), default=1) or 1  # also the rank of every target_parameters wrapper (zero-padded)
    experts = {m.name for m in adapter.modules if m.expert}  # written as their wrappers, at rank r_max
    kept = {name: k for name, k in ranks.items() if k > 0 and name not in experts}
    dropped = [name for name, k in ranks.items() if k == 0 and name not in experts]
    pattern = {pattern_key(name): k for name, k in kept.items()}
    config.update(
        peft_type="LORA",
        r=r_max,
        lora_alpha=r_max,
        use_rslora=False,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        exclude_modules=excluded_modules(config.get("exclude_modules"), dropped),
    )
    if not config.get("target_modules") and not experts:  # kohya/diffusers input as PEFT: the minimum PEFT needs
        config["target_modules"] = sorted(kept)
    return config


def excluded_modules(source: str | list[str] | None, dropped: list[str]) -> str | list[str] | None:
    """`exclude_modules` that keeps the source's exclusions and adds the dropped modules.

    peft reads a string as one regex (full match) and a list as names (equal or a dotted suffix), so a
    source regex stays a regex, joined with the dropped names as exact alternatives.
    """
    if isinstance(source, str):
        if not dropped:
            return source
        names = "|".join(re.escape(name) for name in dropped)
        return f"(?:{source})|(?:.*\\.)?(?:{names})"
    return sorted(set(source or []) | set(dropped)) or None
