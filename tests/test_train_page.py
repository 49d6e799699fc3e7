"""Train page through AppTest: bundled runs listed, a run starts only on the button, live progress, cancel.

Only the process-launch edge is replaced: the page's button still goes through `jobs.launch`, but the
process started is a real sleeper instead of a minutes-long training run; cancel signals that real process.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.training import jobs
from pages.shared import train_widgets as tw

TIMEOUT = 60
SAMPLES = Path(__file__).resolve().parents[1] / "sample_adapters"


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    folder = tmp_path / "lab-runs"
    monkeypatch.setenv("LORA_LAB_RUNS_DIR", str(folder))
    return folder


@pytest.fixture
def launched(monkeypatch):
    commands = []
    real_popen = jobs._popen

    def sleeper(command, log_file):
        commands.append(list(command))
        return real_popen([sys.executable, "-c", "import time; time.sleep(60)"], log_file)

    monkeypatch.setattr(jobs, "_popen", sleeper)
    return commands


def page() -> AppTest:
    at = AppTest.from_file("../pages/4_Train.py", default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def test_train_page_lists_bundled_runs_and_starts_nothing_on_rerun(runs_dir, launched):
    at = page()
    assert any("minilm-bbc-topic-lora-r32" in e.label for e in at.expander)
    at.run()
    assert launched == [] and not runs_dir.exists()


def test_train_page_button_starts_a_background_run_and_cancel_stops_it(runs_dir, launched):
    at = page()
    at.selectbox[0].set_value("alora")
    at.text_input[0].set_value("my-run")
    at.button[0].click().run()
    assert not at.exception
    assert len(launched) == 1
    cmd = launched[0]
    assert cmd[1:4] == ["-m", "analysis.training", "train"]
    assert cmd[cmd.index("--method") + 1] == "alora" and cmd[cmd.index("--budget-rank") + 1] == "8"
    assert cmd[cmd.index("--out") + 1] == str(runs_dir / "my-run")
    assert jobs.is_running(runs_dir, "my-run")
    assert "Started my-run: `python -m analysis.training train" in at.success[0].value
    assert any(h.value == "Your runs (lab-runs/)" for h in at.subheader)  # the folder runs go to, by name
    # the run's temp folder logs progress as the real CLI does
    partial = runs_dir / ".my-run.partial-abc"
    partial.mkdir()
    (partial / "log.txt").write_text("12:00:00 step 10/40 loss 1.2000\n12:00:02 step 20/40 loss 0.8000\n")
    at.run()
    assert any("step 20 of 40" in (p.proto.text or "") for p in at.get("progress"))
    cancel = next(b for b in at.button if b.label == "Cancel")
    cancel.click().run()
    deadline = time.monotonic() + 10
    while jobs.is_running(runs_dir, "my-run") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not jobs.is_running(runs_dir, "my-run")
    at.run()
    assert jobs.progress(runs_dir, "my-run").state == "cancelled"
    assert any("my-run was cancelled" in i.value for i in at.info)
    assert not at.error and not at.code  # no failure and no interrupt traceback for a cancel the user asked for


def test_train_page_shows_a_failed_run_as_failed(runs_dir, launched):
    failed = runs_dir / "crashed.failed"
    failed.mkdir(parents=True)
    (failed / "status").write_text("failed\n")
    (failed / "log.txt").write_text("failed: RuntimeError: out of memory\n")
    at = page()
    assert any("crashed.failed · failed" in e.label for e in at.expander)
    assert not at.error  # a closed run's summary is drawn when it is opened
    open_run(at, failed)
    assert any("failed" in e.value for e in at.error)


def open_run(at: AppTest, folder: Path) -> None:
    """Open a run's expander, as a click on it does (its state key; the page reruns on a toggle)."""
    at.session_state[f"{tw.KEY_RUN_OPEN}-{folder}"] = True
    at.run()
    assert not at.exception


def test_jobs_progress_parses_steps_and_rejects_bad_names(tmp_path):
    run = tmp_path / "done"
    run.mkdir()
    (run / "status").write_text("finished\n")
    (run / "log.txt").write_text("x step 1/3 loss 2.0\nx step 3/3 loss 0.5\n")
    (tmp_path / ".done.job").mkdir()
    (tmp_path / ".done.job" / "job.json").write_text(json.dumps({"pid": 2**22 + 7, "command": []}))
    p = jobs.progress(tmp_path, "done")
    assert (p.state, p.step, p.total, p.losses) == ("finished", 3, 3, ((1, 2.0), (3, 0.5)))
    assert jobs.jobs(tmp_path) == ["done"]
    with pytest.raises(ValueError, match="run name"):
        jobs.train_command("../evil", method="lora", task="bbc-topic", budget_rank=8, epochs=1, runs_dir=tmp_path)


