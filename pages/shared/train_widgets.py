"""Train page glue: the start form, a live job panel (progress, loss curve, cancel) and run summaries.

Jobs run as background CLI processes (analysis.training.jobs); nothing here trains or imports torch. A run
starts only from the form's button, never as a side effect of a rerun.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from analysis.training import jobs
from analysis.training.records import RunRecord

METHODS = {
    "lora": "LoRA, fixed rank (train high for PARA)",
    "alora": "ALoRA (Allocating LoRA: AB-LoRA ablation scores, prune and reallocate)",
    "lr_lora": "LR-LoRA (learnable rank per module; our reading of the paper)",
    "adalora": "AdaLoRA (peft; gradient-sensitivity budget)",
}
TASKS = {"bbc-topic": "BBC headlines → 5 topics", "tweet-sentiment": "tweets → 3 sentiments"}
KEY_STARTED = "train_started"
KEY_FLASH = "train_flash"
FEW_POINTS = 30


def loss_figure(points: list[tuple[int, float]], title: str = "Training loss") -> go.Figure:
    """A loss-vs-step line chart; a short run's few points get markers (one point draws no line)."""
    mode = "lines+markers" if len(points) <= FEW_POINTS else "lines"
    fig = go.Figure(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], mode=mode, name="loss"))
    fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title=title)
    fig.update_xaxes(title="step")
    return fig


def start_form(runs_dir: Path) -> None:
    """The form that launches one background run (only when its button is pressed)."""
    with st.form("start_run"):
        cols = st.columns(2)
        method = cols[0].selectbox("Method", list(METHODS), format_func=METHODS.get)
        task = cols[1].selectbox("Task", list(TASKS), format_func=lambda t: f"{t}: {TASKS[t]}")
        cols = st.columns(3)
        budget = cols[0].number_input(
            "Rank (lora) / budget as uniform rank (adaptive)",
            min_value=1,
            max_value=64,
            value=8,
            help="Adaptive methods end with the parameter count of uniform LoRA at this rank, spread unevenly.",
        )
        epochs = cols[1].number_input("Epochs", min_value=0.1, max_value=20.0, value=1.0, step=0.5)
        name = cols[2].text_input("Run name", placeholder="default: METHOD-TASK-rN", key="train_run_name")
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return
    name = name.strip() or f"{method}-{task}-r{int(budget)}"
    try:
        command = jobs.train_command(
            name, method=method, task=task, budget_rank=int(budget), epochs=float(epochs), runs_dir=runs_dir
        )
        jobs.launch(name, command, runs_dir)
    except (ValueError, OSError) as err:
        st.error(str(err))
        return
    st.session_state[KEY_FLASH] = f"Started {name}: `python {' '.join(command[1:])}`"


def job_panel(runs_dir: Path, p: jobs.JobProgress) -> None:
    """Live state of one launched job (`jobs.progress`): progress bar, loss curve, cancel button, log tail."""
    name = p.name
    st.markdown(f"**{name}** · {p.state}")
    if p.state == "running":
        fraction = p.step / p.total if p.total else 0.0
        st.progress(min(fraction, 1.0), text=f"step {p.step} of {p.total or '?'}")
        if st.button("Cancel", key=f"cancel-{name}"):
            jobs.cancel(runs_dir, name)
            st.rerun()
    elif p.state == "failed":
        st.error(f"{name} failed or was cancelled; its log is in {runs_dir / (name + '.failed')}/log.txt")
    elif p.state == "cancelled":
        st.info(f"{name} was cancelled.")
    elif p.state == "gone":
        st.error(f"{name}: the process ended without writing a run record")
    if p.losses:
        st.plotly_chart(loss_figure(list(p.losses)), width="stretch", key=f"loss-{name}")
    if p.log_tail and p.state not in ("finished", "cancelled"):
        st.code(p.log_tail, language=None)


def run_summary(run: RunRecord) -> None:
    """One finished or failed run record: metrics and loss curve."""
    with st.expander(f"{run.name} · {run.status}", expanded=False):
        if run.status != "finished" or not run.metrics:
            st.error(f"Status: {run.status}; see {run.path}/log.txt") if run.status == "failed" else st.write(
                f"Status: {run.status}"
            )
            return
        m = run.metrics
        cols = st.columns(5)
        cols[0].metric("Method", m.get("method", "?"))
        if run.is_causal_lm:  # a language-model run: held-out perplexity, lower is better
            held_out = m.get("held_out", {})
            before, after = held_out.get("perplexity_before", float("nan")), held_out.get("perplexity", float("nan"))
            cols[1].metric("Held-out perplexity", f"{after:.2f}", f"{after - before:+.2f}", delta_color="inverse")
            cols[2].metric("Before fine-tuning", f"{before:.2f}")
        else:
            cols[1].metric("Test accuracy", f"{m['test']['accuracy']:.2%}")
            cols[2].metric(
                "Majority baseline", f"{m.get('baselines', {}).get('majority_test_accuracy', float('nan')):.2%}"
            )
        cols[3].metric("LoRA params", f"{m['n_lora_params']:,}")
        cols[4].metric("Wall time", f"{m['wall_time_s']:.0f} s")
        curve = m.get("loss_curve") or []
        if curve:
            st.plotly_chart(loss_figure(list(enumerate(curve, 1))), width="stretch", key=f"curve-{run.path}")
