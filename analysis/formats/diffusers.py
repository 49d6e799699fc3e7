"""diffusers single-file LoRAs: `<component>.<module path>.lora_A/lora_B.weight` (component: unet, transformer,
text_encoder, text_encoder_2, ...), with the `lora_adapter_metadata` header diffusers' trainers write: each
component's LoraConfig (lora_alpha, rank_pattern, alpha_pattern, use_rslora) under `<component>.<field>`, or
one unprefixed config for a single model's file. Without a header diffusers loads such a file at scale 1
(alpha = rank), and so do we. No streamlit, no prints."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from analysis.formats.base import (
    LoraAdapter,
    adapter_fingerprint,
    adapter_warnings,
    check_finite,
    no_lora_error,
    split_keys,
)
from analysis.formats.kohya import KOHYA_KEY, single_file_modules
from analysis.formats.peft import pattern_value
from analysis.patterns import MATCH_BUDGET_S, MatchBudget, PatternTimeout, pattern_problem
from analysis.safe_io import AdapterError

HEADER_KEY = "lora_adapter_metadata"
DIFFUSERS_KEY = re.compile(r"\.lora_[AB]\.weight$")
# Keys of a kohya / LyCORIS file: a file with any of them is read by the kohya reader.
KOHYA_PARTS = re.compile(r"\.(lora_down|lora_up|lora_mid|hada_|lokr_|oft_)")


def is_diffusers_file(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """Whether the diffusers reader takes this file: lora_A/lora_B keys and none of kohya's, or the header."""
    if any(KOHYA_PARTS.search(k) for k in tensors):
        return False
    return HEADER_KEY in metadata or any(DIFFUSERS_KEY.search(k) for k in tensors)


