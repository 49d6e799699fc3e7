"""Floors: the least time each benchmarked step could take on this machine, from bytes and flops.

A floor is (bytes the step must move) / (measured bandwidth) + (flops it must do) / (measured GEMM rate);
the bench reports measured / floor. Flop counts are those of the factor-space method: r x r Grams B^T B and
A A^T cost 2 (in + out) r^2 per module (as general products; a symmetric product could halve that), and
rank-k factors cost another 2 (in + out) r k. Everything below O(r^3) per module is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from analysis.adapters import LoraAdapter
from bench.machine import Limits


def gram_flops(adapter: LoraAdapter) -> float:
    """Flops of both r x r Grams of every module: 2 (in + out) r^2 each."""
    return float(sum(2 * (m.in_features + m.out_features) * m.r**2 for m in adapter.modules))


def factor_flops(adapter: LoraAdapter, ranks: Sequence[int]) -> float:
    """Flops of rank-k factors from the Grams: the Grams plus B (r x k) and (k x r) A products."""
    return gram_flops(adapter) + float(
        sum(2 * (m.in_features + m.out_features) * m.r * k for m, k in zip(adapter.modules, ranks, strict=True))
    )


def factor_bytes(adapter: LoraAdapter) -> int:
    """Bytes of all A and B factors as stored."""
    return sum(m.A.numel() * m.A.element_size() + m.B.numel() * m.B.element_size() for m in adapter.modules)


def load_floor(file_bytes: int, limits: Limits) -> float:
    """Reading every byte of the file once (hash, header checks and finiteness all need each byte)."""
    return file_bytes / (limits.read_gb_s * 1e9)


def spectra_floor(adapter: LoraAdapter, limits: Limits, read_gb_s: float | None = None) -> float:
    """Reading the factors once plus the fp32 Gram flops. `read_gb_s` overrides the read rate (e.g. host->GPU)."""
    rate = read_gb_s if read_gb_s is not None else limits.read_gb_s
    return factor_bytes(adapter) / (rate * 1e9) + gram_flops(adapter) / (limits.gemm_f32_gflop_s * 1e9)


def factors_floor(adapter: LoraAdapter, ranks: Sequence[int], limits: Limits, out_bytes_per_value: int) -> float:
    """Reading the factors, the fp64 flops of rank-k factors, and writing them (copy rate)."""
    written = sum((m.in_features + m.out_features) * k for m, k in zip(adapter.modules, ranks, strict=True))
    return (
        factor_bytes(adapter) / (limits.read_gb_s * 1e9)
        + factor_flops(adapter, ranks) / (limits.gemm_f64_gflop_s * 1e9)
        + written * out_bytes_per_value / (limits.copy_gb_s * 1e9)
    )


def allocation_floor(n_components: int, n_modules: int, limits: Limits) -> float:
    """Reading the owner index of the kept components (int64) and one cumulative energy per module."""
    return (8 * n_components + 16 * n_modules) / (limits.read_gb_s * 1e9)