def ended_job(runs_dir, name: str, record: str, status: str, metrics: dict | None = None) -> None:
    """A job launched from the app whose process is gone and whose run record is `record`."""
    folder = runs_dir / record
    folder.mkdir(parents=True)
    (folder / "status").write_text(f"{status}\n")
    (folder / "log.txt").write_text("x step 4/4 loss 0.5\n")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (runs_dir / f".{name}.job").mkdir()
    (runs_dir / f".{name}.job" / "job.json").write_text(json.dumps({"pid": 2**22 + 7, "command": []}))


def test_a_run_started_from_the_app_is_listed_once(runs_dir, launched):
    metrics = {"method": "lora", "test": {"accuracy": 0.9}, "n_lora_params": 1000, "wall_time_s": 12.0}
    metrics["loss_curve"] = [1.0]  # a four-step run logs one point
    ended_job(runs_dir, "done", "done", "finished", metrics)
    ended_job(runs_dir, "crashed", "crashed.failed", "failed")
    at = page()
    labels = [e.label for e in at.expander]
    assert labels.count("done · finished") == 1 and not any("crashed" in label for label in labels)
    assert sum("crashed failed" in e.value for e in at.error) == 1  # its live panel, not a second listing
    assert any("No other run records in lab-runs/" in i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if '"y":[1.0]' in c.proto.spec.replace(" ", "")]  # closed
    open_run(at, runs_dir / "done")
    (chart,) = [c for c in at.get("plotly_chart") if '"y":[1.0]' in c.proto.spec.replace(" ", "")]
    assert '"mode":"lines+markers"' in chart.proto.spec.replace(" ", "")  # one point draws no line


def progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text or "" for p in at.get("progress")]


def test_start_shows_the_phase_at_once_and_the_name_field_is_fresh_for_the_next_run(runs_dir, launched):
    at = page()
    at.button[0].click().run()  # no name: the default METHOD-TASK-rN
    assert not at.exception and not at.error
    assert launched[0][launched[0].index("--out") + 1] == str(runs_dir / "lora-bbc-topic-r8")
    status = launched[0][launched[0].index("--status") + 1]
    assert status == str(runs_dir / ".lora-bbc-topic-r8.job" / "status.json")
    assert any(t.startswith("starting: starting Python") for t in progress_texts(at))  # not "step 0 of ?"
    Path(status).write_text(json.dumps({"phase": "importing torch, transformers and peft"}))
    at.run()
    assert any(t.startswith("starting: importing torch, transformers and peft") for t in progress_texts(at))
    Path(status).write_text(json.dumps({"phase": "training", "step": 3, "total": 40}))
    at.run()
    assert "step 3 of 40" in progress_texts(at)
    assert at.text_input[0].value == ""  # the field does not keep the last name
    at.button[0].click().run()  # the same settings again: a fresh name, no duplicate error
    assert not at.error and len(launched) == 2
    assert launched[1][launched[1].index("--out") + 1] == str(runs_dir / "lora-bbc-topic-r8-2")
    at.text_input[0].set_value("lora-bbc-topic-r8")
    at.button[0].click().run()  # a name in use, typed: refused with a free one suggested
    assert len(launched) == 2 and "e.g. lora-bbc-topic-r8-3" in at.error[0].value
    for name in ("lora-bbc-topic-r8", "lora-bbc-topic-r8-2"):
        jobs.cancel(runs_dir, name)


