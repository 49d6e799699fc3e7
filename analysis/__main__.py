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
from collections.abc import Sequence

from analysis.adapters import AdapterError, LoraAdapter, load_adapter
from analysis.export import compress_adapter, save_adapter
from analysis.para import CutUnit, RankAllocation, allocate_ranks, para_index, para_sweep
from analysis.spectra import AdapterSpectra, adapter_spectra

# CLI flag -> cut unit; exactly one is required by `compress`.
CUT_FLAGS: dict[str, CutUnit] = {
    "energy": "energy",
    "tau": "tau",
    "relative": "relative",
    "params_fraction": "params_fraction",
    "params": "params",
    "mean_rank": "mean_rank",
}


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


def _cmd_info(adapter: LoraAdapter, args: argparse.Namespace) -> None:
    spectra = adapter_spectra(adapter, device=args.device)
    ranks = sorted({m.r for m in adapter.modules})
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


def _cmd_spectra(adapter: LoraAdapter, args: argparse.Namespace) -> None:
    rows = _spectra_rows(adapter_spectra(adapter, device=args.device))
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


def _cmd_compress(adapter: LoraAdapter, args: argparse.Namespace) -> None:
    unit, value = next((u, getattr(args, flag)) for flag, u in CUT_FLAGS.items() if getattr(args, flag) is not None)
    allocation = allocate_ranks(
        para_index(adapter_spectra(adapter, device=args.device)), value, unit, min_rank=args.min_rank
    )
    if args.format in ("kohya", "diffusers") and not adapter.is_single_file:
        raise ValueError(
            f"--format {args.format} needs a kohya / diffusers input, but {adapter.source} is {adapter.format}; "
            "use --format peft"
        )
    compressed = compress_adapter(adapter, allocation, format=args.format)  # None: a single file keeps its layout
    out = save_adapter(compressed, args.out, overwrite=args.overwrite)
    print(_describe(allocation))
    if allocation.held:
        print(f"kept {len(allocation.held)} DoRA module(s) at rank 1 that the cut drops (peft holds none at rank 0)")
    print(f"wrote {out}")


def _cmd_sweep(adapter: LoraAdapter, args: argparse.Namespace) -> None:
    sweep = para_sweep(para_index(adapter_spectra(adapter, device=args.device)), n_points=args.points)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description="Inspect and PARA-compress LoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("adapter", help="PEFT folder, AdaLoRA folder, kohya / diffusers .safetensors or .zip")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
        return p

    add("info", "summary of an adapter")
    p = add("spectra", "per-module singular spectra")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")

    p = add("compress", "PARA-compress to a global cut and write the adapter")
    cut = p.add_mutually_exclusive_group(required=True)
    cut.add_argument("--energy", type=float, help="fraction of energy to keep, in (0, 1]")
    cut.add_argument("--tau", type=float, help="absolute threshold on effective singular values")
    cut.add_argument("--relative", type=float, help="threshold relative to the largest singular value, in [0, 1]")
    cut.add_argument("--params-fraction", dest="params_fraction", type=float, help="fraction of LoRA params to keep")
    cut.add_argument("--params", type=int, help="number of LoRA params to keep at most")
    cut.add_argument("--mean-rank", dest="mean_rank", type=float, help="mean rank over modules")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (adapter_model.safetensors, RANKS.md; PEFT: its config); in kohya format a path "
        "ending in .safetensors is written as that one file",
    )
    p.add_argument("--min-rank", type=int, choices=[0, 1], default=0)
    p.add_argument(
        "--format",
        choices=["peft", "kohya", "diffusers"],
        help="default: a kohya / diffusers file keeps its own layout, anything else is written as peft",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output")

    p = add("sweep", "the whole params / energy / error curve as CSV")
    p.add_argument("--csv", action="store_true", help="CSV on stdout (the only format)")
    p.add_argument("--points", type=int, default=101)
    return parser


COMMANDS = {"info": _cmd_info, "spectra": _cmd_spectra, "compress": _cmd_compress, "sweep": _cmd_sweep}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        adapter = load_adapter(args.adapter)
        COMMANDS[args.command](adapter, args)
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, and no traceback
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout once more at exit
        return 0
    except (AdapterError, ValueError, OSError) as err:  # OSError: e.g. an output folder we may not write
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
