"""Train page glue: the start form, a live job panel (phase, progress, loss curve, cancel, delete) and run
summaries (with "Open in PARA" for a finished run).

Jobs run as background CLI processes (analysis.training.jobs); nothing here trains or imports torch. A run
starts only from the form's button, never as a side effect of a rerun. A delete asks for confirmation first.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from analysis.training import jobs
from analysis.training.records import RunRecord
from pages.shared.state import KEY_LOAD_ERROR
from pages.shared.widgets import load_path, set_adapter

METHODS = {
    "lora": "LoRA, fixed rank (train high for PARA)",
    "alora": "ALoRA (Allocating LoRA: AB-LoRA ablation scores, prune and reallocate)",
    "lr_lora": "LR-LoRA (a learned sinc nonlinearity on B·A per module, arXiv 2606.04325)",
    "adalora": "AdaLoRA (peft; gradient-sensitivity budget)",
    "masked_rank": "masked rank (ours, an ablation: a learned rank mask per module; not from a paper)",
}
TASKS = {"bbc-topic": "BBC headlines → 5 topics", "tweet-sentiment": "tweets → 3 sentiments"}
KEY_STARTED = "train_started"
KEY_FLASH = "train_flash"
KEY_NAME_FIELD = "train_name_field"  # how many runs this session started: the name field's key ends with it
KEY_DELETE = "train_delete"  # the run whose delete waits for confirmation
KEY_OPEN_ERROR = "train_open_error"
KEY_RUN_OPEN = "train_run_open"  # prefix; a run's folder is appended: its summary is open
PARA_PAGE = "pages/2_PARA.py"
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
        generation = st.session_state.get(KEY_NAME_FIELD, 0)  # a new field after each start: empty again
        name = cols[2].text_input(
            "Run name", placeholder="default: METHOD-TASK-rN, numbered if taken", key=f"train_run_name-{generation}"
        )
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return
    name = name.strip() or unused_name(runs_dir, f"{method}-{task}-r{int(budget)}")
    if name_taken(runs_dir, name):
        fresh = unused_name(runs_dir, name)
        st.error(f"{runs_dir / name}: a run of that name exists; choose another name, e.g. {fresh}")
        return
    try:
        command = jobs.train_command(
            name, method=method, task=task, budget_rank=int(budget), epochs=float(epochs), runs_dir=runs_dir
        )
        jobs.launch(name, command, runs_dir)
    except (ValueError, OSError) as err:
        st.error(str(err))
        return
    st.session_state[KEY_FLASH] = f"Started {name}: `python {' '.join(command[1:])}`"
    st.session_state[KEY_NAME_FIELD] = generation + 1
    st.rerun()  # draw the form again now, with an empty name field (a new key) and the job's panel


def name_taken(runs_dir: Path, name: str) -> bool:
    """A finished or failed record, or a job (running or not), already uses `name`."""
    return any(p.exists() for p in (runs_dir / name, runs_dir / f"{name}.failed", runs_dir / f".{name}.job"))


def unused_name(runs_dir: Path, base: str) -> str:
    """`base`, or `base-2`, `base-3`, ... : the first that no run in `runs_dir` uses."""
    return next(n for n in (base, *(f"{base}-{i}" for i in range(2, 10_000))) if not name_taken(runs_dir, n))


def job_panel(runs_dir: Path, p: jobs.JobProgress) -> None:
    """Live state of one launched job (`jobs.progress`): phase or progress bar, loss curve, cancel, delete, log."""
    name = p.name
    st.markdown(f"**{name}** · {p.state}")
    if p.state == "running":
        if p.phase.startswith("evaluating"):
            st.progress(1.0, text=f"{p.phase} on validation and test · {p.seconds:.0f} s since start")
        elif p.total:
            st.progress(min(p.step / p.total, 1.0), text=f"step {p.step} of {p.total}")
        else:  # before the first step: importing torch and loading the model take a while on a small CPU
            phase = p.phase or "starting Python"
            st.progress(0.0, text=f"starting: {phase} · {p.seconds:.0f} s")
        if st.button("Cancel", key=f"cancel-{name}"):
            jobs.cancel(runs_dir, name)
            st.rerun()
    elif p.state == "failed":
        st.error(f"{name} failed; its log is in {runs_dir / (name + '.failed')}/log.txt")
    elif p.state == "cancelled":
        st.info(f"{name} was cancelled.")
    elif p.state == "gone":
        st.error(f"{name}: the process ended without writing a run record")
    if p.state in ("failed", "cancelled", "gone"):
        delete_ui(runs_dir, name)
    if p.losses:
        st.plotly_chart(loss_figure(list(p.losses)), width="stretch", key=f"loss-{name}")
    if p.log_tail and p.state not in ("finished", "cancelled"):
        st.code(p.log_tail, language=None)


def delete_ui(runs_dir: Path, name: str) -> None:
    """A Delete button for a cancelled or failed run, then a confirmation naming what goes."""
    if st.session_state.get(KEY_DELETE) != name:
        if st.button("Delete", key=f"delete-{name}", help="remove this run's folders from the runs folder"):
            st.session_state[KEY_DELETE] = name
            st.rerun()
        return
    try:
        paths = jobs.deletable(runs_dir, name)
    except ValueError as err:
        st.error(str(err))
        st.session_state.pop(KEY_DELETE, None)
        return
    listed = ", ".join(f"`{p.name}`" for p in paths) or "nothing left"
    st.warning(f"Delete {name}? This removes {listed} from `{runs_dir}` and cannot be undone.")
    cols = st.columns(2)
    if cols[0].button("Yes, delete", key=f"delete-yes-{name}", type="primary"):
        try:
            jobs.delete(runs_dir, name)
        except (ValueError, OSError) as err:
            st.error(f"{runs_dir / name}: not deleted ({err})")
            return
        finally:
            st.session_state.pop(KEY_DELETE, None)
        st.session_state[KEY_FLASH] = f"Deleted {name}."
        st.rerun()
    if cols[1].button("Keep it", key=f"delete-no-{name}"):
        st.session_state.pop(KEY_DELETE, None)
        st.rerun()


def open_in_para(run: RunRecord) -> None:
    """Load a finished run's adapter as the session's and go to the PARA page (an error stays on this page)."""
    if set_adapter(lambda: load_path(run.path / "adapter")):
        st.switch_page(PARA_PAGE)
    st.session_state[KEY_OPEN_ERROR] = (run.path, st.session_state.get(KEY_LOAD_ERROR, "not loaded"))


def run_summary(run: RunRecord, runs_dir: Path | None = None) -> None:
    """One finished or failed run record: metrics, loss curve, "Open in PARA"; a failed one in `runs_dir`: delete."""
    box = st.expander(f"{run.name} · {run.status}", key=f"{KEY_RUN_OPEN}-{run.path}", on_change="rerun")
    with box:
        if not box.open:  # drawn when opened: a closed run costs the browser no chart (a dozen slowed every rerun)
            return
        if run.status != "finished" or not run.metrics:
            st.error(f"Status: {run.status}; see {run.path}/log.txt") if run.status == "failed" else st.write(
                f"Status: {run.status}"
            )
            if runs_dir is not None and run.path.parent.resolve() == runs_dir.resolve() and run.status == "failed":
                delete_ui(runs_dir, run.path.name.removesuffix(".failed"))
            return
        if (run.path / "adapter").is_dir():
            if st.button("Open in PARA", key=f"open-{run.path}", help="load this run's adapter and cut it"):
                open_in_para(run)
            opened = st.session_state.get(KEY_OPEN_ERROR)
            if opened and opened[0] == run.path:
                st.error(opened[1])
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
