"""Tiny crafted files for the hostile-input tests (issue 20), and a probe of the process's peak memory."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

from tests.builders import make_peft_dir


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())[1])


def peak_growth_mb(fn: Callable[[], object]) -> tuple[object, float]:
    """Run `fn` and return (its result or the exception it raised, MB the process's peak RSS rose above
    the RSS before it). The peak is reset first through /proc/self/clear_refs (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    try:
        result: object = fn()
    except Exception as err:  # the refusal is what the tests look at
        result = err
    return result, (_status_kib("VmHWM") - before) / 1024


def safetensors_with_header(path: Path, header: dict | str, data: bytes = b"") -> Path:
    """A safetensors file with exactly this header (a dict, or raw JSON text) and data bytes."""
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def peft_config_beside(folder: Path, source: Path | None = None, **changes: object) -> Path:
    """`folder` with a real peft adapter_config.json (from a tiny saved adapter) updated by `changes`."""
    folder.mkdir(parents=True, exist_ok=True)
    source = source or make_peft_dir(folder.parent / f"{folder.name}-source", r=2, target_modules=["query"])
    config = json.loads((source / "adapter_config.json").read_text()) | changes
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder
