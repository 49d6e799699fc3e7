"""Export writes (issue 20, item 6): the target is replaced only when it holds an earlier export (by type, not
name), re-checked at write time; an overwrite is one exchange, never a moment without an export; two
exports to one new target never both succeed; what a killed writer left is removed by the next."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from analysis import atomic
from analysis.adapters import load_adapter
from analysis.export import EXPORT_FILES, compress_adapter, save_adapter
from analysis.para import allocate_ranks, para_index
from analysis.spectra import adapter_spectra


@pytest.fixture
def compressed(tiny_peft_dir):
    adapter = load_adapter(tiny_peft_dir)
    return compress_adapter(adapter, allocate_ranks(para_index(adapter_spectra(adapter)), 0.9))


def test_a_folder_named_like_an_export_file_is_the_users(tmp_path, compressed):
    out = tmp_path / "out"
    save_adapter(compressed, out)
    (out / "adapter_config.json").unlink()
    (out / "adapter_config.json").mkdir()  # the user's folder, named as a config is
    (out / "adapter_config.json" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds 'adapter_config.json', which no export writes"):
        save_adapter(compressed, out, overwrite=True)
    assert (out / "adapter_config.json" / "notes.txt").read_text() == "mine"


def test_what_appears_in_the_target_while_writing_is_kept(tmp_path, compressed, monkeypatch):
    """Checked, then written: a file the user puts there in between is found after the exchange, which is undone."""
    out = tmp_path / "out"
    save_adapter(compressed, out)
    real_exchange = atomic.exchange

    def user_adds_a_file_first(a: Path, b: Path) -> bool:
        (out / "keep.txt").write_text("mine")  # after every check, just before the exchange
        monkeypatch.setattr(atomic, "exchange", real_exchange)
        return real_exchange(a, b)

    monkeypatch.setattr(atomic, "exchange", user_adds_a_file_first)
    with pytest.raises(ValueError, match="holds 'keep.txt'"):
        save_adapter(compressed, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine" and load_adapter(out).modules
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "out"]  # no temporary left


def test_an_overwrite_is_one_exchange(tmp_path, compressed, monkeypatch):
    out = tmp_path / "out"
    save_adapter(compressed, out)
    (out / "RANKS.md").write_text("the earlier export")
    seen = []

    def exchange(a: Path, b: Path) -> bool:
        seen.append(sorted(p.name for p in out.iterdir()))  # the target just before the one step
        done = atomic.__dict__["_real_exchange"](a, b)
        seen.append(sorted(p.name for p in out.iterdir()))  # and just after
        return done

    monkeypatch.setitem(atomic.__dict__, "_real_exchange", atomic.exchange)
    monkeypatch.setattr(atomic, "exchange", exchange)
    renames = []
    real_rename = Path.rename
    monkeypatch.setattr(Path, "rename", lambda self, target: renames.append(target) or real_rename(self, target))
    save_adapter(compressed, out, overwrite=True)
    assert seen[0] == seen[1] == sorted(EXPORT_FILES)  # a whole export at every moment
    assert (out / "RANKS.md").read_text() == compressed.report
    assert renames == [out]  # the only rename is the attempt that finds the target taken; no two-step move


def test_two_exports_to_one_new_target_never_both_succeed(tmp_path, compressed):
    for round_ in range(6):
        out = tmp_path / f"out{round_}"
        start = threading.Barrier(2)
        results: list[object] = []

        def export(out: Path = out, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                results.append(save_adapter(compressed, out))
            except FileExistsError as err:
                results.append(err)

        writers = [threading.Thread(target=export) for _ in range(2)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(60)
        assert sum(isinstance(r, Path) for r in results) == 1, results
        assert load_adapter(out).modules


def test_two_single_file_exports_to_one_name_never_both_succeed(tmp_path, compressed, monkeypatch):
    out = tmp_path / "one.safetensors"
    calls = []
    real_link = os.link

    def link_after_the_other(src, dst):  # the other export lands between this one's check and its write
        if not calls:
            calls.append(dst)
            Path(dst).write_bytes(b"the other export")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_the_other)
    with pytest.raises(FileExistsError, match="exists; choose another file name"):
        atomic.write_file(out, lambda tmp: tmp.write_bytes(b"this export"), overwrite=False)
    assert out.read_bytes() == b"the other export"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_killed_writers_temporaries_are_removed_by_the_next_writer(tmp_path, compressed):
    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()
    partial = tmp_path / f".out.partial-{dead.pid}-abc"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    live = tmp_path / f".out.partial-{os.getppid()}-abc"  # a running writer's: left alone
    live.mkdir()
    save_adapter(compressed, out)
    assert not partial.exists() and live.exists() and load_adapter(out).modules


def test_a_kill_between_the_fallbacks_two_renames_leaves_the_old_export(tmp_path, compressed):
    """Where no atomic exchange exists, the old export is moved aside under a name the next writer restores."""
    out = tmp_path / "out"
    save_adapter(compressed, out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    aside = tmp_path / f".out.old-{dead.pid}-xyz"
    out.rename(aside)  # what a writer killed between `out -> aside` and `new -> out` leaves
    atomic.sweep_temporaries(out)
    assert not aside.exists() and load_adapter(out).modules


def test_the_fallback_without_an_exchange_still_replaces_an_export(tmp_path, compressed, monkeypatch):
    out = tmp_path / "out"
    save_adapter(compressed, out)
    (out / "RANKS.md").write_text("old")
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    save_adapter(compressed, out, overwrite=True)
    assert (out / "RANKS.md").read_text() == compressed.report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "out"]
