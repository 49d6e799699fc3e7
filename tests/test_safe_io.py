"""Hostile files: pickles that would run code, zip traversal and bombs, corrupt safetensors headers."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.adapters import AdapterError, load_adapter
from analysis.safe_io import check_safetensors_header
from analysis.safe_zip import MAX_ZIP_FILES


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, tiny_peft_dir):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((tiny_peft_dir / "adapter_config.json").read_text())
    with (folder / "adapter_model.bin").open("wb") as f:
        pickle.dump({"base_model.model.x.lora_A.weight": RunsCode(marker)}, f)
    with pytest.raises(AdapterError, match="refused to unpickle"):
        load_adapter(folder)
    assert not marker.exists()


def _zip(path, entries, *, symlink=None):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16  # S_IFLNK
            z.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("entries", "symlink", "message"),
    [
        ({"../escape.txt": "x"}, None, "outside the archive"),
        ({"/abs/path.txt": "x"}, None, "outside the archive"),
        ({"a/adapter_config.json": "{}"}, "a/link", "symbolic link"),
        ({f"f{i}.txt": "" for i in range(MAX_ZIP_FILES + 1)}, None, "exceed the limit"),
    ],
    ids=["dotdot", "absolute", "symlink", "too-many-files"],
)
def test_zip_hostile_entries_are_refused(tmp_path, entries, symlink, message):
    archive = _zip(tmp_path / "up.zip", entries, symlink=symlink)
    with pytest.raises(AdapterError, match=message):
        load_adapter(archive)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_zip_bomb_is_refused_from_the_directory(tmp_path, monkeypatch):
    import analysis.safe_zip as safe_zip

    monkeypatch.setattr(safe_zip, "MAX_ZIP_BYTES", 1 << 20)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("adapter/adapter_model.safetensors", b"\0" * (2 << 20))  # 2 MiB of zeros compress to ~2 kB
    assert archive.stat().st_size < 20_000
    with pytest.raises(AdapterError, match="uncompressed size exceeds"):
        load_adapter(archive)


def _safetensors_with_header(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "past the end"),
        ({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported dtype"),
        ({"t": {"dtype": "F32", "shape": [2**41, 2**41], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "does not match"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlap",
        ),  # fmt: skip
    ],
    ids=["out-of-range", "dtype", "absurd-shape", "size-mismatch", "overlap"],
)
def test_corrupt_safetensors_headers_are_refused(tmp_path, header, data, message):
    file = tmp_path / "x.safetensors"
    _safetensors_with_header(file, header, data)
    with pytest.raises(AdapterError, match=message):
        check_safetensors_header(file)


def test_header_length_past_end_and_bad_json(tmp_path):
    file = tmp_path / "x.safetensors"
    file.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(AdapterError, match="header claims"):
        load_adapter(file)
    file.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_adapter(file)


@settings(max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_loader_raises_only_adapter_error_on_mutated_bytes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz")
    from tests.builders import make_peft_dir

    source = make_peft_dir(folder / "src", r=2, target_modules=["query"])
    raw = bytearray((source / "adapter_model.safetensors").read_bytes())
    n_flips = data.draw(st.integers(1, 8))
    for _ in range(n_flips):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    (source / "adapter_model.safetensors").write_bytes(bytes(raw[:cut]))
    try:
        adapter = load_adapter(source)
    except AdapterError:
        return
    for m in adapter.modules:
        assert torch.isfinite(m.A).all() and torch.isfinite(m.B).all()
