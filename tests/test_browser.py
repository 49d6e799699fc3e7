"""End to end in a real browser: `streamlit run` on loopback, driven by Playwright in Debian's Chromium."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

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
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("streamlit") / "server.log"


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def server(server_log):
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with server_log.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
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
            pytest.fail(f"streamlit did not become healthy within 60 s; its log:\n{log_tail(server_log)}")
        yield url
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a busy machine: it was asked to stop
            proc.kill()
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


# Records when the app's script last ran: a MutationObserver sees every change of the script-state attribute,
# even a run too short for polling to catch.
STATE = "document.querySelector(\"[data-testid='stApp']\").getAttribute('data-test-script-state')"
WATCH_RUNS = f"""() => {{
    window.__lastRun = performance.now();
    if (window.__runObserver) return;
    window.__runObserver = new MutationObserver(() => {{
        if ({STATE} !== "notRunning") window.__lastRun = performance.now();
    }});
    const watched = {{attributes: true, subtree: true, attributeFilter: ["data-test-script-state"]}};
    window.__runObserver.observe(document.body, watched);
}}"""
QUIET_FOR = f"""ms => {STATE} === "notRunning" && performance.now() - window.__lastRun > ms"""


def wait_quiet(page, quiet_ms: int = 2000) -> None:
    """Wait until no script run has started for `quiet_ms` (up to 90 s).

    A slider moved by keys commits its value more than once, so reruns arrive spaced out, and the app is idle
    between them: a metric read or a click in such a gap meets a page that the next run is about to redraw.
    """
    page.evaluate(WATCH_RUNS)
    page.wait_for_function(QUIET_FOR, arg=quiet_ms, polling=100, timeout=90_000)


def metric_value(page, label: str) -> str:
    box = page.locator("[data-testid='stMetric']", has_text=label).first
    return box.locator("[data-testid='stMetricValue']").inner_text()


def settled_metric(page, label: str, *, changed_from: str | None = None) -> str:
    """The metric once the app is quiet (`wait_quiet`); with `changed_from`, also wait (up to ~60 s) for it to
    differ from that value."""
    for _ in range(30):
        wait_quiet(page)
        value = metric_value(page, label)
        if value != changed_from:
            return value
        page.wait_for_timeout(1000)
    return value


def test_browser_navigates_moves_the_slider_and_downloads(server, server_log, browser):
    page = browser.new_page()
    page.goto(server)
    wait_idle(page)
    assert "LoRA Rank Lab" in page.locator("h1").first.inner_text()
    assert metric_value(page, "Modules") == "36"
    links = page.locator("[data-testid='stSidebarNav'] a")
    assert [links.nth(i).inner_text().split("\n")[-1] for i in range(links.count())] == [
        "Home", "Spectra", "PARA", "Compare", "Side by side", "Train"
    ]  # fmt: skip
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
    page.get_by_role("button", name="Build the compressed adapter (.zip)").click()
    wait_quiet(page)
    try:
        with page.expect_download(timeout=60_000) as info:
            page.locator("[data-testid='stDownloadButton'] button").first.click()
    except PlaywrightTimeout:
        pytest.fail(f"no download 60 s after the click; server log:\n{log_tail(server_log)}")
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
            wait_quiet(page)  # idle alone can be read before the press's rerun starts on a busy machine
    after = [state(page) for page in pages]
    assert after[0][0] == before[0][0] and after[0][2] != before[0][2]
    assert after[1:] == before[1:]


def no_exception(page, where: str) -> None:
    """Fail with the exception's text if the page shows one (a traceback element)."""
    wait_quiet(page, 500)
    shown = page.locator("[data-testid='stException']")
    if shown.count():
        pytest.fail(f"{where}: the page shows an exception:\n{shown.first.inner_text()[:2000]}")


def go_to(page, label: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a", has_text=label).first.click()
    no_exception(page, label)


def pick_option(page, select_label: str, option: str) -> None:
    page.get_by_role("combobox", name=select_label).click()
    page.get_by_role("option", name=option, exact=True).click()


def click_every_tab(page, where: str) -> None:
    tabs = page.get_by_role("tab")
    for i in range(tabs.count()):
        tabs.nth(i).click()
        no_exception(page, f"{where}, tab {i}")


def test_browser_every_page_and_widget_state_shows_no_exception_and_stays_on_loopback(server, browser):
    """Every page, then the states a user reaches by clearing, switching and re-picking; every request of the
    page (documents, scripts, fonts, icons, websocket) goes to the loopback server."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda ws: requests.append(ws.url))
    page.goto(server)
    no_exception(page, "Home")
    page.get_by_role("button", name="Clear value").first.click()  # the Sample select's x
    no_exception(page, "Home, sample cleared")
    assert metric_value(page, "Modules") == "36"  # the adapter stays
    pick_option(page, "Sample", "minilm-bbc-topic-lora-r32")
    no_exception(page, "Home, sample re-picked")
    from pages.shared.sources import SOURCES  # every source on Home's radio, back to the first

    for source in [*list(SOURCES)[1:], next(iter(SOURCES))]:
        page.locator("[data-testid='stRadio'] label", has_text=source).first.click()
        no_exception(page, f"Home, source {source}")
    links = page.locator("[data-testid='stSidebarNav'] a")
    titles = [links.nth(i).inner_text().split("\n")[-1] for i in range(links.count())]
    for label in [t for t in titles if t not in ("Home", "PARA")]:  # every other page
        go_to(page, label)
        click_every_tab(page, label)
    go_to(page, "PARA")
    for unit in ("Threshold τ (log scale)", "Energy kept (%)"):  # the other units: tests/test_app.py
        pick_option(page, "Cut unit", unit)
        no_exception(page, f"PARA, unit {unit}")
    for rank in ("1", "0"):
        page.locator("[data-testid='stRadio']", has_text="Minimum rank").locator("label", has_text=rank).click()
        no_exception(page, f"PARA, min rank {rank}")
    page.get_by_role("button", name="Apply the knee").click()
    no_exception(page, "PARA, knee applied")
    page.get_by_text("List the modules whose rank changed").click()
    no_exception(page, "PARA, changed modules listed")
    assert page.locator("[data-testid='stDataFrame']").count() == 1
    go_to(page, "Home")
    page.get_by_role("button", name="Clear value").first.click()
    no_exception(page, "Home, sample cleared again")
    go_to(page, "PARA")
    page.close()
    host = urllib.parse.urlsplit(server).netloc
    off = [u for u in requests if urllib.parse.urlsplit(u).netloc != host and not u.startswith(("data:", "blob:"))]
    assert not off, f"requests off the loopback server: {sorted(set(off))}"
