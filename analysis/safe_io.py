"""Reading files users bring without trusting them: safetensors headers, pickles, zips.

Every check runs before any large allocation, nothing here runs code from a file, and every failure is an
`AdapterError` with one line naming the file and the fix. No streamlit here.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import shutil
import stat
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import torch

# Limits for zip uploads (checked from the zip directory before extraction, and again while extracting,
# since the directory's sizes can lie).
MAX_ZIP_FILES = 256
MAX_ZIP_BYTES = 4 * 1024**3
MAX_HEADER_BYTES = 100 * 1024**2
# Safetensors dtype name -> bytes per element.
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


class AdapterError(ValueError):
    """A file the user brought cannot be read as a LoRA adapter.

    The message is one line that names the file, the module (when there is one) and the fix.
    """


def check_safetensors_header(path: Path) -> dict:
    """Validate a safetensors file's header against its size; return the header's tensor entries.

    Raises:
        AdapterError: empty or truncated file, header length past the end, invalid JSON, unknown dtype,
            negative or absurd shapes, offsets out of range, overlapping, or not matching shape x dtype.
    """
    size = path.stat().st_size
    if size == 0:
        raise AdapterError(f"{path}: the file is empty; re-export or re-download the adapter")
    if size < 8:
        raise AdapterError(f"{path}: truncated safetensors file ({size} bytes); re-download the adapter")
    with path.open("rb") as f:
        (n_header,) = struct.unpack("<Q", f.read(8))
        if n_header > min(size - 8, MAX_HEADER_BYTES):
            raise AdapterError(
                f"{path}: safetensors header claims {n_header} bytes but the file has {size}; "
                "the file is truncated or not safetensors"
            )
        raw = f.read(n_header)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise AdapterError(f"{path}: the safetensors header is not valid JSON; the file is corrupt") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise AdapterError(f"{path}: the safetensors __metadata__ is not a JSON object; the file is corrupt")
    data_size = size - 8 - n_header
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for key, info in entries.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise AdapterError(f"{path}: tensor {key!r} has a malformed header entry; the file is corrupt")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise AdapterError(f"{path}: tensor {key!r} has unsupported dtype {dtype!r}; save it as float32/16")
        if not (isinstance(shape, list) and all(_is_int(d) and 0 <= d < 2**40 for d in shape)):
            raise AdapterError(f"{path}: tensor {key!r} has an invalid shape {shape!r}; the file is corrupt")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise AdapterError(f"{path}: tensor {key!r} has invalid data offsets; the file is corrupt")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise AdapterError(
                f"{path}: tensor {key!r} points past the end of the file; the file is truncated, re-download it"
            )
        if math.prod(shape) * SAFETENSORS_DTYPES[dtype] != end - begin:
            raise AdapterError(f"{path}: tensor {key!r} shape {shape} does not match its byte size; corrupt file")
        spans.append((begin, end, key))
    spans.sort()
    for (_, end_a, key_a), (begin_b, _, key_b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise AdapterError(f"{path}: tensors {key_a!r} and {key_b!r} overlap in the file; the file is corrupt")
    return entries


def _is_int(value: object) -> bool:
    """An integer in a JSON header (JSON's true and false are Python ints too, and no size)."""
    return isinstance(value, int) and not isinstance(value, bool)


TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}  # fmt: skip


