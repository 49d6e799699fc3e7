"""End to end in a real browser: `streamlit run` on loopback, driven by Playwright in Debian's Chromium."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not become healthy within 60 s")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def wait_idle(page) -> None:
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    page.wait_for_timeout(300)


def metric_value(page, label: str) -> str:
    box = page.locator("[data-testid='stMetric']", has_text=label).first
    return box.locator("[data-testid='stMetricValue']").inner_text()


def settled_metric(page, label: str, *, changed_from: str | None = None) -> str:
    """The metric once the app is idle and it held still for a second (a slider's reruns can queue up on a
    loaded machine); with `changed_from`, also wait (up to ~60 s) for it to differ from that value."""
    last = None
    for _ in range(60):
        wait_idle(page)
        value = metric_value(page, label)
        if value == last and value != changed_from:
            return value
        last = value
        page.wait_for_timeout(1000)
    return last


def test_browser_navigates_moves_the_slider_and_downloads(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server)
    wait_idle(page)
    assert "LoRA Rank Lab" in page.locator("h1").first.inner_text()
    assert metric_value(page, "Modules") == "36"
    for label, heading in [("Spectra", "Spectra"), ("Compare", "Compare allocations"), ("Train", "Training runs")]:
        page.locator("[data-testid='stSidebarNav'] a", has_text=label).first.click()
        wait_idle(page)
        assert heading in page.locator("h1").first.inner_text()
    page.locator("[data-testid='stSidebarNav'] a", has_text="PARA").first.click()
    wait_idle(page)
    before = metric_value(page, "Params saved")
    thumb = page.locator("[data-testid='stSlider'] input[type='range']").first
    thumb.focus()
    for _ in range(50):
        thumb.press("ArrowRight")  # +5 percentage points of energy kept
    after = settled_metric(page, "Params saved", changed_from=before)
    assert float(after.rstrip("%")) < float(before.rstrip("%"))
    with page.expect_download(timeout=60_000) as info:  # the zip is built on click (deferred download)
        page.locator("[data-testid='stDownloadButton'] button").first.click()
    data = Path(info.value.path()).read_bytes()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(names)
    page.close()


def choose_sample(page, name: str) -> None:
    """Pick a bundled sample in the home page's select box (typing filters its options)."""
    page.locator("[data-testid='stSelectbox'] input").first.click()
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    wait_idle(page)


def test_browser_sessions_are_independent(server, browser):
    """Four live sessions on one server, each with its own adapter; moving one slider changes one session."""
    samples = sorted(p.name for p in (ROOT / "sample_adapters").iterdir() if (p / "adapter").is_dir())[:4]
    assert len(samples) == 4, samples
    pages = [browser.new_context().new_page() for _ in samples]
    for page in pages:
        page.goto(server)
    for page, name in zip(pages, samples, strict=True):
        wait_idle(page)
        choose_sample(page, name)
    for page in pages:
        page.locator("[data-testid='stSidebarNav'] a", has_text="PARA").first.click()
    for page in pages:
        wait_idle(page)

    def state(page) -> tuple[str, str, str]:
        caption = page.locator("[data-testid='stCaptionContainer']").first.inner_text()
        return caption, metric_value(page, "LoRA params"), metric_value(page, "Params saved")

    before = [state(page) for page in pages]
    for (caption, _, _), name in zip(before, samples, strict=True):
        assert f"sample_adapters/{name}/adapter" in caption, (name, caption)
    assert len({params for _, params, _ in before}) == 4  # four different adapters, four different cuts

    def slider(page):
        thumb = page.locator("[data-testid='stSlider'] input[type='range']").first
        thumb.focus()
        return thumb

    thumb = slider(pages[0])
    for _ in range(30):
        thumb.press("ArrowLeft")  # -3 percentage points of energy kept, in session 0 only
    settled_metric(pages[0], "Params saved", changed_from=before[0][2])
    for page in pages[1:]:  # every other session reruns twice (+0.1 point, then back) after session 0 moved
        thumb = slider(page)
        for key in ("ArrowRight", "ArrowLeft"):
            thumb.press(key)
            wait_idle(page)
    after = [state(page) for page in pages]
    assert after[0][0] == before[0][0] and after[0][2] != before[0][2]
    assert after[1:] == before[1:]
