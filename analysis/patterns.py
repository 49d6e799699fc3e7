"""Module-name patterns from files, matched in bounded time: a config's regexes are untrusted input.

`rank_pattern` / `alpha_pattern` keys (and a string `target_modules` / `exclude_modules`, which peft
matches with Python's `re` when the app evaluates an export) are refused up front where they can backtrack
exponentially: a backreference, or a quantifier inside a quantified group (`(a+)+`). What is left is matched
by the `regex` engine with a time budget per load and the GIL released (`concurrent=True`), so one config
can neither stall a load past the budget nor freeze the server's other sessions. No streamlit here.
"""

from __future__ import annotations

import re
import time
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]

import regex

MAX_PATTERN_CHARS = 2_000  # a rank_pattern key names a module path: ~100 characters
MATCH_BUDGET_S = 2.0  # all pattern matching of one load: peft-sized configs need well under 10 ms
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is refused as a module-name regex, or None: invalid, too long, a backreference, or a
    quantifier nested in a quantified group (the shapes that backtrack exponentially).

    Example:
        `layers\\.[0-9]+\\.q_proj` -> None; `(a+)+$` -> "a quantifier inside a quantified group".
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"{len(pattern):,} characters, over {MAX_PATTERN_CHARS:,}"
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as err:
        return f"not a valid regular expression ({err})"
    try:
        return _walk(parsed, inside_repeat=False)
    except RecursionError:
        return "nested too deeply"


def _walk(items, *, inside_repeat: bool) -> str | None:
    for op, av in items:
        if op in (sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS):
            return "a backreference, which can take exponential time to match"
        subs: list = []
        repeats = inside_repeat
        if op in _REPEATS:
            low, high, sub = av
            if high > 1 and inside_repeat:
                return "a quantifier inside a quantified group, which can take exponential time to match"
            repeats = inside_repeat or high > 1
            subs = [sub]
        elif op == sre_constants.SUBPATTERN:
            subs = [av[-1]]
        elif op == sre_constants.BRANCH:
            subs = list(av[1])
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            subs = [av[1]]
        elif op == sre_constants.ATOMIC_GROUP:
            subs = [av]
        for sub in subs:
            if problem := _walk(sub, inside_repeat=repeats):
                return problem
    return None


class PatternTimeout(Exception):
    """Matching a file's patterns took longer than its budget."""


class MatchBudget:
    """The time left for matching one load's patterns (MATCH_BUDGET_S in all)."""

    def __init__(self, seconds: float = MATCH_BUDGET_S) -> None:
        self.deadline = time.monotonic() + seconds
        self._compiled: dict[str, regex.Pattern] = {}

    def matches_suffix(self, key: str, name: str) -> bool:
        """PEFT's rule for rank_pattern / alpha_pattern keys: `key` matches `name` as a dotted suffix.

        Raises:
            PatternTimeout: the budget is spent.
        """
        if (compiled := self._compiled.get(key)) is None:
            compiled = self._compiled[key] = regex.compile(rf"(.*\.)?({key})$", regex.VERSION0)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PatternTimeout(key)
        try:
            return compiled.match(name, timeout=left, concurrent=True) is not None
        except TimeoutError:
            raise PatternTimeout(key) from None
