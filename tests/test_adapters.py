"""Loading: every format gives the update peft itself computes; bad inputs give one clear AdapterError."""

from __future__ import annotations

import json
import re
import shutil
import zipfile

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from analysis.adapters import AdapterError, load_adapter
from analysis.spectra import adapter_spectra
from tests.builders import factors_with_sigma, make_adalora_with_rank_pattern, make_peft_dir, tiny_bert

CHOSEN = [4.0, 2.0, 1.0, 0.5]


def peft_deltas(folder) -> dict[str, torch.Tensor]:
    """Each LoRA layer's delta weight as peft computes it, keyed by module name."""
    model = PeftModel.from_pretrained(tiny_bert(), folder)
    deltas = {}
    for name, module in model.named_modules():
        has_lora = "default" in getattr(module, "lora_A", {}) or "default" in getattr(module, "lora_embedding_A", {})
        if hasattr(module, "get_delta_weight") and has_lora:
            deltas[name.removeprefix("base_model.model.")] = module.get_delta_weight("default")
    return deltas


def assert_matches_peft(folder) -> None:
    adapter = load_adapter(folder)
    deltas = peft_deltas(folder)
    assert {m.name for m in adapter.modules} == set(deltas)
    for m in adapter.modules:
        delta = m.scaling * (m.B.double() @ m.A.double())  # (out, r) @ (r, in)
        expected = deltas[m.name].double()
        if m.kind == "embedding":
            expected = expected.T  # peft stores embedding deltas as (num_embeddings, dim)
        torch.testing.assert_close(delta, expected.reshape(delta.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"use_rslora": True},
        {"rank_pattern": {"query": 4, "layer.1.output.dense": 2}, "alpha_pattern": {"key": 3}},
        {"target_modules": ["query", "value", "word_embeddings"]},
    ],
    ids=["plain", "rslora", "patterns", "embedding"],
)
def test_load_adapter_matches_peft_delta(tmp_path, kwargs):
    assert_matches_peft(make_peft_dir(tmp_path / "a", **kwargs))


def test_load_adapter_reads_adalora_with_folded_singular_values(tmp_path):
    folder = make_peft_dir(tmp_path / "a", adalora=True)
    adapter = load_adapter(folder)
    assert adapter.format == "adalora"
    assert_matches_peft(folder)


@pytest.mark.parametrize("lora_alpha", [16, 0])
def test_load_adapter_matches_peft_for_adalora_after_rank_allocation(tmp_path, lora_alpha):
    # peft resizes each module to its rank_pattern at load; with alpha 0 its scale then follows the kept rank
    folder = make_adalora_with_rank_pattern(tmp_path / "a", lora_alpha=lora_alpha)
    config = json.loads((folder / "adapter_config.json").read_text())
    kept = {sum(mask) for mask in config["rank_pattern"].values()}
    assert len(kept) > 1, "the allocation should leave modules at different ranks"
    assert_matches_peft(folder)


def _with_chosen_sigma(folder, module: str, parts: dict[str, torch.Tensor]) -> None:
    """Overwrite one module's factors in a saved adapter (keys `<module>.<part>` under peft's prefix)."""
    tensors = load_file(folder / "adapter_model.safetensors")
    for part, tensor in parts.items():
        key = next(k for k in tensors if k.startswith(f"base_model.model.{module}.{part}"))
        assert tensors[key].shape == tensor.shape, key
        tensors[key] = tensor
    save_file(tensors, folder / "adapter_model.safetensors")


def _conv_folder(folder):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(TinyConv(), LoraConfig(r=4, lora_alpha=8, target_modules=["conv"], init_lora_weights=False))
    model.save_pretrained(folder)
    B, A = factors_with_sigma(CHOSEN, out_features=6, in_features=27)
    _with_chosen_sigma(folder, "conv", {"lora_A": A.reshape(4, 3, 3, 3), "lora_B": B.reshape(6, 4, 1, 1)})
    return folder, "conv", 2.0


def _peft_folder(folder, module: str, scaling: float, **lora_kwargs):
    make_peft_dir(folder, **lora_kwargs)
    B, A = factors_with_sigma(CHOSEN, out_features=32, in_features=32)
    _with_chosen_sigma(folder, module, {"lora_A": A, "lora_B": B})
    return folder, module, scaling


