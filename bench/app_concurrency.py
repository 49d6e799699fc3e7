"""Eight browser sessions on one `streamlit run`: each loads its own adapter and moves the PARA slider 10 times.

`python bench/app_concurrency.py` starts the app on loopback, opens 8 Playwright contexts in Debian's Chromium
(/usr/bin/chromium through executable_path), and in all of them at once loads a different adapter (the bundled
samples, and a synthetic Llama-3-8B r=16 adapter written to bench/out/), goes to PARA and presses the cut
slider's right arrow 10 times, found by its accessible role and name. A step is timed from the key press to
the end of the last app run it caused (the app then quiet for QUIET_MS), so sessions that finish loading
first move their sliders while the others still load. Each session checks that its page shows its own
adapter before and after. Then the sessions close, and one session loads more distinct adapters than the
adapter cache holds; the server's RSS is read after each phase. Prints a markdown table; JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from playwright.async_api import TimeoutError as PlaywrightTimeout  # noqa: E402

from bench.machine import machine_info  # noqa: E402
from bench.make_adapter import make_adapter  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip
SLIDER_NAME = re.compile(r"energy kept", re.IGNORECASE)  # the PARA cut slider's label in its default unit
FOLDER_SOURCE = "Folder on the server"  # Home's source radio
QUIET_MS = 600  # a step ends when the app has started no run for this long
STATE = "document.querySelector(\"[data-testid='stApp']\")?.getAttribute('data-test-script-state')"
# Every change of the script state, with its time: a MutationObserver sees runs too short for polling.
WATCH = f"""() => {{
    if (window.__runs) return;
    window.__runs = [];
    new MutationObserver(() => window.__runs.push([{STATE}, performance.now()]))
        .observe(document.body, {{attributes: true, subtree: true, attributeFilter: ["data-test-script-state"]}});
}}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of the server process and its children (MB)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())[1])
        except (OSError, TypeError):
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [k for kid in kids for k in _children(kid)]


def start_server(port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"streamlit did not become healthy in 90 s; see {log}")


def adapters(out: Path, n_extra: int) -> tuple[list[Path], list[Path]]:
    """Eight different adapters for the sessions, and `n_extra` more (small synthetic ones) for the cache phase."""
    samples = sorted(p / "adapter" for p in (ROOT / "sample_adapters").iterdir() if (p / "adapter").is_dir())
    big = out / "llama3-8b-r16"
    if not (big / "adapter_model.safetensors").is_file():
        make_adapter("llama3-8b", 16, big)
    sessions = [*samples[:7], big]
    extra = []
    for seed in range(n_extra):
        folder = out / f"minilm-r8-seed{seed}"
        if not (folder / "adapter_model.safetensors").is_file():
            make_adapter("minilm", 8, folder, seed=100 + seed)
        extra.append(folder)
    return sessions, extra


async def wait_idle(page, timeout_ms: int = 300_000) -> None:
    await page.wait_for_function(f"() => {STATE} === 'notRunning'", polling=100, timeout=timeout_ms)


async def wait_quiet(page, since: float, timeout_s: float = 300) -> float:
    """Wait until the app has started no run for QUIET_MS after `since` (page time, ms); return when the last
    run it saw after `since` ended (page time), or `since` if none ran."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs, now = await page.evaluate("() => [window.__runs, performance.now()]")
        later = [(state, t) for state, t in runs if t >= since]
        starts = [t for state, t in later if state != "notRunning"]
        state_now = later[-1][0] if later else "notRunning"
        last_change = later[-1][1] if later else since
        if state_now == "notRunning" and now - last_change > QUIET_MS and (starts or now - since > 5_000):
            return last_change
        await asyncio.sleep(0.05)
    raise TimeoutError("the app did not become quiet")


async def load_folder(page, folder: Path, tries: int = 3) -> bool:
    """Home: the folder source, the path, Load; wait until Home names the folder as the loaded source (a click
    that lands while a run redraws the form is lost: then again, up to `tries` times). True if it loaded."""
    for _ in range(tries):
        await page.get_by_role("radiogroup", name="Adapter source").get_by_text(FOLDER_SOURCE, exact=True).click()
        await wait_idle(page)
        await page.get_by_role("textbox").first.fill(str(folder))
        await page.get_by_role("button", name=re.compile(r"^Load", re.IGNORECASE)).first.click()
        try:
            await page.get_by_text(f"Loaded {folder}", exact=False).first.wait_for(timeout=240_000)
            await wait_idle(page)
            return True
        except PlaywrightTimeout:
            continue
    return False


async def caption(page) -> str:
    """The page's adapter banner ("Adapter: <source> · <format> · <n> modules")."""
    return await page.locator("[data-testid='stCaptionContainer']", has_text="Adapter:").first.inner_text()


