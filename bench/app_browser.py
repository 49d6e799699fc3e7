"""Time the PARA slider in a real browser: `streamlit run` on loopback, Playwright driving Debian's Chromium.

`python bench/app_browser.py` opens the PARA page at 1280x800 on the bundled sample
`minilm-bbc-topic-lora-r32` and on a synthetic Llama-2-7B all-linear r=64 adapter (224 modules, generated into
bench/out/ on first use, not committed). Per adapter it times `--presses` ArrowLeft presses on the focused
slider (energy kept, -0.1 point each): from the key's keydown event to the last change of the page (a
MutationObserver over the whole document), once the app's script is idle, "LoRA params" shows another value
and nothing has changed for `--quiet-ms`. Then one continuous drag of the thumb (`--drag-steps` mouse moves,
one per animation frame or so): how many reruns ran while it moved and how long after the release the page
settled, and whether it settled on the cut the thumb shows. The floor: the same presses on bench/floor_app.py
(a slider and one metric), in the same run. The same run's AppTest figure (bench/app_slider.py:
the page's script alone, no browser) is printed beside it. Markdown to stdout, JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}
SAMPLE = "minilm-bbc-topic-lora-r32"
SLIDER = "[data-testid='stSlider'] input[type='range']"  # react-aria's visually hidden input: focus, value
APP = "[data-testid='stApp']"

# Installed once per page: the time of the last DOM change, of the last keydown, and every script-state change.
WATCH = f"""() => {{
    if (window.__watch) return;
    window.__watch = true;
    window.__lastChange = performance.now();
    window.__keyAt = null;
    window.__runs = [];
    const app = () => document.querySelector("{APP}");
    let state = app() && app().getAttribute("data-test-script-state");
    new MutationObserver(() => {{
        window.__lastChange = performance.now();
        const now = app() && app().getAttribute("data-test-script-state");
        if (now !== state) {{ window.__runs.push([performance.now(), now]); state = now; }}
    }}).observe(document.documentElement, {{subtree: true, childList: true, attributes: true, characterData: true}});
    document.addEventListener("keydown", () => {{ window.__keyAt = performance.now(); }}, true);
}}"""
STATE = f"document.querySelector(\"{APP}\").getAttribute('data-test-script-state')"
METRIC = """label => {
    const box = [...document.querySelectorAll("[data-testid='stMetric']")].find(m => m.innerText.startsWith(label));
    return box ? box.querySelector("[data-testid='stMetricValue']").innerText : null;
}"""
SETTLED = f"""([label, before, quiet]) => {{
    const box = [...document.querySelectorAll("[data-testid='stMetric']")].find(m => m.innerText.startsWith(label));
    const value = box ? box.querySelector("[data-testid='stMetricValue']").innerText : null;
    return {STATE} === "notRunning" && value !== before && performance.now() - window.__lastChange > quiet;
}}"""
QUIET = f"""quiet => {STATE} === "notRunning" && performance.now() - window.__lastChange > quiet"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(log: Path, script: str = "app.py"):
    """`streamlit run <script>` on a free loopback port; yields its URL once healthy."""
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"streamlit did not start; see {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_quiet(page, quiet_ms: int, timeout_ms: int = 180_000) -> None:
    page.evaluate(WATCH)
    page.wait_for_function(QUIET, arg=quiet_ms, polling=50, timeout=timeout_ms)


def open_para(page, url: str, folder: Path | None, quiet_ms: int) -> None:
    """Home -> (load `folder` through the folder box) -> PARA, each step waited out."""
    page.goto(url)
    page.wait_for_selector(f"{APP}[data-test-script-state='notRunning']", timeout=180_000)
    wait_quiet(page, quiet_ms)
    if folder is not None:
        page.get_by_text("Folder on the server", exact=True).click()
        wait_quiet(page, quiet_ms)
        page.get_by_role("textbox", name="Path to a PEFT folder, a kohya .safetensors or a .zip").fill(str(folder))
        page.get_by_role("button", name="Load").click()
        page.wait_for_function("() => document.body.innerText.includes('Loaded')", timeout=180_000)
        wait_quiet(page, quiet_ms)
    page.locator("[data-testid='stSidebarNav'] a", has_text="PARA").first.click()
    page.wait_for_selector(SLIDER, state="attached", timeout=180_000)
    wait_quiet(page, quiet_ms)


def time_presses(page, presses: int, quiet_ms: int) -> list[float]:
    """ms from keydown to the page's last change, per ArrowLeft press on the slider."""
    thumb = page.locator(SLIDER).first
    thumb.focus()
    times = []
    for _ in range(presses):
        before = page.evaluate(METRIC, "LoRA params")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(SETTLED, arg=["LoRA params", before, quiet_ms], polling=20, timeout=60_000)
        times.append(page.evaluate("() => window.__lastChange - window.__keyAt"))
    return times