def _embedding_folder(folder):
    make_peft_dir(folder, r=4, lora_alpha=8, target_modules=["word_embeddings"])
    B, A = factors_with_sigma(CHOSEN, out_features=32, in_features=100)  # (dim, r), (r, num_embeddings)
    module = "bert.embeddings.word_embeddings"
    _with_chosen_sigma(folder, module, {"lora_embedding_A": A, "lora_embedding_B": B})
    return folder, module, 2.0


def _adalora_folder(folder):
    make_peft_dir(folder, adalora=True, r=4, lora_alpha=8)
    U, V = factors_with_sigma([1.0] * 4, out_features=32, in_features=32)  # orthonormal columns / rows
    E = torch.tensor(CHOSEN).reshape(4, 1)
    module = "bert.encoder.layer.1.attention.self.value"
    _with_chosen_sigma(folder, module, {"lora_A": V, "lora_E": E, "lora_B": U})
    return folder, module, 8 / (4 + 1e-5)  # alpha / init_r, as peft's forward (+ its 1e-5)


def _kohya_file(folder):
    folder.mkdir()
    B, A = factors_with_sigma(CHOSEN)
    prefix = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    tensors = {f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": torch.tensor(2.0)}
    save_file(tensors, folder / "lora.safetensors")
    return folder / "lora.safetensors", prefix, 2.0 / 4


QUERY = "bert.encoder.layer.0.attention.self.query"
FORMATS = {
    "linear": lambda f: _peft_folder(f, QUERY, 2.0, r=4, lora_alpha=8),
    "rslora": lambda f: _peft_folder(f, QUERY, 8 / 4**0.5, r=4, lora_alpha=8, use_rslora=True),
    "patterns": lambda f: _peft_folder(f, QUERY, 12 / 4, r=8, rank_pattern={"query": 4}, alpha_pattern={"query": 12}),
    "embedding": _embedding_folder,
    "conv": _conv_folder,
    "adalora": _adalora_folder,
    "kohya": _kohya_file,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_load_adapter_then_spectra_recover_chosen_sigma_in_every_format(tmp_path, fmt):
    path, module, scaling = FORMATS[fmt](tmp_path / fmt)
    adapter = load_adapter(path)
    spectrum = adapter_spectra(adapter).spectra[adapter.modules.index(adapter.module(module))]
    torch.testing.assert_close(torch.from_numpy(spectrum.sigma), scaling * torch.tensor(CHOSEN, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_load_adapter_rank_pattern_and_scaling(tmp_path):
    folder = make_peft_dir(tmp_path / "a", rank_pattern={"query": 4}, alpha_pattern={"query": 2}, use_rslora=True)
    m = load_adapter(folder).module("bert.encoder.layer.0.attention.self.query")
    assert m.r == 4
    assert m.scaling == pytest.approx(2 / 4**0.5)


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return self.conv(x)


def test_load_adapter_flattens_conv(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(TinyConv(), LoraConfig(r=2, lora_alpha=4, target_modules=["conv"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "conv")
    m = load_adapter(tmp_path / "conv").module("conv")
    assert m.kind == "conv" and m.weight_shape == (6, 3, 3, 3)
    expected = model.base_model.model.conv.get_delta_weight("default")  # (6, 3, 3, 3)
    torch.testing.assert_close(m.scaling * m.B @ m.A, expected.reshape(6, -1), rtol=1e-5, atol=1e-6)


def test_load_adapter_reads_kohya_file(tmp_path, chosen_factors):
    B, A, sigma = chosen_factors
    file = tmp_path / "lora.safetensors"
    prefix = "lora_unet_down_blocks_0_attn1_to_q"
    save_file(
        {f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": torch.tensor(2.0)}, file
    )
    adapter = load_adapter(file)
    assert adapter.format == "kohya"
    (m,) = adapter.modules
    assert m.name == prefix and m.scaling == pytest.approx(2.0 / 4)
    torch.testing.assert_close(m.B @ m.A, B @ A)


def test_load_adapter_reads_a_zero_kohya_alpha_as_the_rank_and_refuses_odd_ones(tmp_path, chosen_factors):
    B, A, _ = chosen_factors
    prefix = "lora_unet_down_blocks_0_attn1_to_q"

    def load_with(alpha: torch.Tensor):
        save_file({f"{prefix}.lora_down.weight": A, f"{prefix}.lora_up.weight": B, f"{prefix}.alpha": alpha},
                  tmp_path / "lora.safetensors")  # fmt: skip
        return load_adapter(tmp_path / "lora.safetensors")

    (m,) = load_with(torch.tensor(0.0)).modules
    assert m.scaling == 1.0  # kohya's LoRAModule: alpha 0 (or none) means alpha = rank
    for odd in (torch.tensor([1.0, 2.0, 3.0]), torch.tensor(True), torch.tensor([])):
        with pytest.raises(AdapterError, match="must be one float"):
            load_with(odd)


def test_load_adapter_passes_a_lora_bias_through(tmp_path):
    folder = make_peft_dir(tmp_path / "a", lora_bias=True, target_modules=["query", "value"])
    adapter = load_adapter(folder)
    assert len(adapter.modules) == 4
    biases = [k for k in adapter.extra_tensors if k.endswith(".lora_B.bias")]
    assert len(biases) == 4
    assert any("LoRA bias" in w for w in adapter.warnings)
    assert_matches_peft(folder)


def test_load_adapter_warns_when_peft_changes_the_base_at_load(tmp_path, tiny_peft_dir):
    config = json.loads((tiny_peft_dir / "adapter_config.json").read_text())
    for init in ("pissa_niter_4", "olora", "corda", "lora_ga", "gaussian"):
        (tiny_peft_dir / "adapter_config.json").write_text(json.dumps(config | {"init_lora_weights": init}))
        warned = any("changes the base weights" in w for w in load_adapter(tiny_peft_dir).warnings)
        assert warned == (init != "gaussian"), init


def test_load_adapter_reads_zip_and_bin(tmp_path, tiny_peft_dir):
    reference = load_adapter(tiny_peft_dir)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in tiny_peft_dir.iterdir():
            z.write(f, f"my-adapter/{f.name}")
    zipped = load_adapter(archive)
    assert zipped.fingerprint == reference.fingerprint
    assert zipped.source == str(archive)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(tiny_peft_dir / "adapter_config.json", bin_dir)
    torch.save(load_file(tiny_peft_dir / "adapter_model.safetensors"), bin_dir / "adapter_model.bin")
    from_bin = load_adapter(bin_dir)
    for a, b in zip(reference.modules, from_bin.modules, strict=True):
        torch.testing.assert_close(a.A, b.A)


def test_load_adapter_keeps_modules_to_save(tmp_path):
    folder = make_peft_dir(tmp_path / "a", modules_to_save=["classifier"])
    adapter = load_adapter(folder)
    assert any("classifier" in k for k in adapter.extra_tensors)


def _rewrite(folder, mutate):
    tensors = load_file(folder / "adapter_model.safetensors")
    mutate(tensors)
    save_file(tensors, folder / "adapter_model.safetensors")


def test_load_adapter_bad_inputs_name_file_and_module(tmp_path, tiny_peft_dir):
    first_a = next(k for k in load_file(tiny_peft_dir / "adapter_model.safetensors") if k.endswith("lora_A.weight"))
    module = first_a.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
    cases = {}

    def case(name, mutate):
        folder = tmp_path / name
        shutil.copytree(tiny_peft_dir, folder)
        mutate(folder)
        cases[name] = folder

    case("nan", lambda f: _rewrite(f, lambda t: t[first_a].fill_(float("nan"))))
    case("half", lambda f: _rewrite(f, lambda t: t.pop(first_a)))
    case("inner", lambda f: _rewrite(f, lambda t: t.__setitem__(first_a, torch.ones(3, t[first_a].shape[1]))))
    case("no-config", lambda f: (f / "adapter_config.json").unlink())
    case("truncated", lambda f: (f / "adapter_model.safetensors").write_bytes(
        (f / "adapter_model.safetensors").read_bytes()[:-100]))  # fmt: skip
    case("empty", lambda f: (f / "adapter_model.safetensors").write_bytes(b""))
    case("full-model", lambda f: save_file(tiny_bert().state_dict(), f / "adapter_model.safetensors"))
    config_r = json.loads((tiny_peft_dir / "adapter_config.json").read_text()) | {"r": 4}
    case("rank", lambda f: (f / "adapter_config.json").write_text(json.dumps(config_r)))
    expected = {
        "nan": "NaN or Inf values in module",
        "half": "only half of the pair",
        "inner": "inner dimensions",
        "no-config": "no adapter_config.json beside them",
        "truncated": "truncated",
        "empty": "empty",
        "full-model": "full model",
        "rank": "config says 4",
    }
    for name, folder in cases.items():
        with pytest.raises(AdapterError, match=expected[name]) as info:
            load_adapter(folder)
        message = str(info.value)
        assert "\n" not in message
        assert str(folder) in message, f"{name}: {message}"
        if name in ("nan", "half", "inner", "rank"):
            assert module in message, name


def test_load_adapter_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(AdapterError, match="no such file"):
        load_adapter(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AdapterError, match="unknown adapter format"):
        load_adapter(tmp_path / "notes.txt")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_load_adapter_finite_check_is_exact(tmp_path, tiny_peft_dir, dtype):
    first_a = next(k for k in load_file(tiny_peft_dir / "adapter_model.safetensors") if k.endswith("lora_A.weight"))

    def adapter_with(name: str, value: float):
        folder = tmp_path / name
        shutil.copytree(tiny_peft_dir, folder)
        _rewrite(folder, lambda t: t.update({k: v.to(dtype) for k, v in t.items()}) or t[first_a].fill_(value))
        return folder

    # finite values whose sum overflows: the quick sum is not enough, the exact check must accept them
    assert load_adapter(adapter_with("huge", torch.finfo(dtype).max)).modules
    with pytest.raises(AdapterError, match="NaN or Inf values in module"):
        load_adapter(adapter_with("inf", -float("inf")))


def _with_config(folder, **changes):
    config = json.loads((folder / "adapter_config.json").read_text()) | changes
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _with_raw_config(folder, text: str):
    (folder / "adapter_config.json").write_text(text)


def _with_header(folder, mutate):
    """Rewrite the safetensors header's JSON (same data bytes) with `mutate(header)`."""
    raw = (folder / "adapter_model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    mutate(header)
    text = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def _encrypted_zip(folder, archive):
    """A zip of `folder` whose entries are flagged encrypted (bit 0 of the general purpose flags, set in the
    local and the central headers): zipfile then asks for a password when it reads one."""
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"adapter/{f.name}")
    data = bytearray(archive.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start >= 0:
            data[start + flags_at] |= 0x1
            start = data.find(signature, start + 4)
    archive.write_bytes(bytes(data))
    return archive


BAD_INPUTS = {
    "r null": (lambda f: _with_config(f, r=None), "r is null, not a whole number"),
    "r fraction": (lambda f: _with_config(f, r=7.5), "r is 7.5, not a whole number"),
    "alpha nan": (
        lambda f: _with_raw_config(
            f, (f / "adapter_config.json").read_text().replace('"lora_alpha": 16', '"lora_alpha": NaN')
        ),
        "lora_alpha is NaN, not a finite number",
    ),  # fmt: skip
    "rank_pattern list": (lambda f: _with_config(f, rank_pattern=["query"]), "rank_pattern is"),
    "bad regex": (lambda f: _with_config(f, alpha_pattern={"query(": 4}), "a valid regular expression"),
    "deep json": (lambda f: _with_raw_config(f, "[" * 50_000 + "]" * 50_000), "not valid JSON"),
    "int8 factors": (
        lambda f: _rewrite(f, lambda t: t.update({k: v.to(torch.int8) for k, v in t.items()})),
        "int8 factors",
    ),  # fmt: skip
    "float8 factors": (
        lambda f: _rewrite(f, lambda t: t.update({k: v.to(torch.float8_e4m3fn) for k, v in t.items()})),
        "float8_e4m3fn factors",
    ),  # fmt: skip
    "two adapters": (
        lambda f: _rewrite(
            f, lambda t: t.update({k.replace(".weight", ".other.weight"): v.clone() for k, v in list(t.items())})
        ),
        "several adapters",
    ),  # fmt: skip
    "lora_E in LoRA": (
        lambda f: _rewrite(
            f,
            lambda t: t.update(
                {k.replace("lora_A.weight", "lora_E"): torch.ones(8, 1) for k in list(t) if "lora_A" in k}
            ),
        ),
        "lora_E",
    ),  # fmt: skip
    "ndim": (
        lambda f: _rewrite(f, lambda t: t.update({k: v[..., None, None] for k, v in t.items() if "lora_B" in k})),
        "2 and 4 dimensions",
    ),  # fmt: skip
    "metadata list": (lambda f: _with_header(f, lambda h: h.__setitem__("__metadata__", ["x"])), "__metadata__"),
    "bool shape": (
        lambda f: _with_header(
            f, lambda h: next(v for k, v in h.items() if k != "__metadata__").__setitem__("shape", [True, 256])
        ),
        "invalid shape",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_load_adapter_refuses_bad_values_in_one_line(tmp_path, tiny_peft_dir, case):
    mutate, expected = BAD_INPUTS[case]
    mutate(tiny_peft_dir)
    with pytest.raises(AdapterError, match=re.escape(expected)) as info:
        load_adapter(tiny_peft_dir)
    assert "\n" not in str(info.value) and str(tiny_peft_dir) in str(info.value)


def test_load_adapter_names_the_zip_and_refuses_an_encrypted_one(tmp_path, tiny_peft_dir):
    _with_config(tiny_peft_dir, r=None)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in tiny_peft_dir.iterdir():
            z.write(f, f"my-adapter/{f.name}")
    with pytest.raises(AdapterError, match=re.escape(f"{archive}/my-adapter/adapter_config.json: r is")):
        load_adapter(archive)
    with pytest.raises(AdapterError, match="cannot extract"):
        load_adapter(_encrypted_zip(tiny_peft_dir, tmp_path / "locked.zip"))


def test_load_adapter_refuses_loha_and_lokr_quoting_a_weight_key(tmp_path, chosen_factors):
    B, A, _ = chosen_factors
    prefix = "lora_unet_down_blocks_0_resnets_0_conv1"
    alpha = {f"{prefix}.alpha": torch.tensor(4.0)}  # first in the file: the message must not quote it
    save_file(alpha | {f"{prefix}.hada_w1_a": A, f"{prefix}.hada_w1_b": B}, tmp_path / "loha.safetensors")
    with pytest.raises(AdapterError, match=re.escape(f"'{prefix}.hada_w1_a' is a LyCORIS LoHa")):
        load_adapter(tmp_path / "loha.safetensors")
    lokr = alpha | {f"{prefix}.lokr_w1": torch.ones(2, 2), f"{prefix}.lokr_w2": torch.ones(3, 3)}
    lokr |= {"lora_unet_other.lora_down.weight": A, "lora_unet_other.lora_up.weight": B}  # LoRA beside LoKr too
    save_file(lokr, tmp_path / "lokr.safetensors")
    with pytest.raises(AdapterError, match=re.escape(f"'{prefix}.lokr_w1' is a LyCORIS LoHa / LoKr")):
        load_adapter(tmp_path / "lokr.safetensors")


def test_load_adapter_reads_an_empty_module_as_a_zero_update(tmp_path, tiny_peft_dir):
    first_a = next(k for k in load_file(tiny_peft_dir / "adapter_model.safetensors") if k.endswith("lora_A.weight"))
    module = first_a.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
    _rewrite(tiny_peft_dir, lambda t: t.update({first_a: t[first_a][:0], first_a.replace("_A", "_B"): t[
        first_a.replace("_A", "_B")][:, :0]}))  # fmt: skip
    _with_config(tiny_peft_dir, rank_pattern={f"^{re.escape(module)}": 0})
    adapter = load_adapter(tiny_peft_dir)
    empty = adapter.module(module)
    assert empty.r == 0 and empty.scaling == 0.0
    assert adapter_spectra(adapter).spectra[adapter.modules.index(empty)].energy == 0.0


def test_kohya_base_model_comes_from_its_training_metadata(tmp_path):
    B, A = factors_with_sigma([2.0, 1.0])
    tensors = {"lora_unet_x.lora_down.weight": A, "lora_unet_x.lora_up.weight": B}
    metadata = {"ss_base_model_version": "sdxl_base_v1-0", "ss_sd_model_name": "sd_xl_base_1.0.safetensors"}
    save_file(tensors, tmp_path / "named.safetensors", metadata=metadata)
    save_file(tensors, tmp_path / "version.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    save_file(tensors, tmp_path / "bare.safetensors")
    assert load_adapter(tmp_path / "named.safetensors").base_model == "sd_xl_base_1.0.safetensors"
    assert load_adapter(tmp_path / "version.safetensors").base_model == "sdxl_base_v1-0"
    assert load_adapter(tmp_path / "bare.safetensors").base_model is None
