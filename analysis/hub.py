"""Adapters and base models named by Hugging Face Hub id (`ORG/NAME`), through `huggingface_hub`'s cache.

The cache comes first (`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub, read when called); a
download happens only when the caller asks for one, never under `HF_HUB_OFFLINE=1`. Every failure is a
`HubError` of one line naming the id and the fix. Only weights in safetensors, configs and tokenizer files are
fetched (never pickles or code). No streamlit, no printing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

HubKind = Literal["adapter", "model"]
# The files worth having: configs, safetensors weights, tokenizer files. No *.bin / *.pt (pickles), no *.py.
ALLOW_PATTERNS: dict[HubKind, list[str]] = {
    "adapter": ["*.json", "*.safetensors", "README.md"],
    "model": ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "README.md"],
}
HUB_ID = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@(?P<revision>[\w./-]+))?$")
TRUE_VALUES = {"1", "on", "yes", "true"}


class HubError(ValueError):
    """A Hub id that cannot be resolved: not cached while offline, unknown, or the download failed."""


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment at call time."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "huggingface" / "hub"


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says so: then nothing is downloaded."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(k, "").strip().lower() in TRUE_VALUES for k in names)


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision) when `text` reads as a Hub id (`ORG/NAME`, `hf://ORG/NAME`, `ORG/NAME@REV`), else None.

    Example: "HuggingFaceTB/SmolLM2-135M@main" -> ("HuggingFaceTB/SmolLM2-135M", "main"); "./runs/a" -> None.
    """
    match = HUB_ID.match(text.strip())
    if match is None or match["repo"].startswith((".", "-")) or ".." in match["repo"]:
        return None
    return match["repo"], match["revision"]


def is_hub_id(text: str) -> bool:
    """A string that names a Hub repository and not an existing local path."""
    return not Path(text).expanduser().exists() and parse_hub_id(text) is not None


def cached_snapshot(repo_id: str, *, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of `repo_id` (`models--ORG--NAME/snapshots/REV`), or None when not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError):
        return None
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def resolve_hub(
    name: str, *, kind: HubKind = "model", download: bool = False, allow_patterns: Sequence[str] | None = None
) -> Path:
    """The local folder of a Hub repository: the cached snapshot, or (when `download`) a fresh download into the cache.

    Args:
        name: `ORG/NAME`, optionally `@REVISION` or an `hf://` prefix.
        kind: "adapter" or "model": which files a download fetches (configs, safetensors, tokenizer files).
        download: fetch it when it is not cached (refused under HF_HUB_OFFLINE=1).
        allow_patterns: file patterns to fetch instead of the kind's default.

    Raises:
        HubError: not a Hub id; not cached and no download asked for; offline; the download failed.
    """
    parsed = parse_hub_id(name)
    if parsed is None:
        raise HubError(f"{name}: not a Hugging Face Hub id; write it as ORG/NAME (or give a local path)")
    repo_id, revision = parsed
    if (folder := cached_snapshot(repo_id, revision=revision)) is not None:
        return folder
    cache = hub_cache_dir()
    if is_offline():
        raise HubError(
            f"{repo_id}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; download it where there "
            f"is a network (hf download {repo_id}) or unset HF_HUB_OFFLINE"
        )
    if not download:
        raise HubError(f"{repo_id}: not in the Hugging Face cache ({cache}); ask for a download (--download)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = list(allow_patterns) if allow_patterns is not None else ALLOW_PATTERNS[kind]
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns))
    except GatedRepoError:
        raise HubError(f"{repo_id}: gated on the Hub; accept its terms online, then hf auth login") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id}: no such repository on the Hub (or it is private); check the id") from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id}: no revision {revision!r} on the Hub; check the revision") from None
    except (HfHubHTTPError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"{repo_id}: download failed ({first}); check the network, or use hf download") from None
