"""What users run today, timed on the same adapter: dense SVD of s*B@A per module, and torch.svd_lowrank on it.

Dense baseline: form the (out, in) update in float32 and take its singular values with torch.linalg.svdvals
(values only: the cheapest dense route; kohya's resize_lora and peft's LoRA conversion also compute vectors,
so they take longer). Low-rank baseline: torch.svd_lowrank(delta, q=2r, niter=2) on the same dense update.
A full dense run over a 7B adapter takes about an hour, so both are timed on `per_shape` modules of each
distinct (out, in, r) shape and extrapolated by module count; each is timed with torch's default threads and
with one thread, and the faster counts. Accuracy: float32 engine spectra against a
float64 dense SVD on the sampled modules, and against the float64 factor-space QR route on every module.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import torch

from analysis.adapters import LoraAdapter, LoraModule
from analysis.spectra import AdapterSpectra, adapter_spectra
from analysis.threads import engine_threads
from bench.machine import median_time


@dataclass(frozen=True)
class Baselines:
    """Extrapolated seconds for the whole adapter and the engine's accuracy."""

    dense_svd_s: float
    """Sum over shapes of (mean measured seconds per module) x (modules of that shape)."""
    svd_lowrank_s: float
    n_sampled: int
    """Modules actually timed (the rest is extrapolated)."""
    n_modules: int
    dense_per_shape_s: dict[str, float]
    """Mean seconds per module of one dense SVD, by shape 'out x in r=R'."""
    max_rel_error_dense: float
    """Max relative error of the engine's float32 singular values vs a float64 dense SVD (sampled modules)."""
    max_rel_error_f64: float
    """Max relative error of the engine's float32 singular values vs the float64 QR route (all modules)."""

    def as_dict(self) -> dict:
        return asdict(self)


def _dense_update(module: LoraModule, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    B = module.B.to(device, dtype)
    A = module.A.to(device, dtype)
    return module.scaling * (B @ A)  # (out, r) @ (r, in) -> (out, in)


def _best_time(fn, device: torch.device) -> float:
    """The faster of torch's default threads and one thread (CPU), so the baseline is not slowed by OpenMP.

    On a busy machine OpenMP threads wait for descheduled helpers and a dense SVD can take 10x longer; a
    user would not see that on an idle machine, so the baseline gets whichever setting is faster.
    """
    if device.type != "cpu":
        return median_time(fn, repeats=1, warmup=0, device=device)
    default = median_time(fn, repeats=1, warmup=0, device=device)
    with engine_threads():  # one torch thread in this thread
        single = median_time(fn, repeats=1, warmup=0, device=device)
    return min(default, single)


def max_rel_error(got: np.ndarray, exact: np.ndarray, floor: float = 1e-7) -> float:
    """max |got - exact| / exact over values above floor * exact[0] (below it float64 dense SVD is noise).

    Example: got [2.0, 1.0001], exact [2.0, 1.0] -> 1e-4.
    """
    n = min(got.shape[0], exact.shape[0])
    got, exact = got[:n], exact[:n]
    keep = exact > floor * exact[0] if n else np.zeros(0, bool)
    return float(np.max(np.abs(got[keep] - exact[keep]) / exact[keep])) if keep.any() else 0.0


def measure_baselines(
    adapter: LoraAdapter, spectra: AdapterSpectra, device: torch.device, *, per_shape: int = 1
) -> Baselines:
    """Time the dense baselines on `per_shape` modules of every shape and check the engine's accuracy.

    Args:
        adapter: the benchmarked adapter.
        spectra: the engine's float32 spectra of it (the values checked).
        device: where the dense baselines run (the engine's device, for a like-for-like ratio).
        per_shape: modules timed per distinct (out, in, r); spread over depth (first, last, middle...).
    """
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, m in enumerate(adapter.modules):
        groups[(m.out_features, m.in_features, m.r)].append(i)
    dense_total = lowrank_total = 0.0
    per_shape_s = {}
    max_dense = 0.0
    n_sampled = 0
    for (out_f, in_f, r), idx in groups.items():
        picks = [idx[round(j * (len(idx) - 1) / max(per_shape - 1, 1))] for j in range(min(per_shape, len(idx)))]
        t_dense, t_low = [], []
        for i in dict.fromkeys(picks):
            m = adapter.modules[i]
            t_dense.append(
                _best_time(lambda m=m: torch.linalg.svdvals(_dense_update(m, device, torch.float32)), device)
            )
            q = min(2 * r, out_f, in_f)
            t_low.append(_best_time(lambda m=m, q=q: torch.svd_lowrank(_dense_update(m, device, torch.float32), q=q,
                                                                       niter=2), device))  # fmt: skip
            exact = torch.linalg.svdvals(_dense_update(m, torch.device("cpu"), torch.float64)).numpy()
            max_dense = max(max_dense, max_rel_error(spectra.spectra[i].sigma, exact))
            n_sampled += 1
        per_shape_s[f"{out_f}x{in_f} r={r}"] = statistics.mean(t_dense)
        dense_total += statistics.mean(t_dense) * len(idx)
        lowrank_total += statistics.mean(t_low) * len(idx)
    reference = adapter_spectra(adapter, device="cpu", dtype=torch.float64)
    max_f64 = max(
        (max_rel_error(s.sigma, ref.sigma, floor=1e-12) for s, ref in zip(spectra.spectra, reference.spectra)),
        default=0.0,
    )
    return Baselines(
        dense_svd_s=dense_total,
        svd_lowrank_s=lowrank_total,
        n_sampled=n_sampled,
        n_modules=len(adapter.modules),
        dense_per_shape_s=per_shape_s,
        max_rel_error_dense=max_dense,
        max_rel_error_f64=max_f64,
    )
