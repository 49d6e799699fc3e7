"""Adapters under a folder, for a folder load that says what it found and where (nothing is loaded here).

A candidate is a PEFT folder (it holds `adapter_config.json`; not searched further) or a `.safetensors` file
outside one. The search goes a few levels down, skips hidden folders (`~/.cache` holds hub downloads that
are not the user's adapter) and symlinked folders, and stops after a fixed number of entries, so that `~/`
or `/` answers at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CONFIG_NAME = "adapter_config.json"
SEARCH_DEPTH = 3  # as the loader: a run's adapter/, a zip's top folder or two
MAX_ENTRIES = 20_000  # directory entries read at most


@dataclass(frozen=True)
class FoundAdapter:
    """One adapter candidate below the searched folder."""

    path: Path
    kind: Literal["PEFT folder", "safetensors file"]
    n_bytes: int
    """Size on disk: the file, or the files directly in the PEFT folder."""
    depth: int
    """Folder levels below the searched folder: of a PEFT folder itself, of the folder holding a file."""


@dataclass(frozen=True)
class Search:
    """What `find_adapters` saw: the candidates, and what it did not look into."""

    folder: Path
    found: tuple[FoundAdapter, ...]
    n_hidden_skipped: int
    is_truncated: bool
    """True when MAX_ENTRIES was reached before the whole depth was searched."""


def find_adapters(folder: str | Path, *, depth: int = SEARCH_DEPTH) -> Search:
    """Adapter candidates in `folder` and up to `depth` levels below it, nearest first.

    Args:
        folder: an existing folder (`~` is expanded).
        depth: folder levels to search below it.

    Returns:
        A `Search`; `found` is sorted by depth, then path.

    Example:
        `find_adapters("~/")` lists `~/runs/bbc/adapter` (PEFT folder, depth 2) but not
        `~/.cache/huggingface/...` (one hidden folder skipped).
    """
    root = Path(folder).expanduser()
    found: list[FoundAdapter] = []
    n_hidden = 0
    n_entries = 0
    level = [root]
    for d in range(depth + 1):
        below: list[Path] = []
        for current in level:
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError:  # unreadable folder: not a candidate
                continue
            n_entries += len(entries)
            if any(e.name == CONFIG_NAME and _is(e.is_file) for e in entries):
                size = sum(_size(e) for e in entries if _is(e.is_file, follow_symlinks=False))
                found.append(FoundAdapter(Path(current), "PEFT folder", size, d))
                continue  # the folder is the adapter: what lies below it belongs to it
            for e in entries:
                if e.name.startswith("."):
                    n_hidden += _is(e.is_dir)
                elif e.name.lower().endswith(".safetensors") and _is(e.is_file):
                    found.append(FoundAdapter(Path(e.path), "safetensors file", _size(e), d))
                elif _is(e.is_dir, follow_symlinks=False):
                    below.append(Path(e.path))
            if n_entries >= MAX_ENTRIES:
                return Search(root, tuple(sorted(found, key=_order)), n_hidden, True)
        level = below
    return Search(root, tuple(sorted(found, key=_order)), n_hidden, False)


def _is(test, **kwargs) -> bool:
    """An entry's type test, False where it cannot be answered (`/proc/1/cwd`: a link we may not follow)."""
    try:
        return bool(test(**kwargs))
    except OSError:
        return False


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_size
    except OSError:
        return 0


def _order(f: FoundAdapter) -> tuple[int, str]:
    return f.depth, str(f.path)


def describe(f: FoundAdapter, folder: Path) -> str:
    """`runs/bbc/adapter (PEFT folder, 5.3 MB)`: the path relative to the searched folder, kind and size."""
    relative = "." if f.path == folder else str(f.path.relative_to(folder))
    return f"{relative} ({f.kind}, {f.n_bytes / 1e6:.1f} MB)"