def read_header(file: Path, metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The header's LoraConfig per component prefix ("" for an unprefixed, single-model header); {} if none.

    Raises:
        AdapterError: the header is no JSON object, or a field the scale comes from has the wrong type.
    """
    raw = metadata.get(HEADER_KEY)
    if raw is None:
        return {}
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as err:
        reason = str(err)[:80]
        message = f"{file}: its {HEADER_KEY} header is not JSON ({reason}); re-save it with diffusers"
        raise AdapterError(message) from None
    if not isinstance(header, dict):
        raise AdapterError(f"{file}: its {HEADER_KEY} header is no JSON object; re-save it with diffusers")
    if "r" in header or "lora_alpha" in header:  # one model's LoraConfig, as ModelMixin.save_lora_adapter writes it
        configs = {"": header}
    else:  # a pipeline's: "<component>.<field>", as save_lora_weights packs them
        configs: dict[str, dict[str, Any]] = {}
        for key, value in header.items():
            component, _, field = key.rpartition(".")
            configs.setdefault(component, {})[field] = value
    for component, config in configs.items():
        _check_header_config(file, component, config)
    return configs


def _check_header_config(file: Path, component: str, config: Mapping[str, Any]) -> None:
    where = f"{component}." if component else ""

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    for key in ("r", "lora_alpha"):
        if key in config and not (number(config[key]) and config[key] >= 0):
            raise AdapterError(f"{file}: {HEADER_KEY} {where}{key} is {config[key]!r}, not a number >= 0; fix it")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or not all(number(v) for v in pattern.values()):
            raise AdapterError(f"{file}: {HEADER_KEY} {where}{key} is no object of numbers; fix it")
        for name in pattern:
            if problem := pattern_problem(name):  # matched in bounded time only (analysis/patterns.py)
                raise AdapterError(f"{file}: {HEADER_KEY} {where}{key} key {name!r} is refused ({problem}); fix it")


def component_of(name: str, configs: Mapping[str, Any]) -> tuple[str, str]:
    """(component prefix, module path inside it) of a module name under the header's components."""
    for component in sorted(configs, key=len, reverse=True):  # "text_encoder_2" before "text_encoder"
        if component and name.startswith(component + "."):
            return component, name[len(component) + 1 :]
    return "", name


def header_scale(
    file: Path, name: str, r: int, configs: Mapping[str, Mapping[str, Any]], budget: MatchBudget | None = None
) -> tuple[float, float] | None:
    """(alpha, scaling) of one module as peft builds it from the header's config, or None where none applies."""
    component, local = component_of(name, configs)
    config = configs.get(component)
    if config is None:
        return None
    rank = pattern_value(config.get("rank_pattern") or {}, local, budget)
    expected = int(rank[1]) if rank else int(config.get("r", r))
    if expected != r:
        raise AdapterError(
            f"{file}: module {name} has rank {r} in the tensors but its {HEADER_KEY} says {expected}; fix the "
            "header's r / rank_pattern"
        )
    matched = pattern_value(config.get("alpha_pattern") or {}, local, budget)
    alpha = float(matched[1]) if matched else float(config.get("lora_alpha", r))
    if r == 0:
        return alpha, 0.0
    return alpha, alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def load_diffusers_file(
    file: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], buffer
) -> LoraAdapter:
    """A diffusers-layout file; the header's alphas set each module's scale (read by `load_adapter`)."""
    configs = read_header(file, metadata)
    parts, extra = split_keys(file, tensors, KOHYA_KEY)
    if not parts:
        raise no_lora_error(file, tensors)
    modules, keys = single_file_modules(file, parts, extra)
    if configs:
        scaled, budget = [], MatchBudget()  # one time budget for all of the header's pattern matching
        try:
            for m in modules:
                if (found := header_scale(file, m.name, m.r, configs, budget)) is not None:
                    m = dataclasses.replace(m, alpha=found[0], scaling=found[1])
                scaled.append(m)
        except PatternTimeout as err:
            raise AdapterError(
                f"{file}: matching the {HEADER_KEY} pattern key {err.args[0]!r} against the module names took over "
                f"{MATCH_BUDGET_S:g} s; write it as a plain module path"
            ) from None
        modules = scaled
    modules = [dataclasses.replace(m, is_dora=_has_magnitude(m.name, extra)) for m in modules]
    config = {"kohya_metadata": dict(metadata), "diffusers_header": configs}
    fingerprint = adapter_fingerprint(buffer, config)  # first: its two threads fault the lazy mapping in
    check_finite(file, modules)
    warnings = adapter_warnings({"use_dora": any(c.get("use_dora") for c in configs.values())}, extra)
    return LoraAdapter(
        source=str(file),
        fingerprint=fingerprint,
        format="diffusers",
        config=config,
        modules=tuple(modules),
        extra_tensors=extra,
        file_size=file.stat().st_size,
        single_file_keys=keys,
        warnings=warnings,
    )


def _has_magnitude(name: str, extra: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(f"{name}.lora_magnitude_vector") for k in extra)


def diffusers_header(adapter: LoraAdapter, names: tuple[str, ...], ranks: tuple[int, ...]) -> str | None:
    """The export's `lora_adapter_metadata`: each component's config with the cut's ranks at scale 1
    (rank_pattern = alpha_pattern = k, r = lora_alpha = the largest k, no rsLoRA); None if the source had no
    header (diffusers then reads scale 1 itself). Modules cut to rank 0 are simply absent: diffusers builds
    LoRA layers for the modules in the file only (an `exclude_modules` entry would only warn there)."""
    configs = adapter.config.get("diffusers_header") or {}
    if not configs:
        return None
    header: dict[str, Any] = {}
    for component, source in configs.items():
        mine = [(component_of(n, configs)[1], k) for n, k in zip(names, ranks, strict=True)]
        mine = [
            (local, k) for (local, k), n in zip(mine, names, strict=True) if component_of(n, configs)[0] == component
        ]
        kept = {f"^{re.escape(local)}": k for local, k in mine if k > 0}
        r_max = max(kept.values(), default=int(source.get("r", 1)) or 1)
        config = dict(source)
        config.update(r=r_max, lora_alpha=r_max, use_rslora=False, rank_pattern=kept, alpha_pattern=dict(kept))
        for key, value in config.items():
            header[f"{component}.{key}" if component else key] = value
    return json.dumps(header, indent=2, sort_keys=True, default=list)
