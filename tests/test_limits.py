"""Limits before work (issue 20, items 2, 4 and 7): each crafted file is tiny and made here, refused with one
line naming the file and the fix (or handled), with the process's peak memory held to a few MB."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.__main__ import main
from analysis.adapters import AdapterError, load_adapter
from analysis.export import adapter_file_bytes, check_round_trip, compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.safe_io import MAX_CONFIG_BYTES, MAX_TENSORS
from analysis.spectra import adapter_spectra
from tests.builders import make_peft_dir
from tests.hostile import peak_growth_mb, peft_config_beside, safetensors_with_header

ROOT = Path(__file__).resolve().parents[1]
PEAK_MB = 64  # what a refusal may add to the process's peak RSS; each bomb below asks for 400 MB to 8 GB


def refused(path: Path, match: str) -> AdapterError:
    """Load `path` and return the AdapterError, checking it is one line that names the file."""
    err, grown = peak_growth_mb(lambda: load_adapter(path))
    assert isinstance(err, AdapterError), err
    message = str(err)
    assert "\n" not in message and str(path) in message, message
    assert match in message, message
    assert grown < PEAK_MB, f"peak RSS rose {grown:.0f} MB"
    return err


def test_a_stride_0_view_in_a_bin_is_refused(tmp_path):
    folder = peft_config_beside(tmp_path / "a", r=2)
    name = "base_model.model.bert.encoder.layer.0.attention.self.query"
    state = {f"{name}.lora_A.weight": torch.zeros(1).expand(2, 10**8), f"{name}.lora_B.weight": torch.ones(32, 2)}
    torch.save(state, folder / "adapter_model.bin")  # 4 bytes shown as 2e8 values (800 MB as float32)
    assert (folder / "adapter_model.bin").stat().st_size < 4000
    refused(folder, "stride-0 view")


def test_a_deflate_bomb_in_a_bin_is_refused_before_unpickling(tmp_path):
    folder = peft_config_beside(tmp_path / "a", r=2)
    plain = tmp_path / "plain.bin"
    torch.save({"x": torch.ones(2)}, plain)
    bomb = zipfile.ZipFile(folder / "adapter_model.bin", "w", zipfile.ZIP_DEFLATED, compresslevel=1)
    with zipfile.ZipFile(plain) as src, bomb as z:
        for info in src.infolist():
            data = src.read(info)
            z.writestr(info.filename, b"\0" * (160 << 20) if info.filename.endswith("data/0") else data)
    assert (folder / "adapter_model.bin").stat().st_size < 1 << 20  # 160 MB of zeros in under 1 MB
    refused(folder, "is compressed")


def test_a_legacy_pickle_is_refused_before_unpickling(tmp_path):
    folder = peft_config_beside(tmp_path / "a", r=2)
    torch.save({"x": torch.ones(2)}, folder / "adapter_model.bin", _use_new_zipfile_serialization=False)
    refused(folder, "not torch's zip format")


def test_zero_size_factors_with_a_huge_rank_are_refused(tmp_path):
    header = {
        "m.lora_down.weight": {"dtype": "F32", "shape": [10**8, 0], "data_offsets": [0, 0]},
        "m.lora_up.weight": {"dtype": "F32", "shape": [0, 10**8], "data_offsets": [0, 0]},
    }
    file = safetensors_with_header(tmp_path / "r1e8.safetensors", header)
    assert file.stat().st_size < 300
    refused(file, "has rank 100,000,000 but factors")


def test_a_huge_config_through_a_symlink_is_refused_unread(tmp_path):
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((source / "adapter_model.safetensors").read_bytes())
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(8 << 30)  # 8 GiB, sparse: nothing on disk
    (folder / "adapter_config.json").symlink_to(huge)
    refused(folder, f"over the {MAX_CONFIG_BYTES >> 20} MiB a config may have")


def test_a_huge_config_inside_a_zip_is_refused_from_its_directory(tmp_path):
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/adapter_config.json", "{" + " " * (MAX_CONFIG_BYTES + 1) + "}")
        z.write(source / "adapter_model.safetensors", "a/adapter_model.safetensors")
    assert archive.stat().st_size < 200_000
    refused(archive, "a config may have")


def test_too_many_tensors_are_refused_before_any_module_is_built(tmp_path):
    entry = '{"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}'
    header = "{" + ",".join(f'"m{i}.lora_down.weight": {entry}' for i in range(MAX_TENSORS + 1)) + "}"
    file = safetensors_with_header(tmp_path / "many.safetensors", header)  # 4 MB; zipped, 200 kB
    refused(file, "over the limit")


def _overlapping_zip(path: Path) -> Path:
    """Two directory entries whose data is the same compressed stream (the overlap bomb's trick)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.safetensors", b"\0" * 100_000)
        z.writestr("b.safetensors", b"\0" * 100_000)
    raw = bytearray(path.read_bytes())
    second = raw.rfind(b"PK\x01\x02")  # the second central directory record
    raw[second + 42 : second + 46] = (0).to_bytes(4, "little")  # its local header offset -> the first entry's
    path.write_bytes(bytes(raw))
    return path


def test_overlapping_zip_entries_are_refused(tmp_path):
    refused(_overlapping_zip(tmp_path / "overlap.zip"), "overlap in the archive")


def _zip_temp_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("lora-rank-lab-zip-*")}


def test_a_zip_without_an_adapter_is_refused_before_anything_is_extracted(tmp_path):
    archive = tmp_path / "junk.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("data/big.bin", b"\0" * (160 << 20))  # 160 MB that used to reach the temp folder
    before = _zip_temp_folders()
    refused(archive, "no adapter_config.json or .safetensors file in the zip")
    assert _zip_temp_folders() == before


