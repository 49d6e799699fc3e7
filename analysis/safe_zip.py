"""Zips users bring, and the private temp folders they are read in, without trusting the archive.

The adapter is located from the zip's directory before anything is extracted, and only its files are
written out; every limit (entry count, sizes, compression ratio, overlapping entries) is checked from the
directory first and again while extracting, since the directory can lie. A temp folder's name carries its
process id, so the folders of a killed process are removed by the next one. No streamlit here.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath

from analysis.safe_io import MAX_CONFIG_BYTES, AdapterError

MAX_ZIP_FILES = 256
MAX_ZIP_BYTES = 4 * 1024**3  # uncompressed, of the entries extracted
# deflate reaches ~1030:1 on zeros; an adapter's float factors compress ~1.1:1, and even an untrained one
# (B = 0) about 2:1, so a file this far above that is a bomb, not an adapter
MAX_ZIP_RATIO = 100
RATIO_FREE_BYTES = 1 << 20  # entries up to this size may compress better (configs, reports, zero tensors)
CONFIG_NAME = "adapter_config.json"
# What the loader reads from an extracted zip (analysis/adapters.py): configs, weights and single files.
ADAPTER_FILE = re.compile(r"(?i)^(adapter_config\.json|adapter_model\.(safetensors|bin)|.*\.safetensors)$")
SEARCH_DEPTH = 3  # folder levels below the zip's root searched for the adapter, as for folders
TEMP_PREFIX = "lora-rank-lab-"


def private_temp_dir(kind: str) -> Path:
    """A new private folder in the system temp folder named for this process (`lora-rank-lab-<kind>-<pid>-`).

    Folders of the same kind left by processes that no longer run (killed mid-extraction) are removed first.
    """
    root = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(TEMP_PREFIX + kind)}-(\d+)-")
    with suppress(OSError):
        for entry in root.iterdir():
            match = pattern.match(entry.name)
            if match and not _is_running(int(match[1])):
                shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{kind}-{os.getpid()}-"))


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it runs
        return True
    return True


@contextmanager
def extracted_zip(zip_file: Path) -> Iterator[Path]:
    """Extract the adapter's files from a zip into a private temp folder (removed afterwards).

    Refuses path traversal, absolute paths, symlinks, overlapping entries and zips with no adapter file;
    caps the entry count (MAX_ZIP_FILES), the extracted size (MAX_ZIP_BYTES), a config's size
    (MAX_CONFIG_BYTES) and the compression ratio (MAX_ZIP_RATIO), from the directory and while extracting.
    """
    try:
        archive = zipfile.ZipFile(zip_file)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise AdapterError(f"{zip_file}: not a valid zip archive ({err}); re-create the zip") from None
    with archive:
        wanted = _adapter_entries(archive, zip_file)
        tmp = private_temp_dir("zip")
        try:
            try:
                _extract(archive, wanted, zip_file, tmp)
            # RuntimeError: an encrypted entry (zipfile asks for a password)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError,
                    RuntimeError, ValueError) as err:  # fmt: skip
                if isinstance(err, AdapterError):
                    raise
                reason = str(err).replace(str(tmp), str(zip_file))  # name the zip, not the temporary folder
                raise AdapterError(f"{zip_file}: cannot extract ({type(err).__name__}: {reason}); re-zip it") from None
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _adapter_entries(archive: zipfile.ZipFile, zip_file: Path) -> list[zipfile.ZipInfo]:
    """The entries the loader will read, after every check that the directory allows."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_FILES:
        raise AdapterError(f"{zip_file}: {len(infos)} entries exceed the limit of {MAX_ZIP_FILES}; zip less")
    for info in infos:
        _check_entry(zip_file, info)
    _check_no_overlap(archive, zip_file)
    wanted = [
        i
        for i in infos
        if not i.is_dir()
        and ADAPTER_FILE.match(PurePosixPath(i.filename).name)
        and len(PurePosixPath(i.filename).parts) <= SEARCH_DEPTH + 1
    ]
    if not wanted:
        raise AdapterError(
            f"{zip_file}: no {CONFIG_NAME} or .safetensors file in the zip; zip a PEFT adapter folder "
            "(adapter_config.json + adapter_model.safetensors) or a kohya .safetensors file"
        )
    if sum(i.file_size for i in wanted) > MAX_ZIP_BYTES:
        raise AdapterError(_too_big(zip_file))
    for info in wanted:
        if PurePosixPath(info.filename).name.lower() == CONFIG_NAME and info.file_size > MAX_CONFIG_BYTES:
            raise AdapterError(
                f"{zip_file}: {info.filename!r} is {info.file_size:,} bytes, over the {MAX_CONFIG_BYTES >> 20} MiB "
                "a config may have; zip the adapter's own adapter_config.json"
            )
        if info.file_size > max(RATIO_FREE_BYTES, MAX_ZIP_RATIO * info.compress_size):
            raise AdapterError(
                f"{zip_file}: {info.filename!r} inflates {info.file_size:,} bytes from {info.compress_size:,} "
                f"(over {MAX_ZIP_RATIO}:1, a zip bomb, not an adapter); re-zip the adapter folder"
            )
    return wanted


def _too_big(zip_file: Path) -> str:
    return f"{zip_file}: uncompressed size exceeds {MAX_ZIP_BYTES >> 30} GiB; zip only the adapter"


def _check_entry(zip_file: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise AdapterError(f"{zip_file}: refused zip entry {name!r} (path outside the archive); re-zip the folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise AdapterError(f"{zip_file}: refused zip entry {name!r} (a symbolic link); re-zip without links")


def _check_no_overlap(archive: zipfile.ZipFile, zip_file: Path) -> None:
    """Entries whose data overlap (one compressed stream counted many times: the overlap bomb) are refused.

    Each entry takes at least its local header (30 bytes and its name) and its compressed data, from its
    header offset on; a real zip's entries follow one another.
    """
    spans = sorted(
        (i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode()) + i.compress_size, i.filename)
        for i in archive.infolist()
    )
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise AdapterError(
                f"{zip_file}: entries {name_a!r} and {name_b!r} overlap in the archive (a zip bomb); re-zip the folder"
            )


def _extract(archive: zipfile.ZipFile, wanted: list[zipfile.ZipInfo], zip_file: Path, dest: Path) -> None:
    written = 0
    for info in wanted:
        target = dest / info.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        limit = min(info.file_size, MAX_ZIP_BYTES - written)  # the directory's sizes can lie: hold them to it
        with archive.open(info) as src, target.open("wb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                limit -= len(chunk)
                if limit < 0:
                    raise AdapterError(
                        _too_big(zip_file) if written > MAX_ZIP_BYTES else
                        f"{zip_file}: {info.filename!r} inflates past the size its directory entry states; re-zip it"
                    )  # fmt: skip
                dst.write(chunk)
