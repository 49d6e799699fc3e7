"""Train: the training runs on disk, their status, metrics and loss curves."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.training.records import list_runs
from pages.shared.widgets import SAMPLES_DIR

st.set_page_config(page_title="Train · LoRA Rank Lab", layout="wide")
st.title("Training runs")
st.markdown(
    "Runs are trained by `python -m analysis.training train --task bbc-topic --rank 32 --out runs/NAME` "
    "(fixed-rank LoRA on all-MiniLM-L6-v2, offline). Each run folder holds the PEFT adapter, "
    "`metrics.json`, `allocation.json`, `splits.json` and a log."
)
st.warning("Starting and cancelling runs from the app, and the adaptive methods, are not available yet.")

for run in list_runs(SAMPLES_DIR):
    with st.expander(f"{run.name} · {run.status}", expanded=False):
        if not run.metrics:
            st.write(f"Status: {run.status}")
            continue
        m = run.metrics
        cols = st.columns(4)
        cols[0].metric("Test accuracy", f"{m['test']['accuracy']:.2%}")
        cols[1].metric("Majority baseline", f"{m['baselines']['majority_test_accuracy']:.2%}")
        cols[2].metric("LoRA params", f"{m['n_lora_params']:,}")
        cols[3].metric("Wall time", f"{m['wall_time_s']:.0f} s")
        curve = go.Figure(go.Scatter(y=m["loss_curve"], mode="lines", name="training loss"))
        curve.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title="Training loss")
        curve.update_xaxes(title="step")
        st.plotly_chart(curve, width="stretch")
