"""Train: start a background training run, watch its progress and loss, cancel it, browse finished runs."""

from __future__ import annotations

import streamlit as st

from analysis.training import jobs
from analysis.training.records import list_runs, read_run
from pages.shared import train_widgets as tw
from pages.shared.widgets import SAMPLES_DIR, keep_settings, runs_dir

RUNS_DIR = runs_dir()
REFRESH_S = 2.0

st.set_page_config(page_title="Train · LoRA Rank Lab", layout="wide")
keep_settings()
st.title("Training runs")
st.markdown(
    "Runs fine-tune all-MiniLM-L6-v2 (offline, CPU by default) on a real task and write a run record: the PEFT "
    "adapter, `metrics.json`, `allocation.json`, `splits.json` and a log. A run started here is the CLI "
    f"`python -m analysis.training train ...` in a background process, saved under `{RUNS_DIR}`; it keeps going if "
    "you leave the page. On 2 CPU cores one epoch of `bbc-topic` takes about 15 s to a minute (ALoRA's "
    "scoring rounds add minutes); `tweet-sentiment` is about 8x larger."
)

with st.expander("Start a run", expanded=False):
    tw.start_form(RUNS_DIR)
if flash := st.session_state.pop(tw.KEY_FLASH, None):
    st.success(flash)

launched = jobs.jobs(RUNS_DIR)
running = [name for name in launched if jobs.is_running(RUNS_DIR, name)]


@st.fragment(run_every=REFRESH_S if running else None)
def live_jobs() -> None:
    names = jobs.jobs(RUNS_DIR)
    if running and not any(jobs.is_running(RUNS_DIR, name) for name in running):
        st.rerun()  # the last live run ended: redraw the page once, which also stops the refresh
    if not names:
        return
    st.subheader("Runs started from the app")
    for name in names:
        progress = jobs.progress(RUNS_DIR, name)
        if progress.state == "finished":
            tw.run_summary(read_run(RUNS_DIR / name), RUNS_DIR)
            continue
        with st.container(border=True):
            tw.job_panel(RUNS_DIR, progress)


live_jobs()

# Each run is listed once: one started from the app is shown above, with its record or its live state.
from_app = {record for name in launched for record in (name, f"{name}.failed")}
for title, folder in (("Bundled runs (sample_adapters/)", SAMPLES_DIR), (f"Your runs ({RUNS_DIR.name}/)", RUNS_DIR)):
    records = [r for r in list_runs(folder) if folder != RUNS_DIR or r.name not in from_app]
    st.subheader(title)
    if not records:
        st.info(f"No {'other ' if folder == RUNS_DIR and launched else ''}run records in {folder.name}/ yet.")
    for run in records:
        tw.run_summary(run, RUNS_DIR if folder == RUNS_DIR else None)