async def session(browser, url: str, folder: Path, presses: int, log: list[str]) -> dict:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(300_000)  # 8 sessions starting at once on a shared 2-core machine
    page = await context.new_page()
    started = time.perf_counter()
    await page.goto(url, wait_until="domcontentloaded")
    await wait_idle(page)
    await page.evaluate(WATCH)
    is_loaded = await load_folder(page, folder)
    await page.locator("[data-testid='stSidebarNav'] a", has_text="PARA").first.click()
    await page.wait_for_timeout(300)
    await wait_idle(page)
    loaded_s = time.perf_counter() - started
    await page.evaluate(WATCH)
    before = await caption(page)
    own = str(folder) in before
    slider = page.get_by_role("slider", name=SLIDER_NAME).first
    await slider.focus()
    steps = []
    no_run = 0
    for _ in range(presses):
        await slider.focus()  # a rerun may have drawn the slider anew
        pressed = await page.evaluate("() => performance.now()")
        await slider.press("ArrowRight")
        ended = await wait_quiet(page, pressed)
        if ended == pressed:  # no run seen within 5 s: the press moved nothing (not a step)
            no_run += 1
            continue
        steps.append((ended - pressed) / 1000)
    after = await caption(page)
    own = is_loaded and own and str(folder) in after
    log.append(f"{folder.name}: loaded in {loaded_s:.1f} s, steps {', '.join(f'{s:.2f}' for s in steps)}")
    await context.close()
    return {"adapter": str(folder.relative_to(ROOT)), "loaded_s": loaded_s, "steps_s": steps, "banner": after,
            "presses_without_run": no_run, "median_s": statistics.median(steps) if steps else None,
            "worst_s": max(steps, default=None), "saw_own_adapter": own}  # fmt: skip


async def run(url: str, sessions: list[Path], extra: list[Path], presses: int, server_pid: int) -> dict:
    from playwright.async_api import async_playwright

    log: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        rss_start = rss_mb(server_pid)
        alone = await session(browser, url, sessions[0], presses, log)  # the baseline: one session, nothing else
        results = await asyncio.gather(*(session(browser, url, f, presses, log) for f in sessions))
        rss_during = rss_mb(server_pid)
        await asyncio.sleep(5)
        rss_closed = rss_mb(server_pid)
        context = await browser.new_context()
        context.set_default_timeout(300_000)
        page = await context.new_page()
        await page.goto(url, wait_until="domcontentloaded")
        await wait_idle(page)
        for folder in extra:  # more distinct adapters than the adapter cache holds
            await load_folder(page, folder)
        rss_cache_full = rss_mb(server_pid)
        await context.close()
        await browser.close()
    rss = {"start": rss_start, "after_sessions": rss_during, "sessions_closed": rss_closed}
    rss["caches_full"] = rss_cache_full
    return {"alone": alone, "sessions": results, "log": log, "rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=10)
    parser.add_argument("--extra", type=int, default=24, help="adapters loaded after the sessions (cache phase)")
    args = parser.parse_args()
    out = ROOT / "bench" / "out"
    sessions, extra = adapters(out, args.extra)
    port = free_port()
    log = out / "app_concurrency.log"
    server = start_server(port, log)
    try:
        result = asyncio.run(run(f"http://127.0.0.1:{port}", sessions, extra, args.presses, server.pid))
    finally:
        server.terminate()
        server.wait(20)
    steps = [s for r in result["sessions"] for s in r["steps_s"]]
    machine = dataclasses.asdict(machine_info(torch.device("cpu")))
    result |= {"machine": machine, "presses": args.presses, "quiet_ms": QUIET_MS, "load_average": os.getloadavg(),
               "median_step_s": statistics.median(steps), "worst_step_s": max(steps)}  # fmt: skip
    print("| session adapter | loaded (s) | median step (s) | worst step (s) | saw its own adapter |")
    print("| --- | ---: | ---: | ---: | --- |")
    for r in result["sessions"]:
        path = Path(r["adapter"])
        name = path.parent.name if path.name == "adapter" else path.name
        print(f"| {name} | {r['loaded_s']:.1f} | {r['median_s'] or 0:.2f} | {r['worst_s'] or 0:.2f} | "
              f"{r['saw_own_adapter']} |")  # fmt: skip
    alone = result["alone"]
    print(
        f"\nall steps: median {result['median_step_s']:.2f} s, worst {result['worst_step_s']:.2f} s; one session "
        f"alone (same run, the first adapter): median {alone['median_s']:.2f} s, worst {alone['worst_s']:.2f} s"
    )
    print(f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in result['load_average'])}")
    print("server RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in result["rss_mb"].items()))
    target = ROOT / "bench" / "results" / "app_concurrency.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
