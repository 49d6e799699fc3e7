"""Train page through AppTest: bundled runs listed, a run starts only on the button, live progress, cancel.

Only the process-launch edge is replaced: the page's button still goes through `jobs.launch`, but the
process started is a real sleeper instead of a minutes-long training run; cancel signals that real process.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from analysis.training import jobs

TIMEOUT = 60


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
    assert any("failed" in e.value for e in at.error)


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
    (chart,) = [c for c in at.get("plotly_chart") if '"y":[1.0]' in c.proto.spec.replace(" ", "")]
    assert '"mode":"lines+markers"' in chart.proto.spec.replace(" ", "")  # one point draws no line
