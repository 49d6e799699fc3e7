"""Adapter formats -> one `LoraAdapter` of `LoraModule`s (PEFT, AdaLoRA, kohya/diffusers, zips).

The one place that says which reader takes a file (`load_adapter`); the readers are in `analysis/formats/`,
one per format family, and the shared types in `analysis.formats.base` (re-exported here). Nothing here
runs code from a file, imports streamlit or prints.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from analysis.formats import lr_lora
from analysis.formats.base import (
    KOHYA_BASE_MODEL_KEYS,
    PEFT_PREFIX,
    AdapterFormat,
    LoraAdapter,
    LoraModule,
    ModuleKind,
    base_altering_init,
)
from analysis.formats.diffusers import is_diffusers_file, load_diffusers_file
from analysis.formats.kohya import load_kohya_file
from analysis.formats.peft import CONFIG_NAME, WEIGHT_NAMES, load_peft_folder
from analysis.limits import check_limits
from analysis.safe_io import AdapterError, read_safetensors
from analysis.safe_zip import extracted_zip

__all__ = [
    "CONFIG_NAME",
    "KOHYA_BASE_MODEL_KEYS",
    "PEFT_PREFIX",
    "WEIGHT_NAMES",
    "AdapterError",
    "AdapterFormat",
    "LoraAdapter",
    "LoraModule",
    "ModuleKind",
    "base_altering_init",
    "load_adapter",
]


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT folder, an AdaLoRA folder, a kohya/diffusers `.safetensors` file or a `.zip` of any.

    Args:
        path: folder or file. A folder may also hold the adapter one level down (a training run record
            with an `adapter/` folder).

    Returns:
        The adapter with one `LoraModule` per adapted module, in file order.

    Raises:
        AdapterError: with one line naming the file, the module and the fix.
    """
    path = Path(path).expanduser()
    try:
        if not path.exists():
            raise AdapterError(f"{path}: no such file or folder; check the path")
        if path.is_file() and path.name == CONFIG_NAME:
            path = path.parent  # the config names its folder
        if path.is_file() and path.suffix.lower() == ".zip":
            with extracted_zip(path) as root:
                try:
                    adapter = check_limits(_load_path(_find_adapter(root, str(path)), in_memory=True))
                    return replace(adapter, source=str(path))
                except AdapterError as err:  # name the file inside the zip, not the temporary folder
                    raise AdapterError(str(err).replace(str(root), str(path))) from None
        return check_limits(_load_path(_find_adapter(path, str(path)), in_memory=False))
    except AdapterError:
        raise
    except OSError as err:  # a folder that cannot be entered, a file that cannot be read
        raise AdapterError(f"{path}: cannot be read ({err.strerror or err}); check its permissions") from None
    except MemoryError:
        raise AdapterError(f"{path}: needs more memory than this machine has; load a smaller adapter") from None
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError, RecursionError) as err:
        # a check this loader lacks: still one line naming the file, never a traceback in the app or the CLI
        raise AdapterError(
            f"{path}: cannot be read as a LoRA adapter ({type(err).__name__}: {str(err)[:160]})"
        ) from None


def _find_adapter(path: Path, shown: str) -> Path:
    """The adapter folder or single file inside `path` (itself, or the one folder/file below it)."""
    if path.is_file():
        return path
    if (path / CONFIG_NAME).is_file() or lr_lora.can_read(path):
        return path
    configs = sorted({p.parent for name in (CONFIG_NAME, lr_lora.CONFIG_FILE) for p in _below(path, name)})
    if len(configs) == 1:
        return configs[0]
    if len(configs) > 1:
        names = ", ".join(str(c.relative_to(path)) for c in configs[:3])
        raise AdapterError(f"{shown}: holds several adapters ({names}); point at one of them")
    files = sorted(_below(path, "*.safetensors"))
    if len(files) == 1:
        return files[0]
    if len(files) > 1:
        names = ", ".join(str(f.relative_to(path)) for f in files[:3])
        raise AdapterError(f"{shown}: holds several .safetensors files ({names}); point at one of them")
    raise AdapterError(
        f"{shown}: no {CONFIG_NAME} found; point at a PEFT adapter folder (adapter_config.json + "
        "adapter_model.safetensors) or a kohya .safetensors file"
    )


SEARCH_DEPTH = 3  # folder levels searched below the given path: a run's adapter/, a zip's top folder or two


def _below(path: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` in `path` and up to SEARCH_DEPTH folder levels below it (not the whole tree:
    `/usr` is a path too)."""
    return [p for depth in range(SEARCH_DEPTH + 1) for p in path.glob("/".join(["*"] * depth + [pattern]))]


def _load_path(path: Path, *, in_memory: bool) -> LoraAdapter:
    if lr_lora.can_read(path):
        return lr_lora.read(path, in_memory=in_memory)
    if path.is_dir():
        return load_peft_folder(path, in_memory=in_memory)
    if path.suffix.lower() == ".safetensors":
        if (path.parent / CONFIG_NAME).is_file() and path.name == WEIGHT_NAMES[0]:
            return load_peft_folder(path.parent, in_memory=in_memory)
        return _load_single_file(path, in_memory=in_memory)
    if path.suffix.lower() in (".bin", ".pt", ".pth"):
        if (path.parent / CONFIG_NAME).is_file():
            return load_peft_folder(path.parent, in_memory=in_memory)
        raise AdapterError(f"{path}: a pickled file without {CONFIG_NAME} beside it; add the config or use a folder")
    raise AdapterError(f"{path}: unknown adapter format; expected a folder, .safetensors, .bin or .zip")


def _load_single_file(file: Path, *, in_memory: bool) -> LoraAdapter:
    """A single .safetensors without a config: diffusers' layout (lora_A/lora_B under component prefixes, maybe
    with its `lora_adapter_metadata` header) or kohya's / LyCORIS' (lora_down/lora_up, alpha per module)."""
    tensors, metadata, buffer = read_safetensors(file, in_memory=in_memory)
    if any(k.startswith(PEFT_PREFIX) for k in tensors):
        raise AdapterError(
            f"{file}: PEFT weights with no {CONFIG_NAME} beside them (the scale is unknown); copy the config there"
        )
    if is_diffusers_file(tensors, metadata):
        return load_diffusers_file(file, tensors, metadata, buffer)
    return load_kohya_file(file, tensors, metadata, buffer)
