"""The app under hostile and unusual adapters (issue 20, items 5 and 7): no page raises; a load that cannot be
done is one error on Home; text from a file is shown as written, never as markdown."""

from __future__ import annotations

import json

import pytest
from markdown_it import MarkdownIt
from safetensors.torch import save_file

from pages.shared.state import KEY_CUT_UNIT, KEY_FOLDER, KEY_SOURCE
from pages.shared.widgets import CUT_LABELS
from tests.builders import make_peft_dir

FOLDER = "Folder on the server"
PAGES = ("pages/1_Spectra.py", "pages/2_PARA.py")


def load_folder(at, path) -> None:
    at.radio(key=KEY_SOURCE).set_value(FOLDER).run()
    at.text_input(key=KEY_FOLDER).input(str(path))
    at.button[0].click().run()  # the form's Load
    assert not at.exception, at.exception


def test_an_adapter_whose_every_module_has_rank_0_renders_every_page(home, tmp_path):
    import torch

    file = tmp_path / "empty.safetensors"
    save_file({f"lora_unet_m{i}.lora_down.weight": torch.zeros(0, 16) for i in range(3)}
              | {f"lora_unet_m{i}.lora_up.weight": torch.zeros(16, 0) for i in range(3)}, file)  # fmt: skip
    load_folder(home, file)
    assert not home.error, [e.value for e in home.error]
    for page in PAGES:
        home.switch_page(page).run()
        assert not home.exception, (page, home.exception)
    builds = [b for b in home.button if b.label.startswith("Build")]
    if builds:
        builds[0].click().run()
        assert not home.exception and any("keeps no rank" in e.value for e in home.error)


def test_a_keep_everything_cut_then_the_tau_unit(home):
    home.switch_page("pages/2_PARA.py").run()
    budget = next(label for label, unit in CUT_LABELS.items() if unit == "params_fraction")
    home.selectbox(key=KEY_CUT_UNIT).set_value(budget).run()
    home.slider[0].set_value(100.0).run()  # every component, the zero ones too: τ = 0 (log10 τ = -inf)
    assert not home.exception
    tau = next(label for label, unit in CUT_LABELS.items() if unit == "tau")
    home.selectbox(key=KEY_CUT_UNIT).set_value(tau).run()
    assert not home.exception, home.exception
    assert home.slider[0].min <= home.slider[0].value <= home.slider[0].max


@pytest.mark.parametrize("where", ["/proc", "/proc/self/fd", "/root/../proc/1"])
def test_server_paths_that_are_no_adapter_folders(home, where):
    load_folder(home, where)
    assert home.error or home.selectbox or home.radio, "some answer is shown"


def test_an_8_gib_config_is_an_error_on_home(home, tmp_path):
    folder = tmp_path / "a"
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((source / "adapter_model.safetensors").read_bytes())
    with (folder / "adapter_config.json").open("wb") as f:
        f.truncate(8 << 30)  # sparse: nothing on disk
    load_folder(home, folder)
    assert any("a config may have" in e.value for e in home.error), [e.value for e in home.error]


def test_a_4_gib_adapter_file_is_an_error_on_home(home, tmp_path):
    folder = tmp_path / "a"
    source = make_peft_dir(tmp_path / "src", r=2, target_modules=["query"])
    folder.mkdir()
    (folder / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
    with (folder / "adapter_model.safetensors").open("wb") as f:
        f.truncate(4 << 30)  # 4 GiB of holes: no header
    load_folder(home, folder)
    assert any("adapter_model.safetensors" in e.value for e in home.error), [e.value for e in home.error]


def test_markdown_in_the_base_model_is_shown_as_text(home, tmp_path):
    folder = make_peft_dir(tmp_path / "a", r=2, target_modules=["query"])
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "![x](http://127.0.0.1:9/x.png) **bold** [link](http://127.0.0.1:9/) $x$"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    load_folder(home, folder)
    shown = next(m.value for m in home.markdown if "Base model" in m.value)
    html = MarkdownIt().render(shown)
    assert "<img" not in html and "<strong>bold" not in html and "<a " not in html
    assert "![x](http://127.0.0.1:9/x.png) **bold**" in html  # the name, as written


def test_heavy_work_runs_for_one_session_at_a_time_and_cached_results_never_wait(tiny_peft_dir):
    """Item 8: a load waits while another session's load or spectra run; a cached adapter is served at once."""
    import threading
    import time

    from pages.shared import cache

    adapter = cache.cached_adapter(str(tiny_peft_dir), 0)
    done = threading.Event()
    with cache.heavy_work():  # another session's heavy work in progress
        start = time.perf_counter()
        assert cache.cached_adapter(str(tiny_peft_dir), 0) is adapter and time.perf_counter() - start < 1.0
        waiting = threading.Thread(target=lambda: (cache.cached_adapter(str(tiny_peft_dir), 1), done.set()))
        waiting.start()
        assert not done.wait(1.0)  # a new load (another key) waits for its turn
    assert done.wait(120)
    waiting.join()
