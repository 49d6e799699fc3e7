"""The user's data files: text for perplexity, labelled text for accuracy (CSV, JSONL, JSON or plain text).

Readers return plain Python values and raise `DataError` (one line: the file, what is wrong, the fix); they never
print, never import streamlit and never run code from a file. Labels may be integers (class ids) or names; names
are mapped to ids through the model's label names or a list the user gives.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_DATA_BYTES = 1 << 30  # a data file above 1 GiB is refused before it is read
TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


class DataError(ValueError):
    """A data file that cannot be used, with the file, the problem and the fix in one line."""


@dataclass(frozen=True)
class LabelledData:
    """Labelled examples of a classification data file."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    """Class ids, in [0, n_labels)."""
    label_names: tuple[str, ...]
    """Name of each class id (the file's names, or the ids as strings)."""
    source: str


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise DataError(f"{path}: not a file; give a .txt, .jsonl, .json or .csv file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the file is empty; give a file with at least one example")
    if size > MAX_DATA_BYTES:
        raise DataError(f"{path}: {size / 2**30:.1f} GiB is above the 1 GiB limit; give a smaller sample of it")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a CSV / TSV (header line), JSONL (one object a line) or JSON (a list of objects) file.

    Raises:
        DataError: missing, empty or oversized file, a line that is not a JSON object, no rows.
    """
    path = Path(path)
    _check_file(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        try:
            rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        except csv.Error as err:
            raise DataError(f"{path}: not valid CSV ({err}); save it as comma-separated values") from None
    elif suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); fix the file") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: JSON holds a {type(rows).__name__}, not a list of objects; write a list")
    else:  # .jsonl and anything else that is not plain text
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number} is not JSON ({err.msg}); write one object per line") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {number} is a {type(row).__name__}, not an object with a text field")
    if not rows:
        raise DataError(f"{path}: no records; give a file with at least one example")
    return rows


def _column_error(path: Path, rows: Sequence[Mapping[str, Any]], column: str) -> DataError:
    fields = sorted({k for row in rows[:100] for k in row if k is not None})
    shown = ", ".join(fields[:8]) or "none"
    return DataError(f"{path}: no '{column}' column (columns: {shown}); name the column '{column}'")


def _texts(path: Path, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not any("text" in row for row in rows):
        raise _column_error(path, rows, "text")
    texts = []
    for number, row in enumerate(rows, 1):
        value = row.get("text")
        if not isinstance(value, str):
            raise DataError(f"{path}: record {number} has no text (got {value!r}); give every record a 'text' string")
        texts.append(value)
    return texts


def read_texts(path: str | Path) -> list[str]:
    """The documents of a data file for perplexity: a .txt file is one document, a table one per record.

    Raises:
        DataError: missing or empty file, no `text` column, a record without text, no text at all.
    """
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        _check_file(path)
        texts = [_read_text(path)]
    else:
        texts = _texts(path, read_records(path))
    if not any(t.strip() for t in texts):
        raise DataError(f"{path}: the text is empty; give a file with some text")
    return texts


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _is_name(value: Any) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False  # "0.5", "1e3", "nan": a number that is not a class id


def read_labelled(
    path: str | Path, *, n_labels: int | None = None, label_names: Sequence[str] | None = None
) -> LabelledData:
    """Texts and class ids of a classification file with `text` and `label` columns (CSV, TSV, JSONL, JSON).

    Args:
        path: the file.
        n_labels: the model's number of classes; integer labels must lie in [0, n_labels).
        label_names: the name of each class id, in order (the model's id2label, or the user's list); needed
            when the file's labels are names.

    Returns:
        The examples in file order. Example: labels ["pos", "neg", "pos"] with label_names ("neg", "pos")
        give ids (1, 0, 1).

    Raises:
        DataError: no `text` or `label` column, labels that are neither all integers nor all names, a name the
            model does not know, an id out of range.
    """
    path = Path(path)
    rows = read_records(path)
    texts = _texts(path, rows)
    if not any("label" in row for row in rows):
        raise _column_error(path, rows, "label")
    values = [row.get("label") for row in rows]
    ints = [_as_int(v) for v in values]
    if all(i is not None for i in ints):
        limit = n_labels if n_labels is not None else max(ints) + 1
        bad = next(((n, i) for n, i in enumerate(ints, 1) if not 0 <= i < limit), None)
        if bad is not None:
            raise DataError(
                f"{path}: record {bad[0]} has label {bad[1]}, but the model has {limit} classes (0 to {limit - 1}); "
                "use class ids in that range"
            )
        names = tuple(label_names) if label_names else tuple(str(i) for i in range(limit))
        return LabelledData(tuple(texts), tuple(ints), names, str(path))
    if all(_is_name(v) for v in values):
        if not label_names:
            raise DataError(
                f"{path}: labels are names ({', '.join(sorted(set(values))[:4])}), but the model has no label names; "
                "write class ids (0, 1, ...) or pass the names in class order (--labels NAME,NAME,...)"
            )
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise DataError(
                f"{path}: label {unknown[0]!r} is not one of the model's labels ({', '.join(label_names)}); "
                "use those names or class ids"
            )
        return LabelledData(tuple(texts), tuple(index[v] for v in values), tuple(label_names), str(path))
    odd = next(((n, v) for n, (v, i) in enumerate(zip(values, ints), 1) if i is None and not _is_name(v)), None)
    if odd is not None:
        number, value, what = *odd, "neither an integer class id nor a name"
    else:  # every value is one or the other, but not all the same kind
        number, value = next((n, v) for n, (v, i) in enumerate(zip(values, ints), 1) if i is not None)
        what = "a class id among names"
    raise DataError(
        f"{path}: labels must be integers or names; record {number} has {value!r}, {what}; "
        "write every label as a class id (0, 1, ...) or every label as a name"
    )
