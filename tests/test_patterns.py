"""Patterns from files (issue 20, item 3): a config whose rank_pattern key backtracks is refused at once with
one line, other keys match as peft matches them, and slow matching neither outlasts its budget nor holds
the GIL."""

from __future__ import annotations

import json
import threading
import time

import pytest

from analysis import patterns
from analysis.adapters import AdapterError, load_adapter
from analysis.patterns import MatchBudget, PatternTimeout, pattern_problem
from tests.builders import make_peft_dir


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(a+)+$", "a quantifier inside a quantified group"),
        ("(?:.*\\.)*q_proj", "a quantifier inside a quantified group"),
        ("(a{2,9}){2,9}", "a quantifier inside a quantified group"),
        ("(q)\\1", "a backreference"),
        ("(x)?(?(1)a|b)", "a backreference"),
        ("x" * 3000, "characters, over"),
        ("(unclosed", "not a valid regular expression"),
    ],
)
def test_patterns_that_can_backtrack_exponentially_are_refused(pattern, problem):
    assert problem in (pattern_problem(pattern) or "")


@pytest.mark.parametrize(
    "pattern",
    ["query", "layer.0.attention.self.query", "^bert\\.encoder\\.layer\\.0\\..*", ".*\\.(query|value)",
     "layers\\.[0-9]+\\.self_attn\\.(q|k|v)_proj", "(?!.*lm_head).*", "(.*\\.)?dense"],
)  # fmt: skip
def test_patterns_peft_users_write_are_accepted(pattern):
    assert pattern_problem(pattern) is None


def test_a_backtracking_rank_pattern_key_is_refused_in_one_line(tmp_path):
    folder = make_peft_dir(tmp_path / "a", r=2, target_modules=["query"])
    config = json.loads((folder / "adapter_config.json").read_text())
    config["rank_pattern"] = {"(a+)+$": 2}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(AdapterError) as caught:
        load_adapter(folder)
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert message.startswith(f"{folder / 'adapter_config.json'}: rank_pattern key is")
    assert "exponential time" in message and "\n" not in message


def test_a_backtracking_target_modules_string_is_refused(tmp_path):
    folder = make_peft_dir(tmp_path / "a", r=2, target_modules=["query"])
    config = json.loads((folder / "adapter_config.json").read_text()) | {"target_modules": "(.*query)+"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="target_modules is .* bounded time"):
        load_adapter(folder)


def test_rank_pattern_keys_still_match_as_peft_does(tmp_path):
    folder = make_peft_dir(tmp_path / "a", r=4, target_modules=["query", "value"], rank_pattern={"value": 2},
                           alpha_pattern={"layer.0.attention.self.query": 32})  # fmt: skip
    adapter = load_adapter(folder)
    ranks = {m.name.split("layer.")[1]: (m.r, m.alpha) for m in adapter.modules}
    assert ranks["0.attention.self.value"][0] == 2 and ranks["0.attention.self.query"] == (4, 32.0)
    assert ranks["1.attention.self.query"] == (4, 16.0)  # lora_alpha, not the pattern


def test_slow_matching_stops_at_its_budget_and_leaves_the_gil_free():
    """A pattern that passes the static check but still backtracks (overlapping alternatives) is cut off at its
    budget; while it runs, another thread keeps running Python (the server's other sessions)."""
    key, name = "(a|a)+$", "a" * 40 + "!"  # exponential in the regex engine, no nested quantifier
    assert pattern_problem(key) is None
    ticks = 0
    stop = threading.Event()

    def other_session() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    thread = threading.Thread(target=other_session)
    thread.start()
    start = time.perf_counter()
    try:
        with pytest.raises(PatternTimeout):
            MatchBudget(0.3).matches_suffix(key, name)
    finally:
        stop.set()
        thread.join()
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0  # the budget (0.3 s), not the 2^40 steps
    assert ticks > 0.3 * elapsed / 0.001 * 0.3  # the other thread kept a good share of its 1 ms ticks


def test_the_budget_is_for_the_whole_load():
    budget = MatchBudget(0.0)
    with pytest.raises(PatternTimeout):
        budget.matches_suffix("query", "layer.0.query")
    assert patterns.MATCH_BUDGET_S >= 1.0
