"""Markdown tables of one bench run: engine figures with floors, baselines as ratios, peak memory."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.machine import Limits, MachineInfo


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _with_floor(row: dict, key: str, floor_key: str, fmt: str) -> str:
    value, floor = row.get(key), row.get(floor_key)
    if value is None:
        return "–"
    ratio = f" ({value / floor:.1f}×)" if floor else ""
    return f"{format(value, fmt)}{ratio}"


def engine_table(rows: Sequence[dict]) -> list[str]:
    has_resident = any("spectra_resident_s" in r for r in rows)
    head = ["adapter", "modules", "r", "MB", "load s", "spectra s", "spectra, best run s"]
    head += ["spectra, on-device factors s"] if has_resident else []
    head += ["load + spectra + 1 allocation s", "1 allocation ms", "full factors s", "export 25% s",
             "float64 Grams / QR"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
    spectra_floor = "floor_spectra_host_s" if has_resident else "floor_spectra_s"
    for r in rows:
        cells = [
            f"`{r['adapter']}`",
            str(r["modules"]),
            str(r["rank"]),
            f"{r['file_mb']:.0f}" if r["file_mb"] >= 10 else f"{r['file_mb']:.1f}",
            _with_floor(r, "load_s", "floor_load_s", ".3f"),
            _with_floor(r, "spectra_s", spectra_floor, ".3f"),
            _with_floor(r, "spectra_best_s", spectra_floor, ".3f"),
        ]
        if has_resident:
            cells.append(_with_floor(r, "spectra_resident_s", "floor_spectra_s", ".4f"))
        cells += [
            _num(r["end_to_end_s"], ".3f"),
            _with_floor(r, "allocation_ms", "floor_allocation_ms", ".3f"),
            _with_floor(r, "factors_s", "floor_factors_s", ".2f"),
            _with_floor(r, "export25_s", "floor_export25_s", ".2f"),
            f"{r['n_float64_gram']} / {r['n_fallback']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def baseline_table(rows: Sequence[dict]) -> list[str]:
    head = ["adapter", "dense SVD s (extrapolated)", "svd_lowrank s (extrapolated)", "engine spectra s",
            "vs dense", "vs svd_lowrank", "modules timed", "max rel. err vs f64 dense",
            "vs f64 factor QR (all)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        if "baseline_dense_svd_s" not in r:
            continue
        spectra = r.get("spectra_resident_s", r["spectra_s"])
        cells = [
            f"`{r['adapter']}`",
            f"{r['baseline_dense_svd_s']:,.1f}",
            f"{r['baseline_svd_lowrank_s']:,.2f}",
            f"{spectra:.3f}",
            f"{r['baseline_dense_svd_s'] / spectra:,.0f}×",
            f"{r['baseline_svd_lowrank_s'] / spectra:,.0f}×",
            f"{r['baseline_n_sampled']} of {r['baseline_n_modules']}",
            f"{r['baseline_max_rel_error_dense']:.1e}",
            f"{r['baseline_max_rel_error_f64']:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def memory_table(rows: Sequence[dict]) -> list[str]:
    head = ["adapter", "file MB", "RSS after imports MB", "process peak MB", "peak above imports MB",
            "above imports / file"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        if "memory_peak_mb" not in r:
            continue
        cells = [
            f"`{r['adapter']}`",
            f"{r['memory_file_mb']:.1f}",
            f"{r['memory_baseline_mb']:.0f}",
            f"{r['memory_peak_mb']:.0f}",
            f"{r['memory_above_baseline_mb']:.0f}",
            f"{r['memory_above_baseline_mb'] / r['memory_file_mb']:.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_tables(
    rows: Sequence[dict], machine: MachineInfo, limits: Limits, load_after: tuple[float, float, float]
) -> str:
    """All tables of a run, each figure followed by (measured / floor) where a floor exists."""
    h2d = f", host→device {limits.h2d_gb_s:.1f} GB/s" if limits.h2d_gb_s else ""
    parts = [
        f"Machine: {machine.line()}; load average at end {load_after[0]:.2f}.",
        "Measured limits (best of 5 runs, at the start and at the end of the run): "
        f"read {limits.read_gb_s:.1f} GB/s, copy {limits.copy_gb_s:.1f} GB/s{h2d}, "
        f"GEMM fp32 {limits.gemm_f32_gflop_s:.0f} GFLOP/s, fp64 {limits.gemm_f64_gflop_s:.0f} GFLOP/s.",
        "",
        "Engine (median seconds, and the best run for spectra; in brackets measured / floor):",
        "",
        *engine_table(rows),
        "",
    ]
    baselines = baseline_table(rows)
    if baselines:
        parts += ["Against what users run today (same run, same device):", "", *baselines, ""]
    parts += ["Peak memory of load + spectra + allocation + export 25% in a fresh process:", "", *memory_table(rows)]
    return "\n".join(parts)
