"""Home's sources: a folder load that says what it found and where, runs/ offered, a cleared sample select."""

from __future__ import annotations

from analysis.locate import find_adapters
from tests.builders import make_peft_dir


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def load_folder(at, path) -> None:
    at.radio(key="adapter_source").set_value("Folder on the server").run()
    at.text_input(key="folder_path").input(str(path))  # a form: the value goes with the click
    next(b for b in at.button if b.label == "Load").click().run()


def test_find_adapters_skips_hidden_folders_and_lists_nearest_first(tmp_path):
    home = tmp_path / "home"
    make_peft_dir(home / ".cache" / "hub" / "big")  # a hub download: not the user's
    make_peft_dir(home / "runs" / "bbc" / "adapter")
    (home / "styles").mkdir(parents=True)
    (home / "styles" / "ink.safetensors").write_bytes(b"\0" * 10)
    make_peft_dir(home / "deep" / "a" / "b" / "c" / "too-far")  # 5 levels down: beyond the search
    search = find_adapters(home)
    assert [(f.path.relative_to(home).as_posix(), f.kind, f.depth) for f in search.found] == [
        ("styles/ink.safetensors", "safetensors file", 1),
        ("runs/bbc/adapter", "PEFT folder", 3),
    ]
    assert search.n_hidden_skipped == 1 and not search.is_truncated
    assert search.found[1].n_bytes == sum(p.stat().st_size for p in (home / "runs/bbc/adapter").iterdir())


def test_a_folder_with_several_adapters_asks_which_and_loads_the_pick(home, tmp_path):
    make_peft_dir(tmp_path / "mine" / "first", r=4)
    make_peft_dir(tmp_path / "mine" / "second", r=6)
    make_peft_dir(tmp_path / "mine" / ".cache" / "hidden")
    load_folder(home, tmp_path / "mine")
    assert not home.exception and not home.error
    assert metric(home, "Modules") == "36"  # nothing loaded yet: the user picks
    (pick,) = [s for s in home.selectbox if s.label.startswith("Found 2 adapters")]
    assert "1 hidden folders skipped" in pick.label
    assert [o.split(" (")[0] for o in pick.options] == ["first", "second"]
    pick.set_value(1).run()
    assert not home.exception and metric(home, "Modules") == "13"
    assert "Ranks**: 6" in "".join(m.value for m in home.markdown)
    assert "second" in home.success[0].value and str(tmp_path / "mine") in home.success[0].value


def test_a_run_folder_loads_its_adapter_in_one_click_and_says_where(home, tmp_path):
    make_peft_dir(tmp_path / "run" / "adapter")
    load_folder(home, tmp_path / "run")
    assert not home.exception and metric(home, "Modules") == "13"
    assert "Found one adapter" in home.success[0].value and "adapter (PEFT folder" in home.success[0].value


def test_a_folder_with_only_hidden_adapters_loads_nothing_and_says_why(home, tmp_path):
    make_peft_dir(tmp_path / "user" / ".cache" / "hub" / "model")
    load_folder(home, tmp_path / "user")
    assert not home.exception and metric(home, "Modules") == "36"
    assert "no adapter found" in home.error[0].value and "1 hidden folders not searched" in home.error[0].value


def test_runs_folder_is_offered_as_a_source(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_RUNS_DIR", str(tmp_path / "runs"))
    home.radio(key="adapter_source").set_value("Your training runs").run()
    assert "No finished training runs" in home.info[0].value
    make_peft_dir(tmp_path / "runs" / "my-run" / "adapter")
    (tmp_path / "runs" / "other.failed").mkdir()  # a failed run: a log, no adapter
    (tmp_path / "runs" / "other.failed" / "log.txt").write_text("failed")
    home.run()
    runs = home.selectbox(key="run_choice")
    assert runs.options == ["my-run"] and runs.value is None
    runs.set_value("my-run").run()
    assert not home.exception and metric(home, "Modules") == "13"
    assert home.selectbox(key="run_choice").value == "my-run"


def test_clearing_the_sample_select_keeps_the_adapter(home):
    home.selectbox(key="sample_choice").set_value(None).run()
    assert not home.exception and metric(home, "Modules") == "36"
