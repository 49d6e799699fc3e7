"""Time what the Train page shows after Start, and how long a cancel takes, on real training jobs.

`python bench/train_jobs.py [--repeats 3]` launches the CLI as the app does (`jobs.launch` of
`jobs.train_command`: lora, bbc-topic, rank 2, 1 epoch) into a temporary runs folder and records when each
phase first shows in the job's files (read as the page reads them, polled every 20 ms): the first status
(written by `launch` itself), importing, loading, the first training step. Each repeat cancels one job while
it imports and one once it trains, timing `jobs.cancel` until the process is gone, and says whether the job
exited on the interrupt (it then leaves a `.failed` record) or was killed after the grace second. The same run
times `python -c pass` as the baseline. Prints a markdown table; JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.training import jobs  # noqa: E402

IMPORTING = "importing torch, transformers and peft"
LOADING = "loading the task data and the model"


def python_start_s() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def one_job(runs: Path, name: str, cancel_in: str, timeout_s: float = 900.0) -> dict[str, float | str]:
    """Launch, note when each phase first shows, cancel in phase `cancel_in` ("importing" or "training")."""
    command = jobs.train_command(name, method="lora", task="bbc-topic", budget_rank=2, epochs=1.0, runs_dir=runs)
    start = time.perf_counter()
    jobs.launch(name, command, runs)
    seen: dict[str, float] = {}
    while time.perf_counter() - start < timeout_s:
        p = jobs.progress(runs, name)
        label = "training" if p.phase == "training" or p.step else p.phase
        seen.setdefault(label, time.perf_counter() - start)
        if (cancel_in == "importing" and p.phase == IMPORTING) or (cancel_in == "training" and label == "training"):
            break
        if p.state != "running":
            raise RuntimeError(f"{name} ended before it was cancelled: {p.state}\n{p.log_tail}")
        time.sleep(0.02)
    else:
        raise RuntimeError(f"{name}: no {cancel_in} phase within {timeout_s} s")
    t0 = time.perf_counter()
    jobs.cancel(runs, name)
    cancel_s = time.perf_counter() - t0
    alive = jobs.is_running(runs, name)
    how = "interrupt" if (runs / f"{name}.failed").is_dir() else "killed after 1 s"
    return {"cancel_in": cancel_in, "cancel_s": cancel_s, "alive_after": alive, "exit": how} | {
        f"first_{k.split()[0]}_s": v for k, v in seen.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    base = [python_start_s() for _ in range(3)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        for i in range(args.repeats):
            for phase in ("importing", "training"):
                rows.append(one_job(runs, f"bench-{phase}-{i}", phase))
                base.append(python_start_s())
    baseline = statistics.median(base)
    load_end = os.getloadavg()[0]
    print(f"load average {load_start:.2f} at start, {load_end:.2f} at end; `python -c pass` {baseline:.2f} s\n")
    print("| cancelled while | first status | importing shown | loading shown | first step | cancel | exit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        phases = ("first_starting_s", "first_importing_s", "first_loading_s")
        cells = [f"{r[k]:.2f} s" if k in r else "-" for k in phases]
        cells.append(f"{r['first_training_s']:.1f} s" if "first_training_s" in r else "-")
        print(f"| {r['cancel_in']} | {' | '.join(cells)} | {r['cancel_s']:.2f} s | {r['exit']} |")
    out = ROOT / "bench" / "results" / f"train-jobs-{time.strftime('%Y-%m-%d-%H%M')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"python_start_s": base, "load_average_start": load_start, "rows": rows}, indent=1))
    print(f"\n-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
