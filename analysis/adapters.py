"""Adapter formats -> one `LoraAdapter` of `LoraModule`s (PEFT, AdaLoRA, kohya/diffusers, zips).

Shapes in the files are the truth: the config is cross-checked against them and every disagreement is
reported by module name. Nothing here runs code from a file (pickles go through a tensors-only
unpickler) and nothing here imports streamlit or prints.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from analysis.safe_io import AdapterError, content_digest, extracted_zip, read_pickled_tensors, read_safetensors

__all__ = ["AdapterError", "LoraAdapter", "LoraModule", "load_adapter"]

ModuleKind = Literal["linear", "embedding", "conv"]
AdapterFormat = Literal["peft", "adalora", "kohya"]


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One adapted module: its update is `delta_w = scaling * B @ A`.

    Conv and embedding updates are flattened to the same (out, r) @ (r, in) form; `weight_shape` keeps
    the base weight's real shape for export.
    """

    name: str
    """PEFT module path without `base_model.model.`, e.g. `encoder.layer.0.attention.self.query`.
    This is exactly the key format of `rank_pattern`. For kohya inputs it is the kohya module name."""
    A: torch.Tensor
    """(r, in_features) in the file's dtype; conv: (r, in_channels * kh * kw / groups)."""
    B: torch.Tensor
    """(out_features, r) in the file's dtype."""
    scaling: float
    """Effective scale s: alpha / r, alpha / sqrt(r) under rsLoRA, alpha / init_r for AdaLoRA."""
    kind: ModuleKind = "linear"
    weight_shape: tuple[int, ...] = ()
    """Shape of the base weight delta as the framework stores it (conv: (out, in, kh, kw))."""
    alpha: float | None = None
    """The alpha this module was saved with (after alpha_pattern), if the format has one."""

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])

    @property
    def n_params(self) -> int:
        """LoRA parameters of this module: r * (in + out)."""
        return self.r * (self.in_features + self.out_features)


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A loaded adapter: modules in file order plus everything needed to write it back."""

    source: str
    """Path (or upload name) it was read from."""
    fingerprint: str
    """Content hash of the tensors and config: the cache key."""
    format: AdapterFormat
    config: Mapping[str, Any]
    """The adapter_config.json as read (empty for kohya files)."""
    modules: tuple[LoraModule, ...]
    extra_tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """Tensors passed through unchanged on export (modules_to_save, lora bias, DoRA magnitudes...),
    keyed by their original file key."""
    warnings: tuple[str, ...] = ()
    file_size: int = 0
    """Bytes on disk of the weights file(s)."""
    single_file_keys: Mapping[str, tuple[str, str, bool]] = field(default_factory=dict)
    """kohya/diffusers single files only: module name -> (down part, up part, had an alpha), e.g.
    ("lora_down", "lora_up", True) or ("lora_A", "lora_B", False): the export keeps the file's own layout."""

    @property
    def base_model(self) -> str | None:
        """The base model as recorded: PEFT's config, or a kohya file's training metadata."""
        if name := self.config.get("base_model_name_or_path"):
            return name
        metadata = self.config.get("kohya_metadata") or {}
        return next((metadata[k] for k in KOHYA_BASE_MODEL_KEYS if metadata.get(k)), None)

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.modules)

    def module(self, name: str) -> LoraModule:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module named {name!r} in {self.source}")


