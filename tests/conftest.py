"""Shared fixtures: chosen-sigma factors, tiny peft adapters, the app opened in AppTest, and the GPU skip hook."""

from __future__ import annotations

import os

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.builders import factors_with_sigma, make_peft_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHOSEN_SIGMA = [4.0, 2.0, 1.0, 0.5]
APP_TIMEOUT = 300  # seconds an AppTest run may take (the Compare page's evaluations are the slowest)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def chosen_factors() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    B, A = factors_with_sigma(CHOSEN_SIGMA)
    return B, A, CHOSEN_SIGMA


@pytest.fixture
def tiny_peft_dir(tmp_path):
    return make_peft_dir(tmp_path / "adapter")


@pytest.fixture
def home() -> AppTest:
    """The app's home page on the bundled sample, rendered without an exception."""
    at = AppTest.from_file("../app.py", default_timeout=APP_TIMEOUT).run()
    assert not at.exception
    return at
