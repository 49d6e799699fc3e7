"""Evaluate an adapter and its PARA cuts on the user's own base model and data (perplexity or accuracy).

`open_base` loads the base model once (checked against the adapter and the free memory), `prepare_data` reads
and tokenizes a data file, `evaluate_cut` scores the adapter or any cut of it. No streamlit, no printing.
"""

from analysis.evaluation.base_model import BaseModel, BaseModelError, TaskKind
from analysis.evaluation.cut import CutEvaluation, evaluate_cut, open_base
from analysis.evaluation.data import DataError
from analysis.evaluation.metrics import EvalData, EvalSettings, prepare_data

__all__ = [
    "BaseModel",
    "BaseModelError",
    "CutEvaluation",
    "DataError",
    "EvalData",
    "EvalSettings",
    "TaskKind",
    "evaluate_cut",
    "open_base",
    "prepare_data",
]