def test_a_zip_extracts_only_the_adapter_files(tmp_path):
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for file in source.iterdir():
            z.write(file, f"a/{file.name}")
        z.writestr("a/checkpoint/optimizer.pt", os.urandom(1 << 20) * 48, zipfile.ZIP_STORED)  # 48 MB, not needed
    adapter, grown = peak_growth_mb(lambda: load_adapter(archive))
    assert not isinstance(adapter, Exception), adapter
    assert adapter.source == str(archive) and len(adapter.modules) == 2 and grown < 32


def test_a_dead_processes_extraction_folder_is_removed_by_the_next_one(tmp_path):
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in source.iterdir():
            z.write(file, f"a/{file.name}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = Path(tempfile.mkdtemp(prefix=f"lora-rank-lab-zip-{dead.pid}-"))
    (left / "adapter_model.safetensors").write_bytes(b"half")
    live = Path(tempfile.mkdtemp(prefix=f"lora-rank-lab-zip-{os.getppid()}-"))  # a running process's: kept
    try:
        load_adapter(archive)
        assert not left.exists() and live.exists()
    finally:
        shutil.rmtree(live, ignore_errors=True)


@pytest.mark.slow
def test_a_killed_extraction_is_cleaned_up_by_the_next_one(tmp_path):
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in source.iterdir():
            z.write(file, f"a/{file.name}")
    script = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\nfrom analysis.safe_zip import extracted_zip\n"
        f"with extracted_zip(Path({str(archive)!r})) as root:\n    print(root, flush=True)\n    time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        left = Path(child.stdout.readline().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert left.name.startswith(f"lora-rank-lab-zip-{child.pid}-") and left.is_dir()  # what the kill left
    load_adapter(archive)
    assert not left.exists()


def test_an_alpha_that_overflows_is_refused_in_the_loader_and_the_cli(tmp_path, capsys):
    folder = tmp_path / "a"
    make_peft_dir(folder, r=2, target_modules=["query"])
    config = json.loads((folder / "adapter_config.json").read_text()) | {"lora_alpha": 1e308}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    refused(folder, "fix lora_alpha")
    capsys.readouterr()  # what building the adapter printed (a transformers warning)
    for command in (
        ["spectra", str(folder)],
        ["compress", str(folder), "--energy", "0.9", "--out", str(tmp_path / "o")],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {folder}") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_float16_factors_near_65504_export_finite(tmp_path):
    g = torch.Generator().manual_seed(0)
    A = (6e4 * torch.rand(2, 8, generator=g)).half()  # near float16's largest value, 65504
    B = (6e4 * torch.rand(8, 2, generator=g)).half()
    file = tmp_path / "big.safetensors"
    save_file({"m.lora_down.weight": A, "m.lora_up.weight": B, "m.alpha": torch.tensor(2.0)}, file)
    adapter = load_adapter(file)
    allocation = allocate_ranks(para_index(adapter_spectra(adapter)), 1.0)
    compressed = compress_adapter(adapter, allocation)
    assert all(bool(torch.isfinite(t).all()) for t in compressed.tensors.values())
    assert compressed.tensors["m.lora_up.weight"].dtype == torch.float32  # float16 cannot hold sqrt(sigma) here
    out = save_adapter(compressed, tmp_path / "out.safetensors")
    assert check_round_trip(adapter, allocation, out).is_ok


def test_nothing_non_finite_is_written(tmp_path, tiny_peft_dir):
    adapter = load_adapter(tiny_peft_dir)
    compressed = compress_adapter(adapter, allocate_ranks(para_index(adapter_spectra(adapter)), 0.9))
    bad = dict(compressed.tensors)
    key = next(iter(bad))
    bad[key] = bad[key].clone()
    bad[key][0, 0] = float("nan")
    import dataclasses

    poisoned = dataclasses.replace(compressed, tensors=bad)
    with pytest.raises(ValueError, match="holds NaN or Inf values, so nothing is written"):
        save_adapter(poisoned, tmp_path / "out")
    with pytest.raises(ValueError, match="holds NaN or Inf"):
        adapter_file_bytes(poisoned)
    assert not (tmp_path / "out").exists()


def test_a_duplicate_key_in_a_safetensors_header_is_refused(tmp_path):
    entry = '{"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}'
    header = f'{{"m.lora_down.weight": {entry}, "m.lora_down.weight": {entry}}}'  # safetensors rejects it too
    refused(safetensors_with_header(tmp_path / "dup.safetensors", header, b"\0" * 4), "appears twice")


def test_control_characters_in_names_are_escaped_in_the_one_line_error(tmp_path):
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for folder in ("x\n\x1b[31mred", "y"):  # two adapters: the error lists their folders
            for file in source.iterdir():
                z.write(file, f"{folder}/{file.name}")
    message = str(refused(archive, "holds several adapters"))
    assert "\x1b" not in message and "\\x1b[31mred" in message and "\\n" in message


def test_a_huge_integer_in_a_config_is_one_line_without_python_advice(tmp_path):
    folder = peft_config_beside(tmp_path / "a")
    text = (folder / "adapter_config.json").read_text().replace('"r": 2', '"r": ' + "9" * 5000)
    (folder / "adapter_config.json").write_text(text)
    message = str(refused(folder, "not valid JSON"))
    assert "set_int_max_str_digits" not in message and len(message) < 300
