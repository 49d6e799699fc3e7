"""Peak memory of the user's path in a fresh process: load, spectra, one allocation, export at the 25% budget.

`python -m bench.peak_memory ADAPTER [--device cpu]` prints one JSON line. RSS is read from /proc/self/status:
`baseline_mb` is the resident size after importing torch and the library (a few hundred MB that any torch
program pays, independent of the adapter), `peak_mb` the high-water mark (VmHWM) of the whole process, and
`above_baseline_mb` their difference: what the work itself added. Mapped adapter pages count as resident.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def status_mb(field: str) -> float:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from analysis.adapters import load_adapter
    from analysis.export import compress_adapter, save_adapter
    from analysis.para import allocate_ranks, para_index
    from analysis.spectra import adapter_spectra

    baseline = status_mb("VmRSS")
    adapter = load_adapter(args.adapter)
    after_load = status_mb("VmRSS")
    spectra = adapter_spectra(adapter, device=args.device)
    allocation = allocate_ranks(para_index(spectra), 0.25, "params_fraction")
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(compress_adapter(adapter, allocation), Path(tmp) / "out")
    peak = status_mb("VmHWM")
    result = {
        "baseline_mb": baseline,
        "after_load_mb": after_load,
        "peak_mb": peak,
        "above_baseline_mb": peak - baseline,
        "file_mb": adapter.file_size / 1e6,
    }
    if args.device == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 1e6
    print(json.dumps(result))


if __name__ == "__main__":
    main()