PEFT_PREFIX = "base_model.model."
# Where kohya's trainer (ss_*) and the modelspec convention record the base model, most specific first.
KOHYA_BASE_MODEL_KEYS = ("ss_sd_model_name", "ss_base_model_version", "modelspec.architecture")
CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# <name>.<part>[.<adapter name>][.weight]; the adapter name ("default") appears in unsaved state dicts. A LoRA
# bias (`lora_B.bias`, peft's lora_bias=True) is no factor: it stays unmatched and is passed through.
PEFT_KEY = re.compile(
    r"^(?P<name>.+)\.(?P<part>lora_A|lora_B|lora_E|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?!(?:weight|bias)$)(?P<adapter>[^.]+))?(?:\.weight)?$"
)
# Initialisations that change the base weights when peft loads the adapter (PiSSA, OLoRA, CorDA and LoRA-GA
# subtract the initial factors, LoftQ quantises): such an adapter's update is relative to that changed base.
BASE_ALTERING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
KOHYA_KEY = re.compile(r"^(?P<name>.+)\.(?P<part>lora_down|lora_up|lora_A|lora_B)\.weight$")


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT folder, an AdaLoRA folder, a kohya/diffusers `.safetensors` file or a `.zip` of any.

    Args:
        path: folder or file. A folder may also hold the adapter one level down (a training run record
            with an `adapter/` folder).

    Returns:
        The adapter with one `LoraModule` per adapted module, in file order.

    Raises:
        AdapterError: with one line naming the file, the module and the fix.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AdapterError(f"{path}: no such file or folder; check the path")
    if path.is_file() and path.name == CONFIG_NAME:
        path = path.parent  # the config names its folder
    try:
        if path.is_file() and path.suffix.lower() == ".zip":
            with extracted_zip(path) as root:
                try:
                    return _replace_source(_load_path(_find_adapter(root, str(path)), in_memory=True), str(path))
                except AdapterError as err:  # name the file inside the zip, not the temporary folder
                    raise AdapterError(str(err).replace(str(root), str(path))) from None
        return _load_path(_find_adapter(path, str(path)), in_memory=False)
    except AdapterError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError, RecursionError) as err:
        # a check this loader lacks: still one line naming the file, never a traceback in the app or the CLI
        raise AdapterError(
            f"{path}: cannot be read as a LoRA adapter ({type(err).__name__}: {str(err)[:160]})"
        ) from None


def _find_adapter(path: Path, shown: str) -> Path:
    """The adapter folder or single file inside `path` (itself, or the one folder/file below it)."""
    if path.is_file():
        return path
    if (path / CONFIG_NAME).is_file():
        return path
    configs = sorted(p.parent for p in _below(path, CONFIG_NAME))
    if len(configs) == 1:
        return configs[0]
    if len(configs) > 1:
        names = ", ".join(str(c.relative_to(path)) for c in configs[:3])
        raise AdapterError(f"{shown}: holds several adapters ({names}); point at one of them")
    files = sorted(_below(path, "*.safetensors"))
    if len(files) == 1:
        return files[0]
    if len(files) > 1:
        names = ", ".join(str(f.relative_to(path)) for f in files[:3])
        raise AdapterError(f"{shown}: holds several .safetensors files ({names}); point at one of them")
    raise AdapterError(
        f"{shown}: no {CONFIG_NAME} found; point at a PEFT adapter folder (adapter_config.json + "
        "adapter_model.safetensors) or a kohya .safetensors file"
    )


SEARCH_DEPTH = 3  # folder levels searched below the given path: a run's adapter/, a zip's top folder or two


