"""Benchmark the engine against what users run today, on adapters with real model shapes.

For each adapter: load, spectra (engine), full truncated factors, one allocation, export at the 25%
budget, peak memory (maxrss of a fresh subprocess); in the same run, the dense baselines (form s*B@A and
run svdvals, as kohya resize_lora and peft's conversion do; and torch.svd_lowrank) on a sample of modules
per shape, extrapolated to the whole adapter; and floors from measured memory bandwidth and GEMM speed.
`python bench/run.py --models minilm:32 llama2-7b:64 --out bench/results` prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.adapters import load_adapter  # noqa: E402
from analysis.export import compress_adapter, save_adapter  # noqa: E402
from analysis.para import allocate_ranks, para_index  # noqa: E402
from analysis.spectra import adapter_spectra, truncated_factors  # noqa: E402
from bench.make_adapter import make_adapter  # noqa: E402


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_floors() -> dict[str, float]:
    """Memory read bandwidth (GB/s, sum over 512 MB) and fp32 GEMM throughput (GFLOP/s, 2048^3)."""
    x = torch.ones(128 * 1024 * 1024)  # 512 MB
    read = median_time(lambda: x.sum(), repeats=5)
    a = torch.randn(2048, 2048)
    gemm = median_time(lambda: a @ a, repeats=5)
    return {"read_gb_s": x.numel() * 4 / read / 1e9, "gemm_gflop_s": 2 * 2048**3 / gemm / 1e9}


def dense_baselines(adapter, per_shape: int = 2) -> dict[str, float]:
    """Seconds for dense svdvals and svd_lowrank over the whole adapter, extrapolated from samples per shape."""
    groups = defaultdict(list)
    for m in adapter.modules:
        groups[(m.out_features, m.in_features, m.r)].append(m)
    dense = lowrank = 0.0
    max_rel = 0.0
    sampled = 0
    spectra = {s.name: s for s in adapter_spectra(adapter).spectra}
    for modules in groups.values():
        sample = modules[:per_shape]
        t_dense, t_low = [], []
        for m in sample:
            start = time.perf_counter()
            delta = m.scaling * (m.B.float() @ m.A.float())  # (out, r) @ (r, in) -> (out, in)
            values = torch.linalg.svdvals(delta)
            t_dense.append(time.perf_counter() - start)
            start = time.perf_counter()
            delta = m.scaling * (m.B.float() @ m.A.float())
            torch.svd_lowrank(delta, q=min(2 * m.r, min(delta.shape)), niter=2)
            t_low.append(time.perf_counter() - start)
            exact = torch.linalg.svdvals(m.scaling * (m.B.double() @ m.A.double()))[: m.r].numpy()
            got = spectra[m.name].sigma[: exact.shape[0]]
            keep = exact > exact[0] * 1e-6
            max_rel = max(max_rel, float(np.max(np.abs(got[keep] - exact[keep]) / exact[keep])))
            del values
        sampled += len(sample)
        dense += statistics.mean(t_dense) * len(modules)
        lowrank += statistics.mean(t_low) * len(modules)
    return {"dense_svd_s": dense, "svd_lowrank_s": lowrank, "max_rel_error": max_rel, "sampled": sampled}


def peak_rss_mb(folder: Path) -> float:
    """Peak resident memory of a fresh process that loads, computes spectra and exports at 25%."""
    code = (
        "import resource,sys,tempfile; sys.path.insert(0, sys.argv[2]);"
        "from analysis.adapters import load_adapter; from analysis.spectra import adapter_spectra;"
        "from analysis.para import para_index, allocate_ranks;"
        "from analysis.export import compress_adapter, save_adapter;"
        "a=load_adapter(sys.argv[1]); al=allocate_ranks(para_index(adapter_spectra(a)), 0.25, 'params_fraction');"
        "save_adapter(compress_adapter(a, al), tempfile.mkdtemp() + '/out');"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder), str(ROOT)], capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024 if out.returncode == 0 else float("nan")


def bench_adapter(folder: Path, floors: dict[str, float], *, dense: bool = True) -> dict[str, float]:
    size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")
    load = median_time(lambda: load_adapter(folder), repeats=3)
    adapter = load_adapter(folder)
    spectra = adapter_spectra(adapter)
    t_spectra = median_time(lambda: adapter_spectra(adapter), repeats=5)
    index = para_index(spectra)
    t_alloc = median_time(lambda: allocate_ranks(index, 0.9), repeats=50)
    allocation = allocate_ranks(index, 0.25, "params_fraction")
    t_factors = median_time(lambda: [truncated_factors(m, m.r) for m in adapter.modules], repeats=1)
    with tempfile.TemporaryDirectory() as tmp:
        t_export = median_time(
            lambda: save_adapter(compress_adapter(adapter, allocation), Path(tmp) / "out", overwrite=True), repeats=1
        )
    flops = sum(2 * (m.in_features + m.out_features) * m.r**2 + 10 * m.r**3 for m in adapter.modules)
    floor = size / (floors["read_gb_s"] * 1e9) + flops / (floors["gemm_gflop_s"] * 1e9)
    row = {
        "adapter": folder.name, "modules": len(adapter.modules), "size_mb": size / 1e6, "load_s": load,
        "spectra_s": t_spectra, "device": spectra.device, "fallback": spectra.n_fallback, "factors_s": t_factors,
        "allocation_ms": t_alloc * 1e3, "export25_s": t_export, "floor_s": floor,
        "spectra_over_floor": t_spectra / floor, "peak_rss_mb": peak_rss_mb(folder),
    }  # fmt: skip
    if dense:
        row |= dense_baselines(adapter)
        row["speedup_vs_dense"] = row["dense_svd_s"] / t_spectra
        row["speedup_vs_lowrank"] = row["svd_lowrank_s"] / t_spectra
    return row


def markdown(rows: list[dict], floors: dict[str, float]) -> str:
    head = ("| adapter | modules | MB | load s | spectra s | floor s | spectra/floor | allocation ms | factors s "
            "| export 25% s | peak RSS MB | dense SVD s (extrap.) | svd_lowrank s (extrap.) | vs dense | vs lowrank "
            "| max rel. err |")  # fmt: skip
    lines = [head, "|" + " --- |" * 16]
    for r in rows:
        lines.append(
            f"| {r['adapter']} | {r['modules']} | {r['size_mb']:.0f} | {r['load_s']:.3f} | {r['spectra_s']:.3f} "
            f"| {r['floor_s']:.3f} | {r['spectra_over_floor']:.1f}x | {r['allocation_ms']:.3f} | {r['factors_s']:.2f} "
            f"| {r['export25_s']:.2f} | {r['peak_rss_mb']:.0f} | {r.get('dense_svd_s', float('nan')):.0f} "
            f"| {r.get('svd_lowrank_s', float('nan')):.1f} | {r.get('speedup_vs_dense', float('nan')):,.0f}x "
            f"| {r.get('speedup_vs_lowrank', float('nan')):,.0f}x | {r.get('max_rel_error', float('nan')):.1e} |"
        )
    lines.append(
        f"\nMachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; read {floors['read_gb_s']:.1f} GB/s, fp32 GEMM {floors['gemm_gflop_s']:.0f} GFLOP/s."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm:32", "llama2-7b:64"], help="model:rank")
    parser.add_argument("--work", default=str(ROOT / "bench" / "out"), help="where adapters are generated")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baselines")
    args = parser.parse_args()
    floors = machine_floors()
    rows = []
    for spec in args.models:
        model, rank = spec.split(":")
        folder = Path(args.work) / f"{model}-r{rank}"
        if not (folder / "adapter_model.safetensors").is_file():
            make_adapter(model, int(rank), folder)
        rows.append(bench_adapter(folder, floors, dense=not args.no_dense))
        print(json.dumps(rows[-1]), file=sys.stderr)
    table = markdown(rows, floors)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (out / f"{device}-{stamp}.json").write_text(json.dumps({"floors": floors, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
