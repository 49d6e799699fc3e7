"""Module names -> (layer index, module type), for heat maps and per-type / per-depth totals.

`encoder.layer.3.attention.self.query` -> (3, "attention.self.query");
`model.layers.12.self_attn.q_proj` -> (12, "self_attn.q_proj"); kohya names split on "_" the same way.
Names with no layer index get layer None and keep their whole name as the type.
"""

from __future__ import annotations

from collections.abc import Sequence


def split_module_name(name: str) -> tuple[int | None, str]:
    """The first integer path component is the layer; what follows it is the module type.

    Example:
        >>> split_module_name("bert.encoder.layer.0.attention.output.dense")
        (0, 'attention.output.dense')
    """
    separator = "." if "." in name else "_"
    parts = name.split(separator)
    for i, part in enumerate(parts):
        if part.isdigit() and i + 1 < len(parts):
            return int(part), separator.join(parts[i + 1 :])
    return None, name


def layer_type_grid(names: Sequence[str]) -> tuple[list[int | None], list[str]]:
    """Sorted distinct layers (None last) and module types in first-seen order."""
    layers: set[int | None] = set()
    types: list[str] = []
    for name in names:
        layer, kind = split_module_name(name)
        layers.add(layer)
        if kind not in types:
            types.append(kind)
    ordered = sorted(x for x in layers if x is not None) + ([None] if None in layers else [])
    return ordered, types


# Module type -> short label, for BERT-style names (MiniLM); other types (e.g. Llama's self_attn.q_proj) keep theirs.
TYPE_LABELS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention-out",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
}


def type_label(kind: str) -> str:
    """Short label of a module type: "attention.output.dense" -> "attention-out"; unknown types unchanged."""
    return TYPE_LABELS.get(kind, kind)


def short_type_labels(kinds: Sequence[str]) -> dict[str, str]:
    """Short, distinct labels for module types: BERT's known labels, else the last dotted component, each
    kept only where it is unique among `kinds` (the whole type otherwise).

    Example:
        >>> short_type_labels(["self_attn.q_proj", "mlp.down_proj"])
        {'self_attn.q_proj': 'q_proj', 'mlp.down_proj': 'down_proj'}
    """
    short = {kind: TYPE_LABELS.get(kind, kind.split(".")[-1]) for kind in kinds}
    counts: dict[str, int] = {}
    for label in short.values():
        counts[label] = counts.get(label, 0) + 1
    return {kind: label if counts[label] == 1 else kind for kind, label in short.items()}


# Llama / Mistral / Qwen projections in the order of the forward pass; BERT's follow TYPE_LABELS' order.
FORWARD_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", *TYPE_LABELS.values())


def forward_order(kinds: Sequence[str]) -> list[str]:
    """Module types in forward-pass order where known (q, k, v, o, gate, up, down; BERT's query ... output),
    the others after them in the order given."""
    labels = {kind: TYPE_LABELS.get(kind, kind.split(".")[-1]) for kind in kinds}
    rank = {label: i for i, label in enumerate(FORWARD_ORDER)}
    return sorted(kinds, key=lambda kind: rank.get(labels[kind], len(rank)))  # stable: unknown keep their order
