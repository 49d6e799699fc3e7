"""Time one PARA slider move end to end inside the app's server (AppTest rerun) and the allocation alone.

`python bench/app_slider.py` measures the largest bundled sample and a synthetic Llama-2-7B all-linear r=64
adapter (generated into bench/out/, not committed). Spectra are cached by fingerprint, so a slider move
re-runs the PARA page and one `allocate_ranks`, never the spectra.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from analysis.adapters import load_adapter  # noqa: E402
from analysis.para import allocate_ranks, para_index  # noqa: E402
from analysis.spectra import adapter_spectra  # noqa: E402
from bench.make_adapter import make_adapter  # noqa: E402


def largest_sample() -> Path:
    folders = [p.parent for p in (ROOT / "sample_adapters").rglob("adapter_model.safetensors")]
    return max(folders, key=lambda p: (p / "adapter_model.safetensors").stat().st_size)


def time_slider(folder: Path, moves: int = 10) -> tuple[float, float]:
    """Median seconds of a PARA page rerun after a slider move, and of one allocation alone."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    at.radio[0].set_value("Folder on the server").run()
    at.text_input[0].input(str(folder)).run()
    at.button[0].click().run()
    at.switch_page("pages/2_PARA.py").run()
    at.slider[0].set_value(80.0).run()  # warm-up: first render builds the cached index and sweep
    times = []
    for i in range(moves):
        start = time.perf_counter()
        at.slider[0].set_value(85.0 + i).run()
        times.append(time.perf_counter() - start)
    assert not at.exception, at.exception
    index = para_index(adapter_spectra(load_adapter(folder)))
    alloc = []
    for i in range(200):
        start = time.perf_counter()
        allocate_ranks(index, 0.5 + i / 500)
        alloc.append(time.perf_counter() - start)
    return statistics.median(times), statistics.median(alloc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    llama = Path(args.work) / "llama2-7b-r64"
    if not (llama / "adapter_model.safetensors").is_file():
        make_adapter("llama2-7b", 64, llama)
    print("| adapter | modules | PARA page rerun after a slider move (ms) | allocation alone (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for folder in (largest_sample(), llama):
        rerun, alloc = time_slider(folder)
        n = len(load_adapter(folder).modules)
        print(f"| {folder.parent.name if folder.name == 'adapter' else folder.name} | {n} | {rerun * 1e3:.0f} "
              f"| {alloc * 1e3:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
