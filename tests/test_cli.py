"""CLI: each command on a real adapter; user errors are one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import analysis.export as export
from analysis.__main__ import main
from analysis.adapters import load_adapter
from analysis.cli_args import error_line, fraction
from tests.builders import factors_with_sigma

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_info_spectra_sweep(capsys, tiny_peft_dir):
    code, out, _ = run(capsys, "info", str(tiny_peft_dir))
    assert code == 0 and "modules      13" in out
    code, out, _ = run(capsys, "spectra", str(tiny_peft_dir), "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 13 and len(rows[0]["sigma"]) == 8
    code, out, _ = run(capsys, "sweep", str(tiny_peft_dir), "--csv", "--points", "11")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(table) == 11 and float(table[-1]["energy_kept"]) == 1.0


def test_cli_compress_writes_a_loadable_adapter(capsys, tmp_path, tiny_peft_dir):
    code, out, _ = run(
        capsys, "compress", str(tiny_peft_dir), "--params-fraction", "0.5", "--out", str(tmp_path / "o")
    )
    assert code == 0 and "wrote" in out
    assert load_adapter(tmp_path / "o").n_params <= 0.5 * load_adapter(tiny_peft_dir).n_params


def test_cli_user_errors_are_one_line(capsys, tmp_path, tiny_peft_dir):
    cases = [
        ("info", str(tmp_path / "missing")),
        ("compress", str(tiny_peft_dir), "--relative", "2", "--out", str(tmp_path / "o")),
        ("compress", str(tiny_peft_dir), "--energy", "0.9", "--out", str(tiny_peft_dir)),
        ("compress", str(tiny_peft_dir), "--energy", "0.9", "--format", "kohya", "--out", str(tmp_path / "k")),
        ("compress", str(tiny_peft_dir), "--params-fraction", "0", "--out", str(tmp_path / "nothing")),
        ("compress", str(tiny_peft_dir), "--energy", "0.9", "--out", "/proc/lora-rank-lab"),  # not writable: OSError
        ("compress", str(tiny_peft_dir), "--energy", "0.9", "--out", str(tmp_path), "--overwrite"),  # holds the source
        ("spectra", str(tiny_peft_dir), "--device", "mps"),
    ]
    for argv in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_cli_params_budget_with_min_rank_one_is_never_exceeded(capsys, tmp_path, tiny_peft_dir):
    n_params = load_adapter(tiny_peft_dir).n_params
    for budget in (n_params // 4, n_params // 4 + 37, n_params // 2):
        out_dir = tmp_path / f"o{budget}"
        code, _, err = run(capsys, "compress", str(tiny_peft_dir), "--params", str(budget), "--min-rank", "1",
                           "--out", str(out_dir))  # fmt: skip
        assert code == 0, err
        exported = load_adapter(out_dir)
        assert exported.n_params <= budget and min(m.r for m in exported.modules) >= 1
    code, _, err = run(capsys, "compress", str(tiny_peft_dir), "--params", "100", "--min-rank", "1", "--out",
                       str(tmp_path / "tiny"))  # fmt: skip
    assert code == 2 and "below the" in err and err.count("\n") == 1


def test_cli_compress_writes_a_kohya_input_back_as_kohya(capsys, tmp_path):
    B, A = factors_with_sigma([4.0, 2.0, 1.0, 0.5])
    prefix = "lora_unet_mid_block_attn1_to_k"
    save_file({f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": torch.tensor(4.0)},
              tmp_path / "in.safetensors")  # fmt: skip
    code, _, err = run(capsys, "compress", str(tmp_path / "in.safetensors"), "--mean-rank", "2", "--out",
                       str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    assert load_file(tmp_path / "out" / "adapter_model.safetensors")[f"{prefix}.lora_down.weight"].shape == (2, 40)
    assert not (tmp_path / "out" / "adapter_config.json").exists()


def test_cli_compress_writes_one_kohya_file_where_out_names_one(capsys, tmp_path):
    B, A = factors_with_sigma([4.0, 2.0, 1.0, 0.5])
    prefix = "lora_unet_mid_block_attn1_to_k"
    source = tmp_path / "in.safetensors"
    save_file({f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": torch.tensor(4.0)},
              source)  # fmt: skip
    original = source.read_bytes()
    out = tmp_path / "loras" / "in-para.safetensors"
    code, stdout, err = run(capsys, "compress", str(source), "--mean-rank", "2", "--out", str(out))
    assert code == 0 and out.is_file() and f"wrote {out}" in stdout, err
    assert load_adapter(out).modules[0].r == 2 and [p.name for p in out.parent.iterdir()] == [out.name]
    code, _, err = run(capsys, "compress", str(source), "--mean-rank", "1", "--out", str(out))
    assert code == 2 and "exists" in err and load_adapter(out).modules[0].r == 2  # kept without --overwrite
    code, _, err = run(capsys, "compress", str(source), "--mean-rank", "1", "--out", str(out), "--overwrite")
    assert code == 0 and load_adapter(out).modules[0].r == 1
    code, _, err = run(capsys, "compress", str(source), "--mean-rank", "1", "--out", str(source), "--overwrite")
    assert code == 2 and "is the source adapter" in err and source.read_bytes() == original
    taken = tmp_path / "taken.safetensors"
    taken.mkdir()
    code, _, err = run(capsys, "compress", str(source), "--mean-rank", "1", "--out", str(taken))
    assert code == 2 and "is a folder" in err


def test_cli_single_file_paths_and_write_failures_are_handled(capsys, tmp_path, monkeypatch):
    B, A = factors_with_sigma([4.0, 2.0, 1.0, 0.5])
    source = tmp_path / "in.safetensors"
    save_file({"lora_unet_x.lora_down.weight": A, "lora_unet_x.lora_up.weight": B}, source)
    cut = ("compress", str(source), "--mean-rank", "2", "--out")
    assert (
        run(capsys, *cut, str(tmp_path / "UPPER.SAFETENSORS"))[0] == 0 and (tmp_path / "UPPER.SAFETENSORS").is_file()
    )
    assert run(capsys, *cut, str(tmp_path / "folder.safetensors") + "/")[0] == 0  # a trailing slash: a folder
    assert (tmp_path / "folder.safetensors" / "adapter_model.safetensors").is_file()
    long_name = tmp_path / ("a" * 238 + ".safetensors")  # 250 bytes: a valid name, and so is its temporary's
    assert run(capsys, *cut, str(long_name))[0] == 0 and long_name.is_file()
    (tmp_path / "loop.safetensors").symlink_to(tmp_path / "loop.safetensors")
    code, _, err = run(capsys, *cut, str(tmp_path / "loop.safetensors"))
    assert code == 2 and "symlink loop" in err and err.count("\n") == 1

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(export, "save_file", disk_full)  # the writer's own error type, not an OSError
    for out in (tmp_path / "new" / "deeper" / "x.safetensors", tmp_path / "new" / "deeper" / "folder"):
        code, _, err = run(capsys, *cut, str(out))
        assert code == 2 and err.startswith(f"error: {out}: cannot write there (") and "No space left" in err
        assert not (tmp_path / "new").exists()  # the folders made for it went with it


def cli_process(*argv: str, module: str = "analysis") -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a fresh Python process from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def test_fractions_are_written_as_0_9_or_90_percent_and_a_bare_90_is_refused():
    assert fraction("0.9") == fraction("90%") == fraction(" 90 % ".replace(" ", "")) == pytest.approx(0.9)
    assert fraction("100%") == fraction("1") == 1.0 and fraction("0") == fraction("0%") == 0.0
    for text, says in [("90", "is more than 1; write 90% or 0.9"), ("150%", "outside 0%-100%"), ("-0.1", "negative"),
                       ("nan", "not a finite number"), ("ninety", "not a number")]:  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(says)):
            fraction(text)


def test_energy_in_percent_cuts_as_the_fraction_does(capsys, tmp_path, tiny_peft_dir):
    outs = []
    for value in ("90%", "0.9"):
        code, out, err = run(capsys, "compress", str(tiny_peft_dir), "--energy", value, "--out", str(tmp_path / value))
        assert code == 0, err
        outs.append(out.splitlines()[0])
    assert outs[0] == outs[1] and "energy 9" in outs[0]


def test_a_bare_90_and_other_usage_errors_are_one_line_from_the_process(tiny_peft_dir, tmp_path):
    cases = [
        (["compress", str(tiny_peft_dir), "--energy", "90", "--out", str(tmp_path / "o")], "write 90% or"),
        (["compress", str(tiny_peft_dir), "--out", str(tmp_path / "o")], "one of the arguments --energy"),
        (["info"], "the following arguments are required: adapter"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["sweep", str(tiny_peft_dir), "--points", "1"], "1 is below 2"),
    ]  # fmt: skip
    for argv, says in cases:
        done = cli_process(*argv)
        assert done.returncode == 2 and done.stdout == "", argv
        assert done.stderr.startswith("error: python -m analysis") and done.stderr.count("\n") == 1, done.stderr
        assert says in done.stderr and "; " in done.stderr and "usage:" not in done.stderr
    done = cli_process("train", "--task", "bbc-topic", "--budget-rank", "0", "--out", "x", module="analysis.training")
    assert done.returncode == 2 and done.stderr.startswith("error: python -m analysis.training train: argument")
    assert done.stderr.count("\n") == 1


def test_overwrite_error_names_the_flag(capsys, tmp_path, tiny_peft_dir):
    cut = ("compress", str(tiny_peft_dir), "--energy", "0.9", "--out", str(tmp_path / "o"))
    assert run(capsys, *cut)[0] == 0
    code, _, err = run(capsys, *cut)
    says = "exists and is not empty; choose another folder or add --overwrite to replace it"
    assert code == 2 and err == f"error: {tmp_path / 'o'}: {says}\n"
    assert run(capsys, *cut, "--overwrite")[0] == 0


def test_library_errors_without_a_path_are_given_the_adapter_and_a_fix(capsys, tiny_peft_dir):
    code, _, err = run(
        capsys, "spectra", str(tiny_peft_dir), "--device", "cuda" if not torch.cuda.is_available() else "mps"
    )
    assert code == 2 and err.startswith(f"error: {tiny_peft_dir}: --device ") and "use --device auto or cpu" in err
    assert error_line(ValueError("n_points must be >= 2, got 1"), "a.safetensors") == (
        "error: a.safetensors: n_points must be >= 2, got 1; see --help"
    )
    assert error_line(ValueError("/x/y: bad\nthing; fix it"), "other") == "error: /x/y: bad thing; fix it"


def test_help_and_usage_errors_import_no_engine():
    """`--help` starts fast because neither CLI imports torch, transformers or peft to build its parser."""
    code = (
        "import sys; from analysis.__main__ import build_parser as a; from analysis.training.__main__ import "
        "build_parser as b; a(); b(); print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    for module in ("analysis", "analysis.training"):
        done = cli_process("--help", module=module)
        assert done.returncode == 0 and f"usage: python -m {module}" in done.stdout