def test_cancelled_and_failed_runs_are_deleted_after_confirmation_and_nothing_else(runs_dir, launched, tmp_path):
    outside = tmp_path / "not-a-run"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    ended_job(runs_dir, "crashed", "crashed.failed", "failed")
    (runs_dir / "linked.failed").symlink_to(outside)  # a failed record that is a link: the link goes, not its target
    (runs_dir / "linked.failed" / "status").write_text("failed\n")
    at = page()
    at.button[0].click().run()
    jobs.cancel(runs_dir, "lora-bbc-topic-r8")
    at.run()
    assert jobs.progress(runs_dir, "lora-bbc-topic-r8").state == "cancelled"
    assert not list(runs_dir.glob(".lora-bbc-topic-r8.partial-*"))
    names = ("lora-bbc-topic-r8", "crashed")
    for name in names:
        next(b for b in at.button if b.key == f"delete-{name}").click().run()
        assert any(f"Delete {name}? This removes" in w.value for w in at.warning)
        if name == "crashed":  # the first answer is "keep": nothing goes
            next(b for b in at.button if b.key == f"delete-no-{name}").click().run()
            assert (runs_dir / "crashed.failed").is_dir()
            next(b for b in at.button if b.key == f"delete-{name}").click().run()
        next(b for b in at.button if b.key == f"delete-yes-{name}").click().run()
        assert not at.exception and f"Deleted {name}." in at.success[0].value
    assert not (runs_dir / "crashed.failed").exists() and not (runs_dir / ".crashed.job").exists()
    assert not (runs_dir / ".lora-bbc-topic-r8.job").exists() and jobs.jobs(runs_dir) == []
    open_run(at, runs_dir / "linked.failed")
    next(b for b in at.button if b.key == "delete-linked").click().run()
    next(b for b in at.button if b.key == "delete-yes-linked").click().run()
    assert not (runs_dir / "linked.failed").is_symlink() and (outside / "keep.txt").read_text() == "mine"


def test_delete_refuses_running_finished_and_outside_names(runs_dir, launched):
    runs_dir.mkdir()
    (runs_dir / "done").mkdir()
    with pytest.raises(ValueError, match="finished run is kept"):
        jobs.delete(runs_dir, "done")
    for name in ("../x", "a/b", ".hidden", "x.failed"):
        with pytest.raises(ValueError, match="run name"):
            jobs.delete(runs_dir, name)
    jobs.launch("live", ["unused"], runs_dir)
    with pytest.raises(ValueError, match="still running; cancel it first"):
        jobs.delete(runs_dir, "live")
    jobs.cancel(runs_dir, "live")
    assert jobs.delete(runs_dir, "live") == [runs_dir / ".live.job"]


def test_open_in_para_loads_a_finished_run_and_switches_page(runs_dir, launched):
    run = runs_dir / "mine"
    shutil.copytree(SAMPLES / "minilm-bbc-topic-lora-r8", run)
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()
    at.switch_page("pages/4_Train.py").run()
    open_run(at, run)
    open_button = next(b for b in at.button if b.key == f"open-{run}")
    open_button.click().run()
    assert not at.exception
    assert at.session_state["adapter"].source == str(run / "adapter")
    assert any("PARA" in t.value for t in at.title)  # the PARA page, drawn for that adapter
    assert any(str(run / "adapter") in c.value for c in at.caption)


def test_cancel_takes_effect_within_2_s_of_a_real_job_starting(runs_dir):
    """The real CLI as the app launches it: its phase is on disk within a second; cancel returns within 2 s."""
    command = jobs.train_command("real", method="lora", task="bbc-topic", budget_rank=2, epochs=0.1, runs_dir=runs_dir)
    start = time.monotonic()
    jobs.launch("real", command, runs_dir)
    assert jobs.progress(runs_dir, "real").phase == "starting Python"
    while jobs.progress(runs_dir, "real").phase == "starting Python" and time.monotonic() - start < 20:
        time.sleep(0.02)
    assert jobs.progress(runs_dir, "real").phase == "importing torch, transformers and peft"
    start = time.monotonic()
    assert jobs.cancel(runs_dir, "real")
    assert not jobs.is_running(runs_dir, "real") and time.monotonic() - start < 2.0
    assert jobs.progress(runs_dir, "real").state == "cancelled"
    assert not list(runs_dir.glob(".real.partial-*"))


@pytest.mark.slow
def test_cancel_of_a_real_training_job_takes_effect_within_2_s(runs_dir):
    """A real run as the app starts it (MiniLM on bbc-topic), cancelled once its steps have begun."""
    command = jobs.train_command("real", method="lora", task="bbc-topic", budget_rank=2, epochs=1.0, runs_dir=runs_dir)
    jobs.launch("real", command, runs_dir)
    deadline = time.monotonic() + 600
    while (p := jobs.progress(runs_dir, "real")).phase != "training" and time.monotonic() < deadline:
        assert p.state == "running", p.log_tail
        time.sleep(0.05)
    assert p.phase == "training" and p.total > 0
    start = time.monotonic()
    assert jobs.cancel(runs_dir, "real")
    assert not jobs.is_running(runs_dir, "real") and time.monotonic() - start < 2.0
    assert jobs.progress(runs_dir, "real").state == "cancelled"
    assert not list(runs_dir.glob(".real.partial-*")) and not (runs_dir / "real").exists()
