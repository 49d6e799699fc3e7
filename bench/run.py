"""Benchmark the engine against what users run today, on adapters with real model shapes, CPU or CUDA.

For each adapter: load, spectra (the engine's path), load + spectra + one allocation, the factors of a
full-rank export (compress_adapter at 100%), one allocation, export at the 25% parameter budget (compress
and write), each the median of several runs after a warm-up; peak
memory in a fresh process (bench/peak_memory.py); the dense baselines on sampled modules, extrapolated
(bench/baselines.py); and a floor for each figure (bench/floors.py). Prints markdown tables, writes JSON
and the tables to bench/results/. Synthetic adapters are generated into bench/out/ (git-ignored) on demand.

    python bench/run.py                                   # the default set, on cuda when present
    python bench/run.py --adapters llama2-7b:64 --device cpu --no-dense
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from analysis.adapters import LoraAdapter, load_adapter  # noqa: E402
from analysis.export import compress_adapter, save_adapter  # noqa: E402
from analysis.para import allocate_ranks, para_index  # noqa: E402
from analysis.spectra import adapter_spectra, pick_device  # noqa: E402
from bench import floors  # noqa: E402
from bench.baselines import measure_baselines  # noqa: E402
from bench.machine import Limits, machine_info, measure_limits, median_time, wall_times  # noqa: E402
from bench.make_adapter import adapter_name, make_adapter  # noqa: E402
from bench.report import markdown_tables  # noqa: E402

DEFAULT_ADAPTERS = [
    "sample:minilm-bbc-topic-lora-r32", "minilm:32", "minilm:32:steep", "llama2-7b:8", "llama2-7b:16",
    "llama2-7b:64", "llama2-7b:64:balanced", "llama2-7b:128", "llama3-8b:64", "mistral-7b:64",
]  # fmt: skip


def adapter_folder(spec: str, work: Path) -> Path:
    """`sample:NAME` (a bundled sample) or `model:rank[:style]` (generated into `work` unless already there)."""
    if spec.startswith("sample:"):
        return ROOT / "sample_adapters" / spec.removeprefix("sample:")
    model, rank, *rest = spec.split(":")
    style = rest[0] if rest else "trained"
    folder = work / adapter_name(model, int(rank), style)
    if not (folder / "adapter_model.safetensors").is_file():
        print(f"generating {folder} ...", file=sys.stderr)
        make_adapter(model, int(rank), folder, style=style)
    return folder


def on_device(adapter: LoraAdapter, device: torch.device) -> LoraAdapter:
    """The same adapter with its factors moved to `device` (to time spectra from device-resident tensors)."""
    modules = tuple(dataclasses.replace(m, A=m.A.to(device), B=m.B.to(device)) for m in adapter.modules)
    return dataclasses.replace(adapter, modules=modules)


def peak_memory(folder: Path, device: torch.device) -> dict[str, float]:
    """Run bench/peak_memory.py in a fresh process (so earlier work in this one does not count)."""
    cmd = [sys.executable, "-m", "bench.peak_memory", str(folder), "--device", device.type]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def shapes_only(adapter: LoraAdapter) -> LoraAdapter:
    """The adapter with its factors on the meta device: shapes and dtypes for the floors, no memory held."""
    meta = torch.device("meta")
    modules = tuple(dataclasses.replace(m, A=m.A.to(meta), B=m.B.to(meta)) for m in adapter.modules)
    return dataclasses.replace(adapter, modules=modules)


def bench_adapter(
    folder: Path, device: torch.device, *, repeats: int, dense: bool, per_shape: int
) -> tuple[dict, Callable[[Limits], dict]]:
    """Every figure of one adapter (seconds unless the key says otherwise), and its floors given the limits
    (measured at the start and the end of the run, so they come after every adapter)."""
    dev = device.type
    timed = {"repeats": repeats, "device": device}
    load_s = median_time(lambda: load_adapter(folder), **timed)
    adapter = load_adapter(folder)
    spectra = adapter_spectra(adapter, device=dev)
    spectra_runs = wall_times(lambda: adapter_spectra(adapter, device=dev), warmup=0, **timed)  # warmed just above
    index = para_index(spectra)
    allocation_s = median_time(lambda: allocate_ranks(index, 0.9), repeats=200, device=device)
    end_to_end_s = median_time(
        lambda: allocate_ranks(para_index(adapter_spectra(load_adapter(folder), device=dev)), 0.9), **timed
    )
    full_ranks = [m.r for m in adapter.modules]
    full = allocate_ranks(index, 1.0, "params_fraction")  # every rank kept: the factors of a full export
    factors_s = median_time(lambda: compress_adapter(adapter, full), repeats=3)
    cut = allocate_ranks(index, 0.25, "params_fraction")
    with tempfile.TemporaryDirectory() as tmp:
        export_s = median_time(
            lambda: save_adapter(compress_adapter(adapter, cut), Path(tmp) / "out", overwrite=True), repeats=3
        )
    out_bytes = adapter.modules[0].A.element_size() if adapter.modules else 4
    row = {
        "adapter": folder.name,
        "modules": len(adapter.modules),
        "rank": max(full_ranks, default=0),
        "dtype": str(adapter.modules[0].A.dtype).removeprefix("torch.") if adapter.modules else "",
        "file_mb": adapter.file_size / 1e6,
        "device": spectra.device,
        "n_fallback": spectra.n_fallback,
        "n_float64_gram": spectra.n_float64_gram,
        "load_s": load_s,
        "spectra_s": statistics.median(spectra_runs),
        "spectra_best_s": min(spectra_runs),  # like the floor's rates, the best the machine gave in this run
        "end_to_end_s": end_to_end_s,
        "allocation_ms": allocation_s * 1e3,
        "factors_s": factors_s,
        "export25_s": export_s,
        "export25_params_fraction": cut.params_fraction,
        "gram_gflop": floors.gram_flops(adapter) / 1e9,
    }
    if device.type == "cuda":
        resident = on_device(adapter, device)
        row["spectra_resident_s"] = median_time(lambda: adapter_spectra(resident, device=dev), **timed)
        del resident
    shapes, n_kept, cut_ranks = shapes_only(adapter), cut.n_kept, cut.ranks

    def floor_fields(limits: Limits) -> dict:
        fields = {
            "floor_load_s": floors.load_floor(shapes.file_size, limits),
            "floor_spectra_s": floors.spectra_floor(shapes, limits),
            "floor_allocation_ms": floors.allocation_floor(n_kept, len(shapes.modules), limits) * 1e3,
            "floor_factors_s": floors.factors_floor(shapes, full_ranks, limits, out_bytes),
            "floor_export25_s": floors.factors_floor(shapes, cut_ranks, limits, out_bytes),
        }
        if limits.h2d_gb_s is not None:
            fields["floor_spectra_host_s"] = floors.spectra_floor(shapes, limits, read_gb_s=limits.h2d_gb_s)
        return fields

    row |= {f"memory_{k}": v for k, v in peak_memory(folder, device).items()}
    if dense:
        row |= {f"baseline_{k}": v for k, v in measure_baselines(adapter, spectra, device, per_shape=per_shape)
                .as_dict().items()}  # fmt: skip
    return row, floor_fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    specs = "model:rank[:style] (llama2-7b, llama3-8b, mistral-7b, minilm; trained, balanced, steep) or sample:NAME"
    parser.add_argument("--adapters", nargs="+", default=DEFAULT_ADAPTERS, help=specs)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median), after one warm-up")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baselines (minutes per 7B adapter)")
    parser.add_argument("--per-shape", type=int, default=1, help="modules per shape timed for the dense baselines")
    parser.add_argument("--work", default=str(ROOT / "bench" / "out"), help="where synthetic adapters are generated")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    device = pick_device(args.device)
    machine = machine_info(device)
    print(f"machine: {machine.line()}", file=sys.stderr)
    folders = [adapter_folder(spec, Path(args.work)) for spec in args.adapters]
    at_start = measure_limits(device)
    print(f"limits at the start: {at_start}", file=sys.stderr)
    rows, floor_fields = [], []
    for folder in folders:
        row, floors_of = bench_adapter(folder, device, repeats=args.repeats, dense=not args.no_dense,
                                       per_shape=args.per_shape)  # fmt: skip
        rows.append(row)
        floor_fields.append(floors_of)
        print(json.dumps(row), file=sys.stderr)
    at_end = measure_limits(device)
    print(f"limits at the end: {at_end}", file=sys.stderr)
    limits = at_start.best(at_end)  # the floor is what the machine can do at best; neighbours only slow it
    for row, floors_of in zip(rows, floor_fields, strict=True):
        row |= floors_of(limits)
    load_after = os.getloadavg()
    tables = markdown_tables(rows, machine, limits, load_after)
    print(tables)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")  # runs in the same minute must not overwrite each other
    record = {"machine": dataclasses.asdict(machine), "limits": limits.as_dict(),
              "limits_at_start": at_start.as_dict(), "limits_at_end": at_end.as_dict(), "load_average_end": load_after,
              "rows": rows, "command": " ".join(sys.argv)}  # fmt: skip
    (out / f"{device.type}-{stamp}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / f"{device.type}-{stamp}.md").write_text(tables + "\n")


if __name__ == "__main__":
    main()