def time_drag(page, steps: int, quiet_ms: int) -> dict[str, float]:
    """One continuous drag of the thumb to the left: reruns started while moving, settle time after release."""
    thumb = page.locator(SLIDER).first.locator("xpath=../..")  # the thumb holds the hidden input
    box = thumb.bounding_box()
    track = page.locator("[data-testid='stSlider']").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    target = track["x"] + 0.35 * track["width"]
    before = page.evaluate(METRIC, "LoRA params")
    page.evaluate("() => { window.__runs = []; }")
    page.mouse.move(x, y)
    page.mouse.down()
    start = page.evaluate("() => performance.now()")
    for i in range(1, steps + 1):
        page.mouse.move(x + (target - x) * i / steps, y)
        page.wait_for_timeout(16)
    released = page.evaluate("() => performance.now()")
    page.mouse.up()
    page.wait_for_function(SETTLED, arg=["LoRA params", before, quiet_ms], polling=20, timeout=60_000)
    runs = page.evaluate("() => window.__runs")
    settled = page.evaluate("() => window.__lastChange")
    shown = page.locator(SLIDER).first.input_value()
    return {
        "drag_ms": released - start,
        "reruns_while_dragging": sum(1 for t, s in runs if s == "running" and t <= released),
        "reruns_total": sum(1 for _, s in runs if s == "running"),
        "settle_after_release_ms": settled - released,
        "slider_value": float(shown) if shown else float("nan"),
        "energy_kept_shown": page.evaluate(METRIC, "Energy kept"),
    }


def browser_rows(url: str, adapters: dict[str, Path | None], presses: int, drag_steps: int, quiet_ms: int):
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for name, folder in adapters.items():
            page = browser.new_context(viewport=VIEWPORT).new_page()
            foreign: list[str] = []
            page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(url) else None)
            open_para(page, url, folder, quiet_ms)
            time_presses(page, 2, quiet_ms)  # warm-up: the first moves build the cached figures of this page
            times = time_presses(page, presses, quiet_ms)
            drag = time_drag(page, drag_steps, quiet_ms)
            ordered = sorted(times)
            rows.append({
                "adapter": name, "presses": presses, "median_ms": statistics.median(times),
                "p90_ms": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))], "max_ms": max(times),
                "times_ms": times, "drag": drag, "requests_off_loopback": foreign,
            })  # fmt: skip
            page.context.close()
        browser.close()
    return rows


def floor_ms(url: str, presses: int, quiet_ms: int) -> list[float]:
    """The same key presses on bench/floor_app.py (a slider and one metric in a fragment): Streamlit's floor now."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(url)
        page.wait_for_selector(SLIDER, state="attached", timeout=180_000)
        wait_quiet(page, quiet_ms)
        time_presses(page, 2, quiet_ms)
        times = time_presses(page, presses, quiet_ms)
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--presses", type=int, default=12)
    parser.add_argument("--drag-steps", type=int, default=40)
    parser.add_argument("--quiet-ms", type=int, default=400, help="no page change for this long = settled")
    parser.add_argument("--apptest-moves", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    import torch

    from bench.app_slider import time_slider
    from bench.machine import machine_info
    from bench.run import adapter_folder

    llama = adapter_folder("llama2-7b:64", Path(args.work))  # generated on first use
    sample = ROOT / "sample_adapters" / SAMPLE / "adapter"
    load_start = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with streamlit_server(Path(args.work) / "app_browser-server.log") as url:  # bench/out: not committed
        rows = browser_rows(url, {SAMPLE: None, "llama2-7b-r64": llama}, args.presses, args.drag_steps, args.quiet_ms)
    with streamlit_server(Path(args.work) / "app_browser-floor.log", "bench/floor_app.py") as url:
        floor = floor_ms(url, args.presses, args.quiet_ms)
    for row, folder in zip(rows, (sample, llama), strict=True):
        row["apptest"] = time_slider(folder, args.apptest_moves)
        row["floor_median_ms"] = statistics.median(floor)
    machine = machine_info(torch.device("cpu"))
    lines = [
        "| adapter | key press to settled page, median ms | p90 ms | max ms | floor (slider + metric), median ms "
        "| AppTest rerun, median ms | drag: reruns while moving, settled after release ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        d = r["drag"]
        drag = f"{d['reruns_while_dragging']}, {d['settle_after_release_ms']:.0f}"
        floor = f"{r['floor_median_ms']:.0f} ({r['median_ms'] / r['floor_median_ms']:.1f}x)"
        lines.append(f"| `{r['adapter']}` | {r['median_ms']:.0f} | {r['p90_ms']:.0f} | {r['max_ms']:.0f} "
                     f"| {floor} | {r['apptest']['rerun_ms']:.0f} | {drag} |")  # fmt: skip
    load_end = os.getloadavg()
    load = f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end"
    lines.append(f"\nMachine: {machine.line()}; {load}; {args.presses} presses per adapter; settled: idle and "
                 f"unchanged for {args.quiet_ms} ms.")  # fmt: skip
    if any(r["requests_off_loopback"] for r in rows):
        lines.append(f"Requests off loopback: {sorted({u for r in rows for u in r['requests_off_loopback']})}")
    print("\n".join(lines))
    record = {"machine": dataclasses.asdict(machine), "rows": rows, "load_average": [load_start, load_end],
              "args": vars(args)}  # fmt: skip
    (out / f"browser-{time.strftime('%Y-%m-%d-%H%M')}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
