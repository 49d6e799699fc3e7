"""Reading files users bring without trusting them: safetensors headers, pickles, JSON configs.

Every check runs before any large allocation (declared sizes against the bytes there are), nothing here
runs code from a file, and every failure is an `AdapterError` with one line naming the file and the fix.
Zips are in `analysis/safe_zip.py`. No streamlit here.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
import stat
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

MAX_HEADER_BYTES = 100 * 1024**2  # safetensors' own limit
# Tensors in one weights file: an all-linear LoRA of a 70B LLM with DoRA has ~1,700, a full SDXL kohya LoRA
# ~2,400; each costs Python work per module, so a file of millions of empty tensors is refused at once.
MAX_TENSORS = 65_536
# A real adapter_config.json is ~1 kB; a rank_pattern of 10,000 modules ~1 MB.
MAX_CONFIG_BYTES = 16 * 1024**2
# Safetensors dtype name -> bytes per element.
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


class AdapterError(ValueError):
    """A file the user brought cannot be read as a LoRA adapter.

    The message is one line that names the file, the module (when there is one) and the fix. Control
    characters in it (a newline or a terminal escape in a zip entry's or a module's name) are escaped, so the
    line stays one line and shows what the name holds.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with control characters written as escapes (`\\n`, `\\x1b`): one printable line."""
    return _CONTROL.sub(lambda m: ascii(m[0])[1:-1], text)


def parse_json(raw: bytes | str, *, reject_duplicates: bool = False) -> object:
    """`json.loads` with one plain message for an integer past Python's digit limit (not its advice to raise
    the limit) and, optionally, duplicate keys refused.

    Raises:
        ValueError: invalid JSON, a duplicate key, an integer too long (json.JSONDecodeError is one).
    """

    def pairs(items: list[tuple[str, object]]) -> dict:
        out = dict(items)
        if len(out) != len(items):
            seen: set[str] = set()
            twice = next(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise ValueError(f"the key {twice!r} appears twice")
        return out

    try:
        return json.loads(raw, object_pairs_hook=pairs if reject_duplicates else None)
    except ValueError as err:
        if "int_max_str_digits" in str(err) or "integer string conversion" in str(err):
            raise ValueError("an integer of thousands of digits") from None
        raise


def read_json_file(file: Path, what: str) -> object:
    """A JSON file read with its size capped at MAX_CONFIG_BYTES (checked on the open file, so a symlink to
    something huge or a device is refused before it is read).

    Raises:
        AdapterError: not a regular file, over the cap, not UTF-8 or not valid JSON; `what` names the fix.
    """
    try:
        with file.open("rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise AdapterError(f"{file}: is not a regular file; {what}")
            if info.st_size > MAX_CONFIG_BYTES:
                raise AdapterError(
                    f"{file}: is {info.st_size:,} bytes, over the {MAX_CONFIG_BYTES >> 20} MiB a config may "
                    f"have; {what}"
                )
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise AdapterError(f"{file}: cannot be read ({err.strerror or err}); {what}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise AdapterError(f"{file}: is over the {MAX_CONFIG_BYTES >> 20} MiB a config may have; {what}")
    try:
        return parse_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise AdapterError(f"{file}: not valid JSON ({str(err)[:80]}); {what}") from None


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
    if (n_entries := raw.count(b'"data_offsets"')) > MAX_TENSORS:  # counted before the (slow) parse
        raise _too_many(path, n_entries)
    try:
        header = parse_json(raw.decode("utf-8"), reject_duplicates=True)  # safetensors refuses duplicates too
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = f" ({err})" if "twice" in str(err) or "digits" in str(err) else ""  # ours, not the decoder's
        raise AdapterError(f"{path}: the safetensors header is not valid JSON{reason}; the file is corrupt") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise AdapterError(f"{path}: the safetensors __metadata__ is not a JSON object; the file is corrupt")
    data_size = size - 8 - n_header
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        raise _too_many(path, len(entries))
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


def _too_many(path: Path, n: int) -> AdapterError:
    return AdapterError(
        f"{path}: {n:,} tensors, over the limit of {MAX_TENSORS:,} (no adapter has that many modules); "
        "point at the adapter itself"
    )


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
    metadata = parse_json(bytes(buffer[8:start])).get("__metadata__") or {}  # type: ignore[union-attr]
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
    """A `.bin` state dict through torch's tensors-only unpickler: anything else is refused, nothing runs.

    Only torch's zip format is read, and only with its entries stored uncompressed (as torch.save writes
    them) and within the file's bytes, so the unpickler never inflates or allocates more than the file holds;
    a tensor that claims more values than its storage holds (a stride-0 view) is refused.
    """
    size = path.stat().st_size
    if size == 0:
        raise AdapterError(f"{path}: the file is empty; re-export or re-download the adapter")
    _check_torch_zip(path, size)
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
    if len(state) > MAX_TENSORS:
        raise AdapterError(f"{path}: {len(state):,} tensors, over the limit of {MAX_TENSORS:,}; point at the adapter")
    for key, t in state.items():
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise AdapterError(
                f"{path}: tensor {key!r} claims {t.numel():,} values but its storage holds "
                f"{t.untyped_storage().nbytes():,} bytes (a stride-0 view, not saved data); re-save the adapter"
            )
    return state


def _check_torch_zip(path: Path, size: int) -> None:
    """The `.bin` is torch's zip format with stored entries that fit in the file (checked before unpickling)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise AdapterError(
            f"{path}: refused to unpickle (not torch's zip format: a legacy or raw pickle, whose declared sizes "
            "cannot be checked first); re-save it with torch.save from torch >= 1.6 or convert it to safetensors"
        ) from None
    if len(infos) > MAX_TENSORS + 16:
        raise AdapterError(f"{path}: {len(infos):,} entries, over the limit of {MAX_TENSORS:,}; point at the adapter")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise AdapterError(
                f"{path}: entry {info.filename!r} is compressed ({info.compress_size:,} -> {info.file_size:,} bytes), "
                "which torch.save never writes (a deflate bomb?); re-save it with torch.save or use safetensors"
            )
    if sum(i.file_size for i in infos) > size:
        raise AdapterError(f"{path}: its entries claim more bytes than the file has; the file is corrupt")
