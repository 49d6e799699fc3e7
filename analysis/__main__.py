"""Command line: `python -m analysis info|spectra|compress|sweep ADAPTER ...`.

A thin shell over the library: parse, call, format. User mistakes print one line on stderr and exit 2;
no tracebacks for them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from analysis.cli_args import OneLineParser, at_least, error_line, fraction, non_negative
from analysis.evaluation.__main__ import add_evaluate  # the evaluate command (its own base model and data)

if TYPE_CHECKING:  # the engine (torch) is imported by each command when it runs: `--help` needs none of it
    from analysis.adapters import LoraAdapter
    from analysis.para import RankAllocation
    from analysis.spectra import AdapterSpectra

# CLI flag -> cut unit; exactly one is required by `compress`.
CUT_FLAGS: dict[str, str] = {
    "energy": "energy",
    "tau": "tau",
    "relative": "relative",
    "params_fraction": "params_fraction",
    "params": "params",
    "mean_rank": "mean_rank",
}


def _load(args: argparse.Namespace) -> LoraAdapter:
    from analysis.adapters import AdapterError, load_adapter
    from analysis.hub import HubError, hub_cache_dir, is_hub_id, resolve_hub

    if is_hub_id(args.adapter):  # ORG/NAME that is no local path: huggingface_hub's cache (never a download here)
        try:
            return load_adapter(resolve_hub(args.adapter, kind="adapter"))
        except HubError:
            raise AdapterError(
                f"{args.adapter}: no such file or folder, nor a Hub id in the cache ({hub_cache_dir()}); check the "
                "path, or fetch the id with python -m analysis evaluate ... --download or hf download"
            ) from None
    return load_adapter(args.adapter)


def _spectra(adapter: LoraAdapter, args: argparse.Namespace) -> AdapterSpectra:
    from analysis.spectra import adapter_spectra, pick_device

    try:
        pick_device(args.device)
    except ValueError:  # the library names its keyword argument; here it is a flag
        where = "no CUDA device" if args.device == "cuda" else "no Apple GPU"
        raise ValueError(f"--device {args.device}: torch sees {where} here; use --device auto or cpu") from None
    return adapter_spectra(adapter, device=args.device)


def _spectra_rows(spectra: AdapterSpectra) -> list[dict[str, object]]:
    total = spectra.total_energy or 1.0
    return [
        {
            "module": s.name,
            "r": s.r,
            "in_features": s.in_features,
            "out_features": s.out_features,
            "sigma_max": s.sigma_max,
            "energy": s.energy,
            "energy_share": s.energy / total,
            "effective_rank": s.effective_rank,
            "stable_rank": s.stable_rank,
            "sigma": [float(x) for x in s.sigma],
        }
        for s in spectra.spectra
    ]


def _write_csv(rows: Sequence[dict[str, object]], out: io.TextIOBase) -> None:
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def run_info(args: argparse.Namespace) -> None:
    adapter = _load(args)
    spectra = _spectra(adapter, args)
    ranks = sorted({m.factor_rank for m in adapter.modules})  # a dense update: its factors' rank
    lines = [
        f"source       {adapter.source}",
        f"format       {adapter.format}",
        f"base model   {adapter.base_model or 'unknown'}",
        f"modules      {len(adapter.modules)}",
        f"ranks        {', '.join(map(str, ranks))}",
        f"LoRA params  {adapter.n_params:,}",
        f"file size    {adapter.file_size / 1e6:.2f} MB",
        f"spectra      {spectra.seconds * 1e3:.1f} ms on {spectra.device} ({spectra.dtype})",
        f"fingerprint  {adapter.fingerprint[:16]}",
    ]
    lines += [f"warning      {w}" for w in adapter.warnings]
    print("\n".join(lines))


def run_spectra(args: argparse.Namespace) -> None:
    rows = _spectra_rows(_spectra(_load(args), args))
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    if args.csv:
        for row in rows:
            row["sigma"] = " ".join(f"{x:.6g}" for x in row["sigma"])  # one cell
        _write_csv(rows, sys.stdout)
        return
    width = max((len(r["module"]) for r in rows), default=6)
    print(f"{'module':<{width}}  {'r':>4}  {'sigma_max':>10}  {'share':>6}  {'eff.rank':>8}  {'stable':>6}")
    for r in rows:
        print(
            f"{r['module']:<{width}}  {r['r']:>4}  {r['sigma_max']:>10.4g}  {r['energy_share']:>6.1%}"
            f"  {r['effective_rank']:>8.2f}  {r['stable_rank']:>6.2f}"
        )


def _describe(allocation: RankAllocation) -> str:
    return (
        f"kept {allocation.n_kept} components: tau {allocation.tau:.4g} (relative {allocation.relative_tau:.4f}), "
        f"energy {allocation.energy_kept:.2%}, params {allocation.n_params_after:,} of "
        f"{allocation.n_params_before:,} ({allocation.params_fraction:.1%}), mean rank {allocation.mean_rank:.2f}, "
        f"relative error {allocation.rel_error:.4f}"
    )


def run_compress(args: argparse.Namespace) -> None:
    from analysis.export import compress_adapter, save_adapter
    from analysis.scope import allocate_scoped

    unit, value = next((u, getattr(args, flag)) for flag, u in CUT_FLAGS.items() if getattr(args, flag) is not None)
    adapter = _load(args)
    cut = allocate_scoped(_spectra(adapter, args), value, unit, scope=args.scope, min_rank=args.min_rank)
    allocation = cut.allocation
    if args.format in ("kohya", "diffusers") and not adapter.is_single_file:
        raise ValueError(
            f"--format {args.format} needs a kohya / diffusers input, but {adapter.source} is {adapter.format}; "
            "use --format peft"
        )
    compressed = compress_adapter(adapter, allocation, format=args.format)  # None: a single file keeps its layout
    try:
        out = save_adapter(compressed, args.out, overwrite=args.overwrite)
    except FileExistsError as err:  # the library's keyword is `overwrite`; here it is a flag
        raise FileExistsError(str(err).replace("pass overwrite", "add --overwrite to replace it")) from None
    print(_describe(allocation))
    if len(cut.budgets) > 1:  # each component's budget, under either scope
        for b in cut.budgets:
            print(
                f"  {b.name}: {b.n_modules} modules, params {b.n_params_after:,} of {b.n_params_before:,} "
                f"({b.params_fraction:.1%}), energy {b.energy_kept:.2%}, mean rank {b.mean_rank:.2f}"
            )
    if allocation.held:
        print(f"kept {len(allocation.held)} DoRA module(s) at rank 1 that the cut drops (peft holds none at rank 0)")
    print(f"wrote {out}")


def run_sweep(args: argparse.Namespace) -> None:
    from analysis.para import para_index, para_sweep

    sweep = para_sweep(para_index(_spectra(_load(args), args)), n_points=args.points)
    rows = [
        {
            "params_fraction": p,
            "energy_kept": e,
            "rel_error": err,
            "tau": t,
            "mean_rank": k,
        }
        for p, e, err, t, k in zip(
            sweep.params_fraction, sweep.energy_kept, sweep.rel_error, sweep.tau, sweep.mean_rank
        )
    ]
    _write_csv(rows, sys.stdout)


def _command(
    sub: argparse._SubParsersAction, name: str, help_text: str, run: Callable[[argparse.Namespace], None]
) -> argparse.ArgumentParser:
    """A subcommand on an adapter: its parser, with `run(args)` called for it."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("adapter", help="PEFT folder, AdaLoRA folder, kohya / diffusers .safetensors or .zip")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(run=run)
    return p


