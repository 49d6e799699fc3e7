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
