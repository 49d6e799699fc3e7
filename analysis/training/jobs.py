"""Background training jobs for the app: launch the CLI in its own process, read live progress, cancel.

No torch import here (the Train page uses it). A job is the CLI `python -m analysis.training train ...`
started in a new session with its output in `<runs>/.<name>.job/`; its state lives on disk, so any rerun
or browser session sees the same jobs. While it trains, the run's temp folder `<runs>/.<name>.partial-*`
holds `log.txt` with `step S/T loss L` lines, and the CLI keeps `<runs>/.<name>.job/status.json` current with
its phase (starting Python, importing torch, loading the model, training step S of T, evaluating): that is
the live progress. A finished run is renamed to `<runs>/<name>/`; a crashed or cancelled one to
`<runs>/<name>.failed/` (status "failed"). A cancel interrupts the job and kills it if it has not exited
within a second; `delete` removes what a cancelled or failed job left in the runs folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"step (\d+)/(\d+) loss ([0-9.eE+-]+|nan|inf)")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


@dataclass(frozen=True)
class JobProgress:
    """What a job's files say right now."""

    name: str
    state: str
    """"running", "finished", "failed", "cancelled" (by `cancel`) or "gone" (process ended without a record)."""
    step: int = 0
    total: int = 0
    phase: str = ""
    """What a running job is doing (from its status file): "starting Python", "importing ...", "training", ..."""
    seconds: float = 0.0
    """Since the job was launched."""
    losses: tuple[tuple[int, float], ...] = ()
    """(step, loss) pairs logged so far."""
    log_tail: str = ""


def train_command(
    name: str, *, method: str, task: str, budget_rank: int, epochs: float, runs_dir: Path, seed: int = 0
) -> list[str]:
    """The CLI command line that trains run `name` into `runs_dir` (lora: `budget_rank` is its rank).

    Raises:
        ValueError: for a run name that is not a plain folder name.
    """
    if not NAME_RE.match(name) or name.endswith((".failed", ".job")):
        raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (no path, no .failed suffix)")
    return [
        sys.executable, "-m", "analysis.training", "train", "--method", method, "--task", task,
        "--budget-rank", str(budget_rank), "--epochs", str(epochs), "--seed", str(seed), "--out", str(runs_dir / name),
        "--status", str(_job_dir(runs_dir, name) / STATUS),
    ]  # fmt: skip


CANCELLED = "cancelled"  # marker file in a job's folder: the user cancelled it
STATUS = "status.json"  # in a job's folder: {"phase": ..., "step": ..., "total": ...}, rewritten by the CLI


def _job_dir(runs_dir: Path, name: str) -> Path:
    return runs_dir / f".{name}.job"


