"""Compress an adapter to a PARA allocation and write it back: pure `compress_adapter`, thin writers.

PEFT output folds each module's scale into balanced factors and sets rank_pattern = alpha_pattern = k
(scale 1), so it loads in any PEFT reader and in vLLM; rank-0 modules are left out and listed in
`exclude_modules`. A kohya or diffusers file is written in its own layout with its metadata, in a folder or
as one .safetensors: kohya keys with one alpha in every module (k / alpha folded into the factors, so kohya
and diffusers read the same update), diffusers keys at scale 1 with their `lora_adapter_metadata` header
rewritten for the new ranks; the layouts themselves are in `analysis/formats/`. Writes are atomic (a hidden
temporary beside the target, then a rename); the source adapter is never touched. No streamlit here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import save as save_safetensors_bytes
from safetensors.torch import save_file

from analysis import atomic
from analysis.adapters import PEFT_PREFIX, LoraAdapter, LoraModule, base_altering_init, load_adapter
from analysis.formats.base import is_finite
from analysis.formats.diffusers import HEADER_KEY, diffusers_header
from analysis.formats.kohya import STALE_METADATA_KEYS, kohya_alpha, kohya_metadata, kohya_tensors, single_file_name
from analysis.formats.peft import ADALORA_FIELDS, pattern_key, peft_config, peft_tensors
from analysis.formats.peft_experts import expert_tensors
from analysis.para import RankAllocation
from analysis.spectra import truncated_factors
from analysis.threads import engine_threads, map_workers

ExportFormat = Literal["peft", "kohya", "diffusers"]
SINGLE_FILE = ("kohya", "diffusers")  # one .safetensors in the source file's own layout
REPORT_NAME = "RANKS.md"
# Relative error an export may show against the truncated SVD; factors stored in 16 bits are rounded to their own
# precision (bfloat16: 7.8e-3), so those are held to one unit of it instead. A broken export is off by O(1).
ROUND_TRIP_TOL = 1e-3
__all__ = [
    "ADALORA_FIELDS",
    "STALE_METADATA_KEYS",
    "CompressedAdapter",
    "RoundTrip",
    "adapter_file_bytes",
    "adapter_zip_bytes",
    "check_round_trip",
    "compress_adapter",
    "export_formats",
    "kohya_metadata",
    "pattern_key",
    "peft_config",
    "save_adapter",
    "single_file_name",
]


@dataclass(frozen=True, eq=False)
class CompressedAdapter:
    """What gets written: config, tensors and a human-readable report (pure data, no I/O)."""

    format: ExportFormat
    config: Mapping[str, Any]
    """adapter_config.json content (empty for kohya)."""
    tensors: Mapping[str, torch.Tensor]
    """File key -> tensor, contiguous, in the source adapter's floating dtype."""
    report: str
    """Markdown rank report (threshold in every unit, ranks per module, params, energy)."""
    allocation: RankAllocation
    source: str = ""
    """The adapter it was made from (save_adapter refuses to write into it)."""
    metadata: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"format": "pt"})
    """The safetensors header's `__metadata__` (kohya: the source's, updated for the new ranks)."""


@dataclass(frozen=True)
class RoundTrip:
    """Result of reloading an export and comparing it with the truncated SVD of the original."""

    max_rel_error: float
    """Max over modules of ||dW_export - dW_k||_F / ||dW_k||_F (0 for dropped modules that are absent)."""
    n_modules: int
    is_ok: bool
    tolerance: float = ROUND_TRIP_TOL
    """The bound `max_rel_error` was held to: ROUND_TRIP_TOL, or one unit of a 16-bit export's precision."""


def _factor_dtype(module: LoraModule) -> torch.dtype:
    return module.A.dtype if module.A.is_floating_point() else torch.float32


