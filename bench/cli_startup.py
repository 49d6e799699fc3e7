"""Time the CLIs as whole processes (start to exit), against `python -c pass` measured in the same run.

`python bench/cli_startup.py [--repeats 7] [--before PATH]` runs each command `--repeats` times, the
commands interleaved round by round so that a busy spell of the machine hits all of them alike, and prints a
markdown table of medians (with min and max) and their ratio to the baseline's median; JSON goes to
bench/results/. `--before PATH` also times the same commands in another checkout (e.g. a worktree of an
earlier commit), in the same rounds, for a before/after comparison.

`python -c "import torch"` is timed as well: `info` computes spectra, so its floor is torch's import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402

SAMPLE = "sample_adapters/minilm-bbc-topic-lora-r32"
COMMANDS: dict[str, list[str]] = {
    "python -c pass (baseline)": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
    "python -m analysis --help": ["-m", "analysis", "--help"],
    "python -m analysis.training --help": ["-m", "analysis.training", "--help"],
    f"python -m analysis info {SAMPLE}": ["-m", "analysis", "info", SAMPLE],
    "python -m analysis compress ... --energy 90 (refused)": [
        "-m",
        "analysis",
        "compress",
        SAMPLE,
        "--energy",
        "90",
        "--out",
        "bench/out/never-written",
    ],  # fmt: skip
}
CHECKOUT_FREE = {"python -c pass (baseline)", 'python -c "import torch"'}  # the same in any checkout


def time_once(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", type=Path, default=None, help="another checkout to time in the same rounds")
    args = parser.parse_args()
    roots = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    cases = [(label, name) for label in roots for name in COMMANDS if label == "now" or name not in CHECKOUT_FREE]
    times: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    load_start = os.getloadavg()[0]
    for case in cases:  # one untimed warm-up each: the page cache holds the files afterwards
        time_once(COMMANDS[case[1]], roots[case[0]])
    for _ in range(args.repeats):
        for case in cases:
            times[case].append(time_once(COMMANDS[case[1]], roots[case[0]]))
    load_end = os.getloadavg()[0]
    base = statistics.median(times[("now", "python -c pass (baseline)")])
    rows = []
    for (label, name), values in times.items():
        median = statistics.median(values)
        rows.append(
            {"checkout": label, "command": name, "median_s": median, "min_s": min(values), "max_s": max(values),
             "ratio_to_baseline": median / base, "times_s": values}
        )  # fmt: skip
    print(f"{args.repeats} runs each, interleaved; load average {load_start:.2f} at start, {load_end:.2f} at end\n")
    print("| checkout | command | median s | min-max s | × `python -c pass` |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['checkout']} | `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} "
            f"| {r['ratio_to_baseline']:.1f} |"
        )
    out = ROOT / "bench" / "results" / f"cli-startup-{time.strftime('%Y-%m-%d-%H%M')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    record = {"repeats": args.repeats, "load_average": [load_start, load_end], "machine": machine, "rows": rows}
    out.write_text(json.dumps(record, indent=1))
    print(f"\n-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
