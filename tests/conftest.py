"""Shared fixtures: chosen-sigma factors, tiny peft adapters, and the GPU skip hook."""

from __future__ import annotations

import os

import pytest
import torch

from tests.builders import factors_with_sigma, make_peft_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHOSEN_SIGMA = [4.0, 2.0, 1.0, 0.5]


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