def _finite_factors(module: LoraModule, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`truncated_factors` in the source's dtype, or in float32 where that dtype cannot hold them (float16
    factors near 65504 give balanced factors past its range): nothing non-finite is written."""
    B_k, A_k = truncated_factors(module, k, dtype=_factor_dtype(module))
    if not (is_finite(B_k) and is_finite(A_k)):
        B_k, A_k = truncated_factors(module, k, dtype=torch.float32)
    return B_k, A_k


def check_all_finite(compressed: CompressedAdapter) -> None:
    """Refuse to write an export with a NaN or Inf anywhere (a passed-through tensor of the source, say).

    Raises:
        ValueError: naming the first tensor that is not finite.
    """
    for key, t in compressed.tensors.items():
        if t.is_floating_point() and not is_finite(t):
            raise ValueError(
                f"{compressed.source}: tensor {key!r} of the export holds NaN or Inf values, so nothing is written; "
                "fix the source adapter (a diverged run: use an earlier checkpoint)"
            )


def rank_report(adapter: LoraAdapter, allocation: RankAllocation) -> str:
    """Markdown report of one cut: the threshold in every unit and the rank of every module."""
    a = allocation
    lines = [
        "# PARA rank report",
        "",
        f"Source: `{adapter.source}` ({adapter.format}, {len(adapter.modules)} modules)",
        "",
        "| cut | value |",
        "| --- | --- |",
        f"| tau (absolute) | {a.tau:.6g} |",
        f"| tau / sigma_max | {a.relative_tau:.6f} |",
        f"| energy kept | {a.energy_kept:.4%} |",
        f"| LoRA params | {a.n_params_after:,} of {a.n_params_before:,} ({a.params_fraction:.2%}) |",
        f"| mean rank | {a.mean_rank:.3f} |",
        f"| relative Frobenius error | {a.rel_error:.6f} |",
        f"| min rank | {a.min_rank} |",
        f"| max rank (vLLM --max-lora-rank) | {max(a.ranks, default=0)} |",
        *([f"| DoRA modules kept at rank 1 (peft holds none at rank 0) | {len(a.held)} |"] if a.held else []),
        "",
        "| module | rank | of | energy kept | rel. error |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, k, r, e, err in zip(
        a.names, a.ranks, a.original_ranks, a.module_energy_kept, a.module_rel_error, strict=True
    ):
        lines.append(f"| `{name}` | {k} | {r} | {e:.4%} | {err:.5f} |")
    return "\n".join(lines) + "\n"


def export_formats(adapter: LoraAdapter) -> list[ExportFormat]:
    """The formats `adapter` can be written in, the natural one first.

    A kohya or diffusers file writes back in its own layout; as PEFT too where its module names are model
    paths (diffusers-style keys), since PEFT matches modules by path and a flattened kohya name
    (`lora_unet_..._to_q`) matches none.
    """
    if not adapter.is_single_file:
        return ["peft"]
    own: ExportFormat = adapter.format  # type: ignore[assignment]  # "kohya" or "diffusers"
    return [own, "peft"] if all("." in m.name for m in adapter.modules) else [own]


def compress_adapter(
    adapter: LoraAdapter, allocation: RankAllocation, *, format: ExportFormat | None = None
) -> CompressedAdapter:
    """Truncate every module to its allocated rank (best rank-k approximation, scale folded in).

    Args:
        adapter: the source adapter (not modified).
        allocation: ranks per module, in `adapter.modules` order (from `allocate_ranks` on its spectra).
        format: "peft" (folder for PeftModel.from_pretrained), or "kohya" / "diffusers": a single-file
            input's own layout (either name writes the file's own); default: the first of `export_formats`.

    Returns:
        Config, tensors and a rank report, ready for `save_adapter` or `adapter_zip_bytes`.

    Raises:
        ValueError: if the allocation was made for another adapter, or kohya output for a non-kohya input.
    """
    format = format or export_formats(adapter)[0]
    if format not in ("peft", *SINGLE_FILE):
        raise ValueError(f"format must be 'peft', 'kohya' or 'diffusers', got {format!r}")
    if format in SINGLE_FILE and not adapter.is_single_file:
        raise ValueError(f"format={format!r} needs a kohya input, got {adapter.format}; use format='peft'")
    if format in SINGLE_FILE:
        format = adapter.format  # the file's own layout
    names = tuple(m.name for m in adapter.modules)
    if allocation.names != names:
        raise ValueError("allocation does not belong to this adapter (module names differ); allocate on its spectra")
    if not any(allocation.ranks):
        raise ValueError(
            f"{adapter.source}: this cut keeps no rank in any module, which no reader can load; "
            "raise the budget or set the minimum rank to 1"
        )
    if init := base_altering_init(adapter.config):
        raise ValueError(
            f"{adapter.source}: init_lora_weights={init!r} changes the base weights when peft loads it, so a cut to "
            "other ranks would not apply to the same base; convert it to a plain LoRA first (peft's "
            "save_pretrained(path_initial_model_for_weight_conversion=...)) and compress that"
        )
    if format not in export_formats(adapter):
        raise ValueError(
            f"{adapter.source}: kohya module names (e.g. {next(n for n in names if '.' not in n)!r}) are no model "
            "paths that PEFT can match; export in kohya format (format='kohya', --format kohya)"
        )
    if dora := [m.name for m, k in zip(adapter.modules, allocation.ranks, strict=True) if m.is_dora and not k]:
        raise ValueError(
            f"{adapter.source}: DoRA module {dora[0]} is cut to rank 0, which loses its magnitude (peft cannot hold "
            "a rank-0 DoRA module); allocate on this adapter's spectra (they keep DoRA modules at rank >= 1)"
        )
    tensors: dict[str, torch.Tensor] = {}
    kept = [(module, k) for module, k in zip(adapter.modules, allocation.ranks, strict=True) if k > 0]
    with engine_threads():  # modules on worker threads, each with one-thread BLAS
        factors = map_workers(lambda mk: _finite_factors(*mk), kept)
    alpha = kohya_alpha(allocation.ranks)
    experts = [m for m in adapter.modules if m.expert]
    if experts:  # peft target_parameters: each wrapper's experts at one rank, the export's r
        by_name = {module.name: (B_k, A_k) for (module, _), (B_k, A_k) in zip(kept, factors, strict=True)}
        tensors.update(expert_tensors(experts, by_name, max(allocation.ranks)))
    for (module, _), (B_k, A_k) in zip(kept, factors, strict=True):
        if module.expert:
            continue
        if format in SINGLE_FILE:
            keys = adapter.single_file_keys.get(module.name, ("lora_down", "lora_up", True))
            tensors.update(kohya_tensors(module, B_k.contiguous(), A_k.contiguous(), keys, alpha))
        else:
            tensors.update(peft_tensors(module, B_k.contiguous(), A_k.contiguous()))
    tensors.update(_passed_through(adapter, allocation, format))
    config = peft_config(adapter, allocation) if format == "peft" else {}
    metadata = {"format": "pt"}
    if format in SINGLE_FILE:
        metadata = kohya_metadata(adapter, allocation)
        if header := diffusers_header(adapter, allocation.names, allocation.ranks):
            metadata[HEADER_KEY] = header  # the cut's ranks at scale 1, so diffusers loads it at its strength
    report = rank_report(adapter, allocation)
    return CompressedAdapter(format, config, tensors, report, allocation, adapter.source, metadata)


def _passed_through(adapter: LoraAdapter, allocation: RankAllocation, format: ExportFormat) -> dict[str, torch.Tensor]:
    """The source's other tensors (modules_to_save, LoRA biases, DoRA magnitudes) as the export needs them.

    A dropped module's tensors go with it (peft would report them as unexpected keys). peft multiplies a LoRA
    bias by the module's scale, like B @ A; the export's scale is 1, so the bias takes the scale in.
    """
    prefix = "" if adapter.is_single_file else PEFT_PREFIX  # kohya keys are the module names themselves
    dropped = tuple(prefix + m.name + "." for m, k in zip(adapter.modules, allocation.ranks, strict=True) if not k)
    scales = {f"{PEFT_PREFIX}{m.name}.lora_B.bias": m.scaling for m in adapter.modules} if format == "peft" else {}
    return {
        key: (t * scales[key] if key in scales else t).contiguous()
        for key, t in adapter.extra_tensors.items()
        if not key.startswith(dropped)
    }


def _write_files(compressed: CompressedAdapter, folder: Path) -> None:
    save_file(dict(compressed.tensors), folder / "adapter_model.safetensors", metadata=dict(compressed.metadata))
    if compressed.format == "peft":
        (folder / "adapter_config.json").write_text(json.dumps(compressed.config, indent=2, sort_keys=True) + "\n")
    (folder / REPORT_NAME).write_text(compressed.report)


def save_adapter(compressed: CompressedAdapter, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the compressed adapter to `out_dir` atomically (a temp folder beside it, then a rename).

    Args:
        compressed: from `compress_adapter`.
        out_dir: target folder; PEFT files (or the kohya .safetensors) and RANKS.md go inside. A kohya export
            to a path ending in ".safetensors" (no trailing slash) is written as that one file instead (its
            metadata notes the cut).
        overwrite: replace a non-empty `out_dir` (or the existing file).

    Returns:
        The written folder (or file).

    Raises:
        ValueError: no target given; the target is the source adapter (or its folder), inside it or above
            it; it holds files that are not an export (even with `overwrite`); a parent of it is a file.
        FileExistsError: the target exists, is not empty and `overwrite` is false.
        OSError: the target cannot be written (one line naming it); folders this call made are removed.
    """
    if not str(out_dir).strip():
        raise ValueError("no output folder given; name a new folder for the compressed adapter")
    check_all_finite(compressed)
    try:
        out = Path(out_dir).expanduser().resolve()
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop
        raise ValueError(f"{out_dir}: is a symlink loop; choose another path for the output") from None
    as_file = compressed.format in SINGLE_FILE and out.suffix.lower() == ".safetensors"
    as_file = as_file and not str(out_dir).endswith(("/", os.sep))  # a trailing slash asks for a folder
    try:
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ValueError(f"{out}: {parent} is a file, not a folder; choose another place for the output")
        (_check_file_target if as_file else _check_folder_target)(compressed, out, overwrite)
    except (ValueError, FileExistsError):
        raise
    except OSError as err:  # e.g. a parent folder that cannot be entered
        raise _write_error(out, err) from None
    made: list[Path] = []
    try:
        made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # folders this call creates
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.sweep_temporaries(out)
        (_write_file if as_file else _write_folder)(compressed, out, overwrite)
    except (OSError, SafetensorError, ValueError) as err:  # name the target, not the hidden temporary beside it
        for folder in made:  # deepest first; only empty ones, so nothing that was there goes
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, ValueError | FileExistsError):  # refused at write time (another writer was first)
            raise
        raise _write_error(out, err) from None
    return out