def _popen(command: Sequence[str], log_file: Path) -> int:
    """Start `command` in a new session (so cancel reaches the whole group); returns its pid."""
    with log_file.open("ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def launch(name: str, command: Sequence[str], runs_dir: Path) -> int:
    """Start a training job in the background; returns its pid.

    Raises:
        ValueError: when a run or job of that name already exists.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    if (runs_dir / name).exists() or is_running(runs_dir, name):
        raise ValueError(f"{runs_dir / name}: a run of that name exists or is running; choose another name")
    job = _job_dir(runs_dir, name)
    job.mkdir(exist_ok=True)
    started = time.time()
    (job / STATUS).write_text(json.dumps({"phase": "starting Python"}))
    pid = _popen(command, job / "output.txt")
    (job / "job.json").write_text(json.dumps({"pid": pid, "command": list(command), "started": started}))
    return pid


def _job_file(runs_dir: Path, name: str, file: str) -> dict:
    try:
        data = json.loads((_job_dir(runs_dir, name) / file).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid(runs_dir: Path, name: str) -> int | None:
    try:
        return int(_job_file(runs_dir, name, "job.json")["pid"])
    except (KeyError, TypeError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own child if it has exited
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by another server process): fall back to a signal-0 probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_running(runs_dir: Path, name: str) -> bool:
    pid = _pid(runs_dir, name)
    return pid is not None and _alive(pid)


def jobs(runs_dir: Path) -> list[str]:
    """Names of every job launched into `runs_dir` (running or not), newest first."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.glob(".*.job") if (p / "job.json").is_file()]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name[1 : -len(".job")] for p in found]


def progress(runs_dir: Path, name: str) -> JobProgress:
    """The job's state, steps and logged losses, read from its files."""
    partial = sorted(runs_dir.glob(f".{name}.partial-*"))
    if (runs_dir / name / "status").is_file():
        state, log = (runs_dir / name / "status").read_text().strip(), runs_dir / name / "log.txt"
    elif (runs_dir / f"{name}.failed").is_dir():
        state, log = "failed", runs_dir / f"{name}.failed" / "log.txt"
    elif is_running(runs_dir, name):
        state, log = "running", (partial[-1] / "log.txt" if partial else _job_dir(runs_dir, name) / "output.txt")
    else:
        state, log = "gone", _job_dir(runs_dir, name) / "output.txt"
    text = log.read_text(errors="replace") if log.is_file() else ""
    if state in ("failed", "gone"):
        output = _job_dir(runs_dir, name) / "output.txt"
        text += output.read_text(errors="replace")[-4000:] if output.is_file() and output != log else ""
    if state in ("failed", "gone") and (_job_dir(runs_dir, name) / CANCELLED).is_file():
        state = "cancelled"  # asked for: its interrupt traceback is no failure to show
    losses = tuple((int(m[1]), float(m[3])) for m in STEP_LINE.finditer(text))
    step, total = (losses[-1][0], int(STEP_LINE.findall(text)[-1][1])) if losses else (0, 0)
    status, started = _job_file(runs_dir, name, STATUS), _job_file(runs_dir, name, "job.json").get("started")
    if isinstance(status.get("step"), int) and isinstance(status.get("total"), int) and status["step"] >= step:
        step, total = status["step"], status["total"]  # the status file has every step; the log every tenth
    seconds = time.time() - started if isinstance(started, (int, float)) else 0.0
    tail = "\n".join(text.strip().splitlines()[-12:])
    return JobProgress(name, state, step, total, str(status.get("phase", "")), seconds, losses, tail)


def cancel(runs_dir: Path, name: str, *, grace_s: float = 1.0) -> bool:
    """Interrupt a running job (SIGINT: the run records itself as failed); kill it if it is not gone in `grace_s`.

    A job killed before it wrote its record leaves its temp folder, which goes with it. Returns within about
    `grace_s` + 1 s.

    Returns:
        True if a running job was signalled.
    """
    pid = _pid(runs_dir, name)
    if pid is None or not _alive(pid):
        return False
    (_job_dir(runs_dir, name) / CANCELLED).touch()
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(pid, sig)  # the job leads its own session: its group id is its pid
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if not _alive(pid):
            break
    for partial in runs_dir.glob(f".{name}.partial-*"):
        _remove(partial)
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def deletable(runs_dir: Path, name: str) -> list[Path]:
    """What `delete` would remove for job or run `name`: its `<name>.failed/` record, job folder, temp folders.

    Raises:
        ValueError: for a name that is no plain run name, a running job, or a finished run (kept).
    """
    if not NAME_RE.match(name) or name.endswith((".failed", ".job")):
        raise ValueError(f"run name {name!r}: not a run in {runs_dir}; pick a run from the list")
    if is_running(runs_dir, name):
        raise ValueError(f"{runs_dir / name}: still running; cancel it first")
    if (runs_dir / name).exists():
        raise ValueError(f"{runs_dir / name}: a finished run is kept; remove its folder yourself to delete it")
    found = [runs_dir / f"{name}.failed", _job_dir(runs_dir, name), *runs_dir.glob(f".{name}.partial-*")]
    root = runs_dir.resolve()
    return [p for p in found if (p.exists() or p.is_symlink()) and p.parent.resolve() == root]


def delete(runs_dir: Path, name: str) -> list[Path]:
    """Remove a cancelled or failed run (see `deletable`), never anything outside `runs_dir`; returns what went.

    A symlink among them is removed itself, not what it points to.
    """
    paths = deletable(runs_dir, name)
    for path in paths:
        _remove(path)
    return paths
