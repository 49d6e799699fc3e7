"""Command line: `python -m analysis evaluate ADAPTER --data FILE [--base MODEL] [--energy 0.9 | ...]`.

Prints the uncompressed adapter's perplexity (causal LM) or accuracy (classifier) on the user's data and that of
each PARA cut asked for; the base model is loaded once. Also runs as `python -m analysis.evaluation ...`.
User mistakes print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from analysis.cli_args import OneLineParser, at_least, error_line, fraction, non_negative

# CLI flag -> cut unit, as `compress` has them; each takes one or more values
CUT_FLAGS = {
    "energy": "energy",
    "tau": "tau",
    "relative": "relative",
    "params_fraction": "params_fraction",
    "params": "params",
    "mean_rank": "mean_rank",
}


def add_evaluate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `evaluate` subcommand on a subparsers object (runs `run_evaluate`)."""
    p = sub.add_parser(
        "evaluate",
        help="perplexity or accuracy of an adapter and its PARA cuts on your data",
        description="Evaluate an adapter and PARA cuts of it on your own data with its base model: perplexity "
        "(causal LM, text / JSONL with a 'text' field) or accuracy (sequence classifier, CSV / JSONL with "
        "'text' and 'label').",
    )
    p.add_argument("adapter", help="PEFT adapter folder, .zip, or Hugging Face Hub id (ORG/NAME)")
    p.add_argument("--data", required=True, help=".txt, .jsonl, .json or .csv file")
    p.add_argument("--base", help="base model folder or Hub id (default: the adapter's base_model_name_or_path)")
    p.add_argument("--task", choices=["causal-lm", "classification"], help="default: from the adapter or the model")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--energy", type=fraction, nargs="+", help="energy to keep: 0.9 or 90%%, one or more")
    cut.add_argument("--tau", type=non_negative(float), nargs="+", help="absolute thresholds")
    cut.add_argument("--relative", type=fraction, nargs="+", help="thresholds relative to the largest value")
    cut.add_argument("--params-fraction", dest="params_fraction", type=fraction, nargs="+", help="LoRA params kept")
    cut.add_argument("--params", type=non_negative(int), nargs="+", help="numbers of LoRA params to keep at most")
    cut.add_argument("--mean-rank", dest="mean_rank", type=non_negative(float), nargs="+", help="mean ranks")
    p.add_argument("--min-rank", type=int, choices=[0, 1], default=0)
    p.add_argument("--seq-len", type=at_least(2), default=64, help="causal LM: tokens per chunk (default 64)")
    p.add_argument("--max-chunks", type=at_least(1), default=128, help="causal LM: chunks scored, a seeded sample")
    p.add_argument("--seed", type=at_least(0), default=0, help="seed of the chunk sample (default 0)")
    p.add_argument("--max-length", type=at_least(1), default=128, help="classification: tokens per text")
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--labels", help="classification: class names in id order, comma-separated")
    p.add_argument("--download", action="store_true", help="download Hub ids that are not cached")
    p.set_defaults(run=run_evaluate)
    return p


def run_evaluate(args: argparse.Namespace) -> None:
    """Load the adapter and its base once, then print the uncompressed figure and one line per cut."""
    from transformers.utils import logging as hf_logging

    from analysis.adapters import load_adapter
    from analysis.evaluation import EvalSettings, evaluate_cut, open_base, prepare_data
    from analysis.hub import is_hub_id, resolve_hub
    from analysis.para import allocate_ranks, para_index
    from analysis.spectra import adapter_spectra

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise in a one-figure-per-line report
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations peft triggers
    hf_logging.set_verbosity_error()
    settings = EvalSettings(
        seq_len=args.seq_len, max_chunks=args.max_chunks, seed=args.seed, max_length=args.max_length,
        batch_size=args.batch_size,
        label_names=tuple(n.strip() for n in args.labels.split(",")) if args.labels else None,
    )  # fmt: skip
    path = (
        resolve_hub(args.adapter, kind="adapter", download=args.download) if is_hub_id(args.adapter) else args.adapter
    )
    adapter = load_adapter(path)
    base = open_base(adapter, args.base, task=args.task, download=args.download)
    data = prepare_data(base, args.data, settings)
    print(
        f"base model   {base.info.folder} ({str(base.info.dtype).removeprefix('torch.')}, {base.task}, {base.device})"
    )
    print(f"data         {data.describe()}")
    print(f"uncompressed {evaluate_cut(base, adapter, None, data).describe()}")
    cuts = [(u, v) for flag, u in CUT_FLAGS.items() for v in (getattr(args, flag) or [])]
    if cuts:
        index = para_index(adapter_spectra(adapter))
    for unit, value in cuts:
        allocation = allocate_ranks(index, value, unit, min_rank=args.min_rank)
        result = evaluate_cut(base, adapter, allocation, data)
        print(f"{unit} {value:<6g} {result.describe()}, energy {allocation.energy_kept:.2%}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.evaluation ...`: the same command on its own; returns the exit code."""
    parser = OneLineParser(prog="python -m analysis")  # usage reads as the main command's
    add_evaluate(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.run(args)
    except (ValueError, OSError) as err:  # DataError, BaseModelError, HubError, AdapterError are ValueErrors
        print(error_line(err, args.adapter), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