def _map_file(path: Path, *, in_memory: bool) -> mmap.mmap | bytearray:
    """The whole file in this process: copied (in_memory) or mapped copy-on-write.

    The mapping is lazy: the content hash that every load computes next reads the pages in order on two
    threads, so they are faulted in in parallel (with the kernel's fault-around). On a 640 MB adapter here
    that loads in ~0.5 s against ~0.9 s with MAP_POPULATE, which faults everything on one thread first.
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if in_memory or size == 0:
            buffer = bytearray(size)
            f.readinto(buffer)
            return buffer
        return mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def read_safetensors(
    path: Path, *, in_memory: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str], mmap.mmap | bytearray]:
    """Tensors (zero-copy views), metadata and the backing buffer of a validated safetensors file.

    Args:
        path: the file.
        in_memory: copy the file into memory (for files about to be deleted) instead of mapping it.

    Raises:
        AdapterError: whatever `check_safetensors_header` refuses.
    """
    entries = check_safetensors_header(path)
    buffer = _map_file(path, in_memory=in_memory)
    (n_header,) = struct.unpack("<Q", buffer[:8])
    start = 8 + n_header
    metadata = json.loads(bytes(buffer[8:start])).get("__metadata__") or {}
    tensors = {}
    for key, info in entries.items():
        dtype, shape = TORCH_DTYPES[info["dtype"]], info["shape"]
        begin, end = info["data_offsets"]
        if end == begin:
            tensors[key] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(buffer, dtype=torch.uint8, count=end - begin, offset=start + begin)
        tensors[key] = flat.view(dtype).reshape(shape)  # bytes -> (numel,) of dtype -> shape
    return tensors, {str(k): str(v) for k, v in metadata.items()}, buffer


def content_digest(buffer: mmap.mmap | bytearray, extra: bytes = b"") -> str:
    """sha256 of `extra` and the buffer, hashed in two halves on two threads (hashlib releases the GIL)."""
    view = memoryview(buffer)
    half = len(view) // 2
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda part: hashlib.sha256(part).digest(), (view[:half], view[half:])))
    return hashlib.sha256(extra + b"".join(parts)).hexdigest()


def read_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict through torch's tensors-only unpickler: anything else is refused, nothing runs."""
    if path.stat().st_size == 0:
        raise AdapterError(f"{path}: the file is empty; re-export or re-download the adapter")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterError(
            f"{path}: refused to unpickle (not plain tensors: {first[:160]}); convert it to safetensors "
            "with a trusted tool"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise AdapterError(f"{path}: the pickle is not a flat dict of tensors; convert it to safetensors")
    return state


def _check_zip_entry(zip_path: str, info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise AdapterError(f"{zip_path}: refused zip entry {name!r} (path outside the archive); re-zip the folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise AdapterError(f"{zip_path}: refused zip entry {name!r} (a symbolic link); re-zip without links")


@contextmanager
def extracted_zip(zip_file: Path) -> Iterator[Path]:
    """Extract a zip into a private temp folder (removed afterwards) after checking every entry.

    Refuses path traversal, absolute paths and symlinks; caps the file count (MAX_ZIP_FILES) and the total
    uncompressed size (MAX_ZIP_BYTES), both from the directory and while extracting.
    """
    try:
        archive = zipfile.ZipFile(zip_file)
    except (zipfile.BadZipFile, OSError) as err:
        raise AdapterError(f"{zip_file}: not a valid zip archive ({err}); re-create the zip") from None
    tmp = Path(tempfile.mkdtemp(prefix="lora-rank-lab-zip-"))
    try:
        try:
            with archive:
                _extract_checked(archive, zip_file, tmp)
        # RuntimeError: an encrypted entry (zipfile asks for a password)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, RuntimeError) as err:
            reason = str(err).replace(str(tmp), str(zip_file))  # name the zip, not the temporary folder
            raise AdapterError(f"{zip_file}: cannot extract ({type(err).__name__}: {reason}); re-zip it") from None
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_checked(archive: zipfile.ZipFile, zip_file: Path, dest: Path) -> None:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_FILES:
        raise AdapterError(f"{zip_file}: {len(infos)} entries exceed the limit of {MAX_ZIP_FILES}; zip less")
    too_big = f"{zip_file}: uncompressed size exceeds {MAX_ZIP_BYTES >> 30} GiB; zip only the adapter"
    if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
        raise AdapterError(too_big)
    for info in infos:
        _check_zip_entry(str(zip_file), info)
    written = 0
    for info in infos:
        target = dest / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, target.open("wb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > MAX_ZIP_BYTES:  # the directory's sizes can lie
                    raise AdapterError(too_big)
                dst.write(chunk)