def _write_error(out: Path, err: Exception) -> OSError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return OSError(f"{out}: cannot write there ({reason}); choose a folder you can write to")


def _check_folder_target(compressed: CompressedAdapter, out: Path, overwrite: bool) -> None:
    if compressed.source:
        source = Path(compressed.source).resolve()
        # a folder source protects everything inside it; a single-file source protects its own folder; and
        # replacing a folder above the source would delete the source with it
        is_inside = out == source or (source.is_dir() and source in out.parents)
        if is_inside or (source.is_file() and out == source.parent) or out in source.parents:
            raise ValueError(f"{out}: holds or is the source adapter; choose another folder for the output")
    if out.is_file():
        raise ValueError(f"{out}: is a file, not a folder; choose a folder for the output")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty; choose another folder or pass overwrite")
        if others := atomic.not_written(out, EXPORT_FILES):
            raise ValueError(
                f"{out}: holds {others[0]!r}, which no export writes, so it is not replaced; choose another folder"
            )


def _check_file_target(compressed: CompressedAdapter, out: Path, overwrite: bool) -> None:
    """A kohya export to one .safetensors file, as resize_lora.py writes it; the source is never the target."""
    if compressed.source and out == Path(compressed.source).resolve():
        raise ValueError(f"{out}: is the source adapter; choose another file name for the output")
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; name a new .safetensors file, or a folder without that suffix")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists; choose another file name or pass overwrite")


