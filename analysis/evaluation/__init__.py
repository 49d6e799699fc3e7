"""Evaluate an adapter and its PARA cuts on the user's own base model and data (perplexity or accuracy).

`open_base` loads the base model once (checked against the adapter and the free memory), `prepare_data` reads
and tokenizes a data file, `evaluate_cut` scores the adapter or any cut of it. No streamlit, no printing.
Names are imported on first use, so `python -m analysis evaluate --help` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BaseModel": "base_model", "BaseModelError": "base_model", "TaskKind": "base_model",
    "CutEvaluation": "cut", "evaluate_cut": "cut", "open_base": "cut",
    "DataError": "data",
    "EvalData": "metrics", "EvalSettings": "metrics", "prepare_data": "metrics",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'analysis.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analysis.evaluation.{_WHERE[name]}"), name)