def _below(path: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` in `path` and up to SEARCH_DEPTH folder levels below it (not the whole tree:
    `/usr` is a path too)."""
    return [p for depth in range(SEARCH_DEPTH + 1) for p in path.glob("/".join(["*"] * depth + [pattern]))]


def _load_path(path: Path, *, in_memory: bool) -> LoraAdapter:
    if path.is_dir():
        return _load_peft_folder(path, in_memory=in_memory)
    if path.suffix.lower() == ".safetensors":
        if (path.parent / CONFIG_NAME).is_file() and path.name == WEIGHT_NAMES[0]:
            return _load_peft_folder(path.parent, in_memory=in_memory)
        return _load_single_file(path, in_memory=in_memory)
    if path.suffix.lower() in (".bin", ".pt", ".pth"):
        if (path.parent / CONFIG_NAME).is_file():
            return _load_peft_folder(path.parent, in_memory=in_memory)
        raise AdapterError(f"{path}: a pickled file without {CONFIG_NAME} beside it; add the config or use a folder")
    raise AdapterError(f"{path}: unknown adapter format; expected a folder, .safetensors, .bin or .zip")


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise AdapterError(f"{file}: not valid JSON ({str(err)[:80]}); fix or re-save the config") from None
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
            try:
                re.compile(name)
            except re.error as err:
                raise bad(f"{key} key", name, f"a valid regular expression ({err})") from None


def base_altering_init(config: Mapping[str, Any]) -> str | None:
    """The config's `init_lora_weights` when it is one that changes the base weights at load (see
    BASE_ALTERING_INITS), else None."""
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_ALTERING_INITS):  # "pissa_niter_16" too
        return init
    return "loftq" if config.get("loftq_config") else None


def _warnings(config: Mapping[str, Any], extra: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """What the spectra or an export leave out, from the config and the passed-through tensors (PEFT or kohya)."""
    warnings = []
    if config.get("use_dora") or any("lora_magnitude_vector" in k or k.endswith(".dora_scale") for k in extra):
        warnings.append(
            "DoRA adapter: spectra show the direction part s*B@A only; the magnitudes are passed through, and a "
            "module cut to rank 0 loses its own"
        )
    if config.get("lora_bias") or any(k.endswith(".lora_B.bias") for k in extra):
        warnings.append(
            "LoRA bias (lora_bias=True): the biases are passed through, but a module cut to rank 0 loses its "
            "bias; set the minimum rank to 1 to keep every one"
        )
    if init := base_altering_init(config):
        warnings.append(
            f"init_lora_weights={init!r}: peft changes the base weights by the initial factors when it loads this "
            "adapter, so its update is not s*B@A on the base model and it cannot be exported at other ranks; "
            "convert it to a plain LoRA first (peft's save_pretrained(path_initial_model_for_weight_conversion=...))"
        )
    return tuple(warnings)


def _fingerprint(buffer: Any, config: Mapping[str, Any]) -> str:
    """Content hash of the weights bytes and the canonical config: the cache key."""
    return content_digest(buffer, json.dumps(config, sort_keys=True, default=str).encode())


def _pattern_value(pattern: Mapping[str, Any], name: str) -> tuple[str, Any] | None:
    """PEFT's rank_pattern / alpha_pattern rule: keys are regexes matched as dotted suffixes, first wins."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return key, value
    return None


def _split_keys(
    file: Path, tensors: Mapping[str, torch.Tensor], regex: re.Pattern, strip: str = ""
) -> tuple[dict, dict]:
    """Group LoRA tensors by module name; everything else goes to the pass-through dict."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    adapter_names: dict[str, str] = {}  # adapter name (PEFT keys of unsaved state dicts) -> an example key
    for key, tensor in tensors.items():
        match = regex.match(key[len(strip) :] if strip and key.startswith(strip) else key)
        if match:
            parts.setdefault(match["name"], {})[match["part"]] = tensor
            adapter_names.setdefault(match.groupdict().get("adapter") or "", key)
        else:
            extra[key] = tensor
    if len(adapter_names) > 1:
        examples = ", ".join(repr(k) for k in list(adapter_names.values())[:2])
        raise AdapterError(f"{file}: holds several adapters ({examples}); save one adapter per file with peft")
    return parts, extra


def _is_finite(t: torch.Tensor) -> bool:
    """Whether every value is finite, in one read of the tensor.

    A sum is NaN/Inf if some value is; it can also overflow with finite values, so a non-finite sum is
    confirmed with an exact element check. numpy's sum is single-threaded: torch's OpenMP reduction was
    ~10x slower on a shared 2-core machine (threads spinning on busy cores).
    """
    if t.dtype in (torch.float32, torch.float64, torch.float16) and t.device.type == "cpu":
        with np.errstate(over="ignore", invalid="ignore"):
            total = t.numpy().sum(dtype=np.float64 if t.dtype == torch.float64 else np.float32)
        if np.isfinite(total):
            return True
    elif bool(torch.isfinite(t.sum(dtype=torch.float32))):  # bfloat16 (no numpy dtype): no full-size mask
        return True
    return bool(torch.isfinite(t).all())


def _check_finite(file: Path, modules: list[LoraModule]) -> None:
    bad = [m.name for m in modules if not (_is_finite(m.A) and _is_finite(m.B))]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise AdapterError(
            f"{file}: NaN or Inf values in module(s) {', '.join(bad[:3])}{more}; the training run diverged, "
            "use an earlier checkpoint"
        )


def _no_lora_error(file: Path, tensors: Mapping[str, torch.Tensor]) -> AdapterError:
    if not tensors:
        return AdapterError(f"{file}: holds no tensors; re-export the adapter")
    lora_like = next((k for k in tensors if any(w in k.lower() for w in ("lora", "hada_", "lokr_", "oft_"))), None)
    if lora_like is not None:
        return AdapterError(
            f"{file}: its tensors (e.g. {lora_like!r}) are in a layout not read here (LyCORIS LoHa/LoKr, OFT or "
            "old diffusers attention processors); convert it to PEFT (lora_A/lora_B) or kohya (lora_down/lora_up)"
        )
    example = next(iter(tensors))
    return AdapterError(
        f"{file}: no LoRA tensors found among {len(tensors)} tensors (e.g. {example!r}); this looks like a full "
        "model checkpoint, not an adapter: point at the LoRA adapter instead"
    )


def _as_matrices(file: Path, name: str, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Flatten conv factors to (r, in*k*k) and (out, r); check the inner dimension."""
    kind = "conv" if A.ndim >= 3 else "linear"
    if A.ndim < 2 or B.ndim < 2:
        raise AdapterError(f"{file}: module {name} has 1-d LoRA factors {tuple(A.shape)}, {tuple(B.shape)}; corrupt")
    if A.ndim != B.ndim:
        raise AdapterError(
            f"{file}: module {name} has factors of {A.ndim} and {B.ndim} dimensions ({tuple(A.shape)}, "
            f"{tuple(B.shape)}); the file is corrupt or mixes two adapters"
        )
    for factor in (A, B):
        if not factor.is_floating_point() or factor.dtype.itemsize < 2:  # integers, bool, float8
            raise AdapterError(
                f"{file}: module {name} has {str(factor.dtype).removeprefix('torch.')} factors; LoRA factors are "
                "float32, float16 or bfloat16: re-save them in one of those"
            )
    if A.shape[0] != B.shape[1]:
        raise AdapterError(
            f"{file}: module {name} has A {tuple(A.shape)} and B {tuple(B.shape)} whose inner dimensions "
            f"({A.shape[0]} vs {B.shape[1]}) disagree; the file is corrupt or mixes two adapters"
        )
    if kind == "conv":
        A = A.reshape(A.shape[0], -1)  # (r, in, kh, kw) -> (r, in * kh * kw)
        B = B.reshape(B.shape[0], B.shape[1], -1)  # (out, r, 1, 1) -> (out, r, 1)
        if B.shape[2] != 1:
            raise AdapterError(f"{file}: module {name} has a lora_B with a kernel {tuple(B.shape)}; not supported")
        B = B[:, :, 0]
    return A, B, kind


def _load_peft_folder(folder: Path, *, in_memory: bool) -> LoraAdapter:
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
    parts, extra = _split_keys(weights, tensors, PEFT_KEY, PEFT_PREFIX)
    if not parts:
        raise _no_lora_error(weights, tensors)
    fingerprint = _fingerprint(buffer, config)  # first: its two threads fault the lazy mapping in
    modules = [_peft_module(weights, config, name, p, is_adalora) for name, p in parts.items()]
    _check_finite(weights, modules)
    return LoraAdapter(
        source=str(folder),
        fingerprint=fingerprint,
        format="adalora" if is_adalora else "peft",
        config=config,
        modules=tuple(modules),
        extra_tensors=extra,
        warnings=_warnings(config, extra),
        file_size=weights.stat().st_size,
    )


def _peft_module(file: Path, config: Mapping[str, Any], name: str, p: dict, is_adalora: bool) -> LoraModule:
    is_embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
    A = p.get("lora_embedding_A" if is_embedding else "lora_A")
    B = p.get("lora_embedding_B" if is_embedding else "lora_B")
    if A is None or B is None:
        missing = "A" if A is None else "B"
        raise AdapterError(f"{file}: module {name} has no lora_{missing} tensor (only half of the pair); corrupt file")
    A, B, kind = _as_matrices(file, name, A, B)
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
    matched = _pattern_value(rank_pattern, name)
    expected_r = int(matched[1]) if matched else int(config.get("r", 8))
    if expected_r != r:
        source = f"rank_pattern key {matched[0]!r}" if matched else "r"
        raise AdapterError(
            f"{file}: module {name} has rank {r} in the tensors but the config says {expected_r} ({source}); "
            "fix r / rank_pattern in adapter_config.json"
        )
    matched_alpha = _pattern_value(config.get("alpha_pattern") or {}, name)
    alpha = float(matched_alpha[1]) if matched_alpha else alpha
    if r == 0:
        scaling = 0.0  # an empty module: its update is zero whatever the scale
    else:
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return LoraModule(name, A, B, scaling, kind, weight_shape, alpha)


def _load_single_file(file: Path, *, in_memory: bool) -> LoraAdapter:
    """kohya / diffusers single-file LoRA: `<name>.lora_down/up.weight` (or lora_A/B) and `<name>.alpha`."""
    tensors, metadata, buffer = read_safetensors(file, in_memory=in_memory)
    if any(k.startswith(PEFT_PREFIX) for k in tensors):
        raise AdapterError(
            f"{file}: PEFT weights with no {CONFIG_NAME} beside them (the scale is unknown); copy the config there"
        )
    parts, extra = _split_keys(file, tensors, KOHYA_KEY)
    if not parts:
        raise _no_lora_error(file, tensors)
    if mid := next((k for k in extra if k.endswith((".lora_mid.weight", ".lora_mid"))), None):
        raise AdapterError(
            f"{file}: {mid!r} is a LyCORIS Tucker (lora_mid) factor, not plain LoRA; only lora_down/lora_up "
            "(kohya) and lora_A/lora_B (PEFT, diffusers) adapters are read"
        )
    modules, keys = [], {}
    for name, p in parts.items():
        down, up = ("lora_down", "lora_up") if "lora_down" in p or "lora_up" in p else ("lora_A", "lora_B")
        keys[name] = (down, up, f"{name}.alpha" in extra)
        A, B = p.get(down), p.get(up)
        if A is None or B is None:
            raise AdapterError(f"{file}: module {name} has only half of its down/up pair; corrupt file")
        weight_shape = (B.shape[0], *A.shape[1:])
        A, B, kind = _as_matrices(file, name, A, B)
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
        modules.append(LoraModule(name, A, B, alpha / r if r else 0.0, kind, weight_shape, alpha))
    config = {"kohya_metadata": metadata}
    fingerprint = _fingerprint(buffer, config)  # first: its two threads fault the lazy mapping in
    _check_finite(file, modules)
    return LoraAdapter(
        source=str(file),
        fingerprint=fingerprint,
        format="kohya",
        config=config,
        modules=tuple(modules),
        extra_tensors=extra,
        file_size=file.stat().st_size,
        single_file_keys=keys,
        warnings=_warnings(config, extra),
    )


def _replace_source(adapter: LoraAdapter, source: str) -> LoraAdapter:
    from dataclasses import replace

    return replace(adapter, source=source)
