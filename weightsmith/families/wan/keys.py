"""Key-name machinery shared by the Wan components: two-way templates and layout finding.

Wan conversions are pure renames, so a layout pair is a table of template pairs such as
``blocks.{i}.self_attn.q.{p}`` <-> ``blocks.{i}.attn1.to_q.{p}``. A template matches a whole key
(never a substring), so the same table renames in both directions without the ordered
``str.replace`` tricks (placeholder swaps, ``modulation`` vs ``head.modulation``) that a
substring map needs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence

from weightsmith.errors import UsageError
from weightsmith.families.base import find_prefix_all

# What each placeholder may stand for. Names not listed match one dotted token of digits.
FIELDS: dict[str, str] = {
    "p": r"weight|bias",
    "B": r"blocks|vace_blocks",
    "e": r"encoder|decoder",
}
_TOKEN = re.compile(r"\{(\w+)\}")


def _compile(template: str) -> re.Pattern[str]:
    parts = _TOKEN.split(template)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"(?P<{part}>{FIELDS.get(part, r'[0-9]+')})")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def _fill(template: str, groups: Mapping[str, str]) -> str:
    return _TOKEN.sub(lambda m: groups[m.group(1)], template)


_WHOLE = re.compile(r"\{(\w+)\}")  # a placeholder that is a whole dotted token
_DIGITS = frozenset("0123456789")


def _field_ok(name: str, value: str) -> bool:
    """Whether ``value`` (one dotted token) is what placeholder ``name`` stands for."""
    rx = _FIELD_RX.get(name)
    if rx is not None:
        return rx.fullmatch(value) is not None
    return bool(value) and _DIGITS.issuperset(value)


_FIELD_RX = {name: re.compile(rx) for name, rx in FIELDS.items()}


class _Side:
    """One side's templates, matched token by token: templates are grouped by their token count
    and placeholder positions, and a key is looked up by its literal tokens in each group. No
    regex is compiled (compiling a table's ~80 patterns took ~25-60 ms of every command's start;
    detection maps every key). A template with a placeholder inside a token takes a regex."""

    def __init__(self, templates: Sequence[str]) -> None:
        self.templates = tuple(templates)
        self.groups: dict[tuple[int, tuple[int, ...]], dict[tuple[str, ...], list[int]]] = {}
        self.slots: list[tuple[tuple[int, str], ...]] = []
        self.partial: list[int] = []  # indices that need a regex
        for idx, t in enumerate(self.templates):
            toks = t.split(".")
            slots = tuple((i, m.group(1)) for i, tok in enumerate(toks) if (m := _WHOLE.fullmatch(tok)))
            self.slots.append(slots)
            where = tuple(i for i, _ in slots)
            lits = tuple(tok for i, tok in enumerate(toks) if i not in where)
            if any("{" in tok for tok in lits):
                self.partial.append(idx)
                continue
            self.groups.setdefault((len(toks), where), {}).setdefault(lits, []).append(idx)

    @functools.cached_property
    def _regexes(self) -> dict[int, re.Pattern[str]]:
        return {idx: _compile(self.templates[idx]) for idx in self.partial}

    def match(self, key: str) -> tuple[int, dict[str, str]] | None:
        """(index of the first template matching the whole key, its placeholder values), or None."""
        toks = key.split(".")
        best: tuple[int, dict[str, str]] | None = None
        for (n, where), table in self.groups.items():
            if n != len(toks):
                continue
            lits = tuple(tok for i, tok in enumerate(toks) if i not in where)
            for idx in table.get(lits, ()):
                if best is not None and idx > best[0]:
                    break
                values = {name: toks[i] for i, name in self.slots[idx]}
                if all(_field_ok(name, v) for name, v in values.items()):
                    best = (idx, values)
                    break
        for idx in self.partial:
            if best is not None and idx > best[0]:
                break
            m = self._regexes[idx].fullmatch(key)
            if m:
                best = (idx, m.groupdict())
                break
        return best


class KeyMap:
    """A one-to-one renaming between two layouts, given as ``(a_template, b_template)`` pairs.

    Both templates of a pair must use the same placeholders. The first pair whose template
    matches the whole key wins; tables are written so that at most one can match.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        for a, b in pairs:
            if sorted(_TOKEN.findall(a)) != sorted(_TOKEN.findall(b)):
                raise UsageError(
                    f"KeyMap pair {a!r} <-> {b!r} uses different placeholders",
                    hint="both templates of a pair must name the same {placeholders}",
                )
        self.pairs = tuple(pairs)
        self._a, self._b = _Side([a for a, _ in pairs]), _Side([b for _, b in pairs])
        self._a_names, self._b_names = tuple(a for a, _ in pairs), tuple(b for _, b in pairs)

    @staticmethod
    def _apply(side: _Side, targets: Sequence[str], key: str) -> str | None:
        found = side.match(key)
        return None if found is None else _fill(targets[found[0]], found[1])

    def a_to_b(self, key: str) -> str | None:
        """``key`` (layout a) in layout b, or None when no template knows it."""
        return self._apply(self._a, self._b_names, key)

    def b_to_a(self, key: str) -> str | None:
        """``key`` (layout b) in layout a, or None when no template knows it."""
        return self._apply(self._b, self._a_names, key)


def locate(keys: Iterable[str], markers: Mapping[str, Sequence[str]]) -> tuple[str, str] | None:
    """(layout, prefix) of the first layout whose marker keys all appear under one prefix."""
    keys = list(keys)
    for layout, ms in markers.items():
        prefix = find_prefix_all(keys, ms)
        if prefix is not None:
            return layout, prefix
    return None
