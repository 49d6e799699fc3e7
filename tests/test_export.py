"""Export: PEFT structure, real peft round trips, kohya output, atomic and safe writes."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import analysis.export as export
from analysis import atomic
from analysis.adapters import load_adapter
from analysis.export import (
    adapter_file_bytes,
    adapter_zip_bytes,
    check_round_trip,
    compress_adapter,
    save_adapter,
    single_file_name,
)
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra, truncated_factors
from tests.builders import factors_with_sigma, make_peft_dir, tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def allocation_for(adapter, value, unit="energy", min_rank=0):
    return allocate_ranks(para_index(adapter_spectra(adapter)), value, unit, min_rank=min_rank)


def peft_layers(model) -> dict[str, torch.nn.Module]:
    return {
        name.removeprefix("base_model.model."): module
        for name, module in model.named_modules()
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {})
    }


@pytest.fixture
def adapter_and_cut(tiny_peft_dir):
    adapter = load_adapter(tiny_peft_dir)
    # a cut that keeps some modules at reduced rank and drops at least one
    index = para_index(adapter_spectra(adapter))
    for value in (0.6, 0.5, 0.4, 0.3, 0.2):
        allocation = allocate_ranks(index, value, "energy")
        if 0 in allocation.ranks:
            break
    assert 0 in allocation.ranks and max(allocation.ranks) < 8
    return adapter, allocation


def test_compress_adapter_structure(adapter_and_cut):
    adapter, allocation = adapter_and_cut
    out = compress_adapter(adapter, allocation)
    config = out.config
    assert config["rank_pattern"] == config["alpha_pattern"] and config["use_rslora"] is False
    dropped = {n for n, k in allocation.rank_map.items() if k == 0}
    assert set(config["exclude_modules"]) == dropped
    kept = [n for n, k in allocation.rank_map.items() if k > 0]
    assert len(out.tensors) == 2 * len(kept)
    for name in kept:
        assert out.tensors[f"base_model.model.{name}.lora_A.weight"].shape[0] == allocation.rank_map[name]
    assert "PARA rank report" in out.report


def test_export_round_trips_through_peft(tmp_path, tiny_peft_dir, adapter_and_cut):
    adapter, allocation = adapter_and_cut
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path / "out")
    assert check_round_trip(adapter, allocation, out).is_ok
    model = PeftModel.from_pretrained(tiny_bert(), out)
    layers = peft_layers(model)
    dropped = {n for n, k in allocation.rank_map.items() if k == 0}
    assert set(layers) == set(allocation.names) - dropped  # no missing or unexpected modules
    for module in adapter.modules:
        if module.name in dropped:
            continue
        B_k, A_k = truncated_factors(module, allocation.rank_map[module.name])
        expected = B_k @ A_k  # (out, k) @ (k, in)
        got = layers[module.name].get_delta_weight("default").double()
        assert torch.linalg.norm(got - expected) / torch.linalg.norm(expected) < 1e-5
    reloaded = load_adapter(out)
    assert {m.name: m.r for m in reloaded.modules} == {n: k for n, k in allocation.rank_map.items() if k}


def test_export_keep_everything_gives_the_same_outputs(tmp_path, tiny_peft_dir):
    adapter = load_adapter(tiny_peft_dir)
    out = save_adapter(compress_adapter(adapter, allocation_for(adapter, 1.0)), tmp_path / "out")
    ids = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(0))
    original = PeftModel.from_pretrained(tiny_bert(), tiny_peft_dir)(input_ids=ids).logits
    exported = PeftModel.from_pretrained(tiny_bert(), out)(input_ids=ids).logits
    torch.testing.assert_close(exported, original, rtol=1e-4, atol=1e-5)


def test_export_adalora_and_rslora_load_as_plain_lora(tmp_path):
    for name, kwargs in {"ada": {"adalora": True}, "rs": {"use_rslora": True, "rank_pattern": {"query": 4}}}.items():
        adapter = load_adapter(make_peft_dir(tmp_path / name, **kwargs))
        allocation = allocation_for(adapter, 0.9)
        out = save_adapter(compress_adapter(adapter, allocation), tmp_path / f"{name}-out")
        assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
        assert check_round_trip(adapter, allocation, out).max_rel_error < 1e-5
        PeftModel.from_pretrained(tiny_bert(), out)


def test_kohya_export_keeps_the_files_metadata_and_marks_the_new_ranks(tmp_path):
    prefix = "lora_unet_mid_block_attn1_to_k"
    B, A = factors_with_sigma([4.0, 2.0, 1.0, 0.5])
    source_metadata = {
        "ss_network_dim": "4", "ss_network_alpha": "8", "ss_base_model_version": "sdxl_base_v1-0",
        "ss_training_comment": "my style", "sshs_model_hash": "0123abcd", "format": "pt",
        "modelspec.title": "My style", "modelspec.hash_sha256": "0xdead",
    }  # fmt: skip
    tensors = {f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": torch.tensor(8.0)}
    save_file(tensors, tmp_path / "my_style.safetensors", metadata=source_metadata)
    adapter = load_adapter(tmp_path / "my_style.safetensors")
    compressed = compress_adapter(adapter, allocation_for(adapter, 2, "mean_rank"))
    out = save_adapter(compressed, tmp_path / "out")
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["modelspec.title"] == "My style"
    assert "sshs_model_hash" not in metadata and "modelspec.hash_sha256" not in metadata  # hashes of old weights
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("Dynamic", "2")  # one alpha: the max rank
    assert metadata["ss_training_comment"].startswith("PARA") and metadata["ss_training_comment"].endswith("my style")
    assert "ranks 2-2, 50.0% of the LoRA parameters" in metadata["ss_training_comment"]
    (tmp_path / "download.safetensors").write_bytes(adapter_file_bytes(compressed))  # what the app offers
    with safe_open(tmp_path / "download.safetensors", "pt") as f:
        assert f.metadata() == metadata and set(f.keys()) == set(load_file(out / "adapter_model.safetensors"))
    assert single_file_name(adapter.source) == "my_style-para.safetensors"
    assert single_file_name("my.style.safetensors (uploaded)") == "my.style-para.safetensors"
    diffusers = {"unet.mid.to_k.lora_A.weight": A, "unet.mid.to_k.lora_B.weight": B}
    old_config = json.dumps({"unet.r": 4, "unet.lora_alpha": 8})  # diffusers would build the config from it
    save_file(diffusers, tmp_path / "d.safetensors", metadata={"format": "pt", "lora_adapter_metadata": old_config})
    adapter = load_adapter(tmp_path / "d.safetensors")
    assert adapter.format == "diffusers" and adapter.modules[0].scaling == 2.0  # the header's alpha / r
    header = json.loads(
        compress_adapter(adapter, allocation_for(adapter, 2, "mean_rank")).metadata["lora_adapter_metadata"]
    )
    assert header == {"unet.r": 2, "unet.lora_alpha": 2, "unet.use_rslora": False,
                      "unet.rank_pattern": {"^mid\\.to_k": 2}, "unet.alpha_pattern": {"^mid\\.to_k": 2}}  # fmt: skip


def test_kohya_dora_modules_warn_and_keep_rank_one_with_their_magnitudes(tmp_path):
    tensors = {}
    for name, sigma in (("lora_unet_big", [4.0, 2.0]), ("lora_unet_small", [1e-3, 1e-4])):
        B, A = factors_with_sigma(sigma)
        tensors |= {f"{name}.lora_down.weight": A, f"{name}.lora_up.weight": B, f"{name}.alpha": torch.tensor(2.0)}
        tensors[f"{name}.dora_scale"] = torch.ones(1, 40)
    save_file(tensors, tmp_path / "dora.safetensors")
    adapter = load_adapter(tmp_path / "dora.safetensors")
    assert any("DoRA" in w and "at least rank 1" in w for w in adapter.warnings)
    allocation = allocation_for(adapter, 0.99)  # the cut alone would drop the small module and its magnitude
    assert allocation.rank_map == {"lora_unet_big": 2, "lora_unet_small": 1} and allocation.held == (
        "lora_unet_small",
    )
    compressed = compress_adapter(adapter, allocation)
    assert {"lora_unet_big.dora_scale", "lora_unet_small.dora_scale"} <= set(compressed.tensors)
    assert "DoRA modules kept at rank 1" in compressed.report


def test_kohya_alpha_is_stored_exactly_for_ranks_above_bfloat16s_integers(tmp_path):
    B, A = factors_with_sigma([1.0] * 300, out_features=310, in_features=320)
    tensors = {"lora_unet_x.lora_down.weight": A.bfloat16(), "lora_unet_x.lora_up.weight": B.bfloat16()}
    save_file(tensors | {"lora_unet_x.alpha": torch.tensor(300.0, dtype=torch.bfloat16)}, tmp_path / "bf.safetensors")
    adapter = load_adapter(tmp_path / "bf.safetensors")
    kept = compress_adapter(adapter, allocation_for(adapter, 257, "mean_rank")).tensors
    assert kept["lora_unet_x.lora_down.weight"].shape[0] == 257 and float(kept["lora_unet_x.alpha"]) == 257.0


def test_export_kohya_round_trip(tmp_path):
    prefix = "lora_unet_mid_block_attn1_to_k"
    B, A = factors_with_sigma([4.0, 2.0, 1.0, 0.5])
    save_file({f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": torch.tensor(8.0)},
              tmp_path / "in.safetensors")  # fmt: skip
    adapter = load_adapter(tmp_path / "in.safetensors")
    allocation = allocation_for(adapter, 2, "mean_rank")
    out = save_adapter(compress_adapter(adapter, allocation, format="kohya"), tmp_path / "out")
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors[f"{prefix}.lora_down.weight"].shape == (2, 40)
    assert float(tensors[f"{prefix}.alpha"]) == 2.0
    assert check_round_trip(adapter, allocation, out).max_rel_error < 1e-5
    with pytest.raises(ValueError, match="kohya input"):
        compress_adapter(load_adapter(make_peft_dir(tmp_path / "p")), allocation, format="kohya")


def logits(model_or_folder, ids: torch.Tensor) -> torch.Tensor:
    model = model_or_folder if isinstance(model_or_folder, torch.nn.Module) else tiny_bert()
    if not isinstance(model_or_folder, torch.nn.Module):
        model = PeftModel.from_pretrained(model, model_or_folder)
    return model(input_ids=ids).logits


def cut_that_drops(adapter):
    """An energy cut that drops some modules and keeps others (DoRA: one that holds some at rank 1 instead)."""
    index = para_index(adapter_spectra(adapter))
    for value in (0.6, 0.5, 0.4, 0.3, 0.2):
        allocation = allocate_ranks(index, value, "energy")
        if (0 in allocation.ranks or allocation.held) and any(allocation.ranks):
            assert not any(m.is_dora and not k for m, k in zip(adapter.modules, allocation.ranks, strict=True))
            return allocation
    raise AssertionError("no cut drops a module")


IDS = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "kwargs",
    [{"lora_bias": True}, {"exclude_modules": r".*layer\.1\..*"}, {"use_dora": True}],
    ids=["lora-bias", "regex-exclude", "dora"],
)
def test_export_carries_biases_magnitudes_and_exclusions_to_peft(tmp_path, kwargs):
    folder = make_peft_dir(tmp_path / "in", target_modules=["query", "value"], **kwargs)
    adapter = load_adapter(folder)
    # every rank kept: peft computes the same outputs (a lost bias or a regex read as a name would change them)
    full = save_adapter(compress_adapter(adapter, allocation_for(adapter, 1.0)), tmp_path / "full")
    torch.testing.assert_close(logits(full, IDS), logits(folder, IDS), rtol=1e-4, atol=1e-5)
    # a cut that drops modules: peft builds exactly the kept ones and every tensor in the file is one of theirs
    allocation = cut_that_drops(adapter)
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path / "cut")
    model = PeftModel.from_pretrained(tiny_bert(), out)
    assert set(peft_layers(model)) == {n for n, k in allocation.rank_map.items() if k}
    expected = {k.replace(".weight", ".default.weight").replace(".bias", ".default.bias") for k in load_file(
        out / "adapter_model.safetensors")}  # fmt: skip
    loaded = {k.replace(".lora_magnitude_vector", ".lora_magnitude_vector.default.weight") for k in expected}
    state = set(model.state_dict())
    assert loaded <= state, sorted(loaded - state)[:3]  # no key peft would report as unexpected


def test_export_of_a_single_file_with_model_paths_targets_its_modules(tmp_path, tiny_peft_dir):
    tensors = load_file(tiny_peft_dir / "adapter_model.safetensors")
    save_file({k.removeprefix("base_model.model."): v for k, v in tensors.items()}, tmp_path / "lora.safetensors")
    adapter = load_adapter(tmp_path / "lora.safetensors")  # diffusers-style keys: model paths, no config
    allocation = allocation_for(adapter, 0.9)
    out = save_adapter(compress_adapter(adapter, allocation, format="peft"), tmp_path / "out")
    layers = peft_layers(PeftModel.from_pretrained(tiny_bert(), out))
    assert set(layers) == {n for n, k in allocation.rank_map.items() if k}  # not peft's default targets
    same_layout = save_adapter(compress_adapter(adapter, allocation), tmp_path / "same")  # the default
    written = load_file(same_layout / "adapter_model.safetensors")
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in written)  # diffusers' keys, no alpha
    assert check_round_trip(adapter, allocation, same_layout).max_rel_error < 1e-5
    kohya = tmp_path / "kohya.safetensors"
    B, A = factors_with_sigma([2.0, 1.0])
    prefix = "lora_unet_mid_block_attn1_to_k"
    save_file({f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B}, kohya)
    adapter = load_adapter(kohya)
    with pytest.raises(ValueError, match="format='kohya'"):
        compress_adapter(adapter, allocation_for(adapter, 0.9), format="peft")


def test_compress_adapter_refuses_an_empty_cut_and_a_base_changing_init(tmp_path, tiny_peft_dir):
    adapter = load_adapter(tiny_peft_dir)
    with pytest.raises(ValueError, match="keeps no rank"):
        compress_adapter(adapter, allocation_for(adapter, 0.0, "params_fraction"))
    config = json.loads((tiny_peft_dir / "adapter_config.json").read_text())
    (tiny_peft_dir / "adapter_config.json").write_text(json.dumps(config | {"init_lora_weights": "pissa"}))
    adapter = load_adapter(tiny_peft_dir)
    with pytest.raises(ValueError, match="convert it to a plain LoRA"):
        compress_adapter(adapter, allocation_for(adapter, 0.9))


def test_round_trip_of_a_bfloat16_export_is_held_to_bfloat16_precision(tmp_path, tiny_peft_dir):
    tensors = load_file(tiny_peft_dir / "adapter_model.safetensors")
    save_file({k: v.bfloat16() for k, v in tensors.items()}, tiny_peft_dir / "adapter_model.safetensors")
    adapter = load_adapter(tiny_peft_dir)
    allocation = allocation_for(adapter, 1.0)
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path / "out")
    check = check_round_trip(adapter, allocation, out)
    assert check.tolerance == torch.finfo(torch.bfloat16).eps
    assert 1e-3 < check.max_rel_error < check.tolerance and check.is_ok  # rounded to bfloat16, nothing worse


def test_adapter_zip_bytes_loads_back(tmp_path, adapter_and_cut):
    adapter, allocation = adapter_and_cut
    data = adapter_zip_bytes(compress_adapter(adapter, allocation))
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
    (tmp_path / "dl.zip").write_bytes(data)
    assert check_round_trip(adapter, allocation, tmp_path / "dl.zip").is_ok


def test_save_adapter_refuses_source_and_non_empty_target(tmp_path, tiny_peft_dir, adapter_and_cut):
    adapter, allocation = adapter_and_cut
    compressed = compress_adapter(adapter, allocation)
    before = {f.name: f.read_bytes() for f in tiny_peft_dir.iterdir()}
    with pytest.raises(ValueError, match="source adapter"):
        save_adapter(compressed, tiny_peft_dir, overwrite=True)
    assert {f.name: f.read_bytes() for f in tiny_peft_dir.iterdir()} == before
    with pytest.raises(ValueError, match="source adapter"):  # above the source: replacing it would delete it
        save_adapter(compressed, tmp_path, overwrite=True)
    assert {f.name: f.read_bytes() for f in tiny_peft_dir.iterdir()} == before
    with pytest.raises(ValueError, match="no output folder"):
        save_adapter(compressed, "  ", overwrite=True)
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        save_adapter(compressed, target)
    with pytest.raises(ValueError, match="keep.txt"):  # overwrite replaces an earlier export, never other files
        save_adapter(compressed, target, overwrite=True)
    assert (target / "keep.txt").read_text() == "mine"
    earlier = save_adapter(compressed, tmp_path / "earlier")
    (earlier / "RANKS.md").write_text("an older cut")
    save_adapter(compressed, earlier, overwrite=True)
    assert (earlier / "RANKS.md").read_text() == compressed.report
    with pytest.raises(ValueError, match="is a file"):
        save_adapter(compressed, target / "keep.txt" / "sub")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        save_adapter(compressed, target / "keep.txt", overwrite=True)
    assert (target / "keep.txt").read_text() == "mine"
    with pytest.raises(OSError, match=r"^/proc/lora-rank-lab: cannot write there"):
        save_adapter(compressed, "/proc/lora-rank-lab")


def test_save_adapter_writes_files_others_can_read(tmp_path, adapter_and_cut):
    adapter, allocation = adapter_and_cut
    out = save_adapter(compress_adapter(adapter, allocation), tmp_path / "out")
    mask = atomic.umask()
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # as a folder the user made, not mkdtemp's 0700
    for file in out.iterdir():
        assert file.stat().st_mode & 0o777 == 0o666 & ~mask, file.name


def test_save_adapter_crash_midway_leaves_nothing(tmp_path, monkeypatch, adapter_and_cut):
    adapter, allocation = adapter_and_cut
    compressed = compress_adapter(adapter, allocation)

    def crash(compressed, folder):
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # the writer is killed after the first file

    monkeypatch.setattr(export, "_write_files", crash)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(compressed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # only the source; no partial folder


def test_save_adapter_killed_midway_leaves_no_adapter_at_the_target(tmp_path, tiny_peft_dir):
    """A real writer process is SIGKILLed after its first file: the target never appears, half-written or not."""
    out = tmp_path / "out"
    script = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
import analysis.export as export
from analysis.adapters import load_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra

def write_then_hang(compressed, folder):
    (folder / "adapter_model.safetensors").write_bytes(b"partial")
    print("first file written", flush=True)
    time.sleep(600)

export._write_files = write_then_hang
adapter = load_adapter({str(tiny_peft_dir)!r})
allocation = allocate_ranks(para_index(adapter_spectra(adapter)), 0.5)
export.save_adapter(export.compress_adapter(adapter, allocation), {str(out)!r})
"""
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "first file written"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "adapter"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.partial-")  # hidden, never at the target
    adapter = load_adapter(tiny_peft_dir)
    saved = save_adapter(compress_adapter(adapter, allocation_for(adapter, 0.5)), out)  # the next save works
    assert load_adapter(saved).n_params < adapter.n_params