def add_info(sub: argparse._SubParsersAction) -> None:
    _command(sub, "info", "summary of an adapter", run_info)


def add_spectra(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "spectra", "per-module singular spectra", run_spectra)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")


def add_compress(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "compress", "PARA-compress to a global cut and write the adapter", run_compress)
    cut = p.add_mutually_exclusive_group(required=True)
    cut.add_argument("--energy", type=fraction, help="energy to keep: 0.9 or 90%% (a bare 90 is refused)")
    cut.add_argument("--tau", type=non_negative(float), help="absolute threshold on effective singular values")
    cut.add_argument("--relative", type=fraction, help="threshold relative to the largest singular value: 0.1 or 10%%")
    cut.add_argument(
        "--params-fraction", dest="params_fraction", type=fraction, help="LoRA params to keep: 0.25 or 25%%"
    )
    cut.add_argument("--params", type=non_negative(int), help="number of LoRA params to keep at most")
    cut.add_argument("--mean-rank", dest="mean_rank", type=non_negative(float), help="mean rank over modules")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (adapter_model.safetensors, RANKS.md; PEFT: its config); in kohya format a path "
        "ending in .safetensors is written as that one file",
    )
    p.add_argument("--min-rank", type=int, choices=[0, 1], default=0)
    p.add_argument(
        "--scope",
        choices=["global", "component"],
        default="global",
        help="global: one threshold over every module (PARA); component: the same cut within each text encoder, "
        "UNet or transformer of a diffusion LoRA",
    )
    p.add_argument(
        "--format",
        choices=["peft", "kohya", "diffusers"],
        help="default: a kohya / diffusers file keeps its own layout, anything else is written as peft",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output")


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "sweep", "the whole params / energy / error curve as CSV", run_sweep)
    p.add_argument("--csv", action="store_true", help="CSV on stdout (the only format)")
    p.add_argument("--points", type=at_least(2), default=101)


# One entry per subcommand: each adds its parser and names its `run(args)`; add a command by adding one here.
SUBCOMMANDS = [add_info, add_spectra, add_compress, add_sweep, add_evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m analysis", description="Inspect and PARA-compress LoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for an interrupt
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, and no traceback
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout once more at exit
        return 0
    except (ValueError, OSError) as err:  # AdapterError is a ValueError; OSError: e.g. an unwritable output
        print(error_line(err, getattr(args, "adapter", None) or args.command), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
