"""Time one PARA slider move end to end inside the app's server (AppTest rerun) and the allocation alone.

`python bench/app_slider.py` measures the largest bundled sample and a synthetic Llama-2-7B all-linear r=64
adapter (generated into bench/out/, not committed). Spectra are cached by fingerprint, so a slider move
re-runs the PARA page and one `allocate_ranks`, never the spectra. Prints a markdown table and writes JSON
to bench/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from analysis.adapters import load_adapter  # noqa: E402
from analysis.para import allocate_ranks, para_index  # noqa: E402
from analysis.spectra import adapter_spectra  # noqa: E402
from bench.machine import machine_info  # noqa: E402
from bench.run import adapter_folder  # noqa: E402


def largest_sample() -> Path:
    folders = [p.parent for p in (ROOT / "sample_adapters").rglob("adapter_model.safetensors")]
    return max(folders, key=lambda p: (p / "adapter_model.safetensors").stat().st_size)


def params_saved(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "Params saved")


def time_slider(folder: Path, moves: int) -> dict[str, float]:
    """Median ms of a PARA page rerun after a slider move (energy unit), and of one allocation alone."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    at.radio[0].set_value("Folder on the server").run()
    at.text_input[0].input(str(folder))  # a form: the value goes with the Load click
    at.button[0].click().run()
    at.switch_page("pages/2_PARA.py").run()
    at.slider[0].set_value(80.0).run()  # warm-up: the first render builds the cached index and sweep
    before = params_saved(at)
    times = []
    for i in range(moves):
        value = 85.0 + 10.0 * i / moves
        start = time.perf_counter()
        at.slider[0].set_value(value).run()
        times.append(time.perf_counter() - start)
    if at.exception:
        raise RuntimeError(f"the PARA page raised: {at.exception}")
    if params_saved(at) == before:
        raise RuntimeError("the slider moves did not change 'Params saved'; the bench is not moving the cut")
    index = para_index(adapter_spectra(load_adapter(folder)))
    alloc = []
    for i in range(200):
        start = time.perf_counter()
        allocate_ranks(index, 0.5 + i / 500)
        alloc.append(time.perf_counter() - start)
    return {
        "rerun_ms": statistics.median(times) * 1e3,
        "rerun_max_ms": max(times) * 1e3,
        "allocation_ms": statistics.median(alloc) * 1e3,
        "modules": len(index.spectra.spectra),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--moves", type=int, default=20, help="slider moves timed per adapter (median)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # AppTest's bare-mode warnings
    llama = adapter_folder("llama2-7b:64", Path(args.work))  # generated on first use
    machine = machine_info(torch.device("cpu"))
    rows = []
    for folder in (largest_sample(), llama):
        name = folder.parent.name if folder.name == "adapter" else folder.name
        rows.append({"adapter": name} | time_slider(folder, args.moves))
    lines = [
        "| adapter | modules | PARA page rerun after a slider move, median ms (max) | one allocation alone, ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| `{r['adapter']}` | {r['modules']} | {r['rerun_ms']:.0f} ({r['rerun_max_ms']:.0f}) "
                     f"| {r['allocation_ms']:.3f} |")  # fmt: skip
    lines.append(f"\nMachine: {machine.line()}; {args.moves} moves per adapter.")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": dataclasses.asdict(machine), "rows": rows, "load_average_end": os.getloadavg()}
    (out / f"slider-{time.strftime('%Y-%m-%d-%H%M')}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
