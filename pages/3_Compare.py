"""Compare: PARA's post-hoc allocation against ranks learned during training (ALoRA, LR-LoRA, AdaLoRA)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.training.records import list_runs
from pages.shared.widgets import SAMPLES_DIR

st.set_page_config(page_title="Compare · LoRA Rank Lab", layout="wide")
st.title("Compare allocations")
st.markdown(
    "The methods mean different things by *rank*: **PARA** keeps the largest singular values of the trained "
    "update (weight magnitude, data-free, after training); **ALoRA** prunes ranks whose ablation hurts the loss "
    "least (loss ablation, during training); **LR-LoRA** learns a continuous rank per module (learned gate); "
    "**AdaLoRA** prunes by gradient sensitivity (importance scores). Comparisons are at matched parameter budget."
)

runs = [r for r in list_runs(SAMPLES_DIR) if r.status == "finished"]
table = pd.DataFrame(
    [
        {
            "run": r.name,
            "method": r.metrics.get("method"),
            "task": r.metrics.get("task"),
            "LoRA params": r.metrics.get("n_lora_params"),
            "test accuracy": r.metrics.get("test", {}).get("accuracy"),
            "wall time (s)": round(r.metrics.get("wall_time_s", 0.0)),
        }
        for r in runs
    ]
)
st.subheader("Bundled training runs")
if table.empty:
    st.info("No finished training runs in sample_adapters/ yet.")
else:
    st.dataframe(table, hide_index=True, width="stretch")
missing = sorted({"alora", "lr_lora", "adalora"} - set(table.get("method", [])))
if missing:
    st.warning(
        f"Not available yet: bundled runs of {', '.join(missing)}. The side-by-side rank maps, correlations and "
        "accuracy-vs-budget curves appear here once adaptive runs are trained (see the Train page)."
    )