def _write_file(compressed: CompressedAdapter, out: Path, overwrite: bool) -> None:
    atomic.write_file(out, lambda tmp: save_file(dict(compressed.tensors), tmp, metadata=dict(compressed.metadata)),
                      overwrite=overwrite)  # fmt: skip


def _write_folder(compressed: CompressedAdapter, out: Path, overwrite: bool) -> None:
    atomic.write_folder(out, lambda tmp: _write_files(compressed, tmp), overwrite=overwrite, keep=EXPORT_FILES)


EXPORT_FILES = ("adapter_model.safetensors", "adapter_config.json", REPORT_NAME)


def adapter_zip_bytes(compressed: CompressedAdapter, *, folder_name: str = "adapter") -> bytes:
    """The same files as `save_adapter` writes, as an in-memory zip with one top folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{folder_name}/adapter_model.safetensors", adapter_file_bytes(compressed))
        if compressed.format == "peft":
            config = json.dumps(compressed.config, indent=2, sort_keys=True)
            archive.writestr(f"{folder_name}/adapter_config.json", config)
        archive.writestr(f"{folder_name}/{REPORT_NAME}", compressed.report)
    return buffer.getvalue()


def adapter_file_bytes(compressed: CompressedAdapter) -> bytes:
    """The weights file `save_adapter` writes, in memory: for kohya, the whole adapter in one file."""
    check_all_finite(compressed)
    return save_safetensors_bytes(dict(compressed.tensors), dict(compressed.metadata))


def check_round_trip(adapter: LoraAdapter, allocation: RankAllocation, exported: str | Path) -> RoundTrip:
    """Reload an export and compare each module's update with the truncated SVD of the original.

    Compares in factor space: ||B' A' s' - B_k A_k||_F via r x r Grams, never the dense update.
    """
    reloaded = {m.name: m for m in load_adapter(exported).modules}

    def error(item: tuple[LoraModule, int]) -> float:
        module, k = item
        got = reloaded.get(module.name)
        if got is None:
            return 0.0 if k == 0 else 1.0  # dropped: right only at rank 0
        if k == 0:  # written although its rank is 0: right only as the zeros of a target_parameters expert
            return 0.0 if module.expert and not (got.B.any() or got.A.any()) else 1.0
        B_k, A_k = truncated_factors(module, k)
        return _factor_rel_diff(got.B.double() * got.scaling, got.A.double(), B_k, A_k)  # B' s': (out, k)

    # modules on worker threads, each with one-thread BLAS, as in compress_adapter
    worst = max(map_workers(error, list(zip(adapter.modules, allocation.ranks, strict=True))), default=0.0)
    tol = max([ROUND_TRIP_TOL] + [torch.finfo(m.A.dtype).eps for m in reloaded.values() if m.A.is_floating_point()])
    return RoundTrip(max_rel_error=worst, n_modules=len(adapter.modules), is_ok=worst < tol, tolerance=tol)


def _factor_rel_diff(B1: torch.Tensor, A1: torch.Tensor, B2: torch.Tensor, A2: torch.Tensor) -> float:
    """||B1 A1 - B2 A2||_F / ||B2 A2||_F from the factors: stack [B1, -B2] @ [A1; A2]."""
    B = torch.cat([B1, -B2], dim=1)  # (out, k1 + k2)
    A = torch.cat([A1, A2], dim=0)  # (k1 + k2, in)
    diff = torch.sum((B.T @ B) * (A @ A.T))  # ||B A||_F^2 = tr(B^T B A A^T): (k, k) * (k, k)
    ref = torch.sum((B2.T @ B2) * (A2 @ A2.T))
    return float(diff.clamp_min(0).sqrt() / ref.sqrt()) if ref > 0 else float(diff.clamp_min(0).sqrt())
