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

    # compiled on first use: a table's ~80 patterns took ~25 ms of every command's start-up
    @functools.cached_property
    def _ab(self) -> list[tuple[re.Pattern[str], str]]:
        return [(_compile(a), b) for a, b in self.pairs]

    @functools.cached_property
    def _ba(self) -> list[tuple[re.Pattern[str], str]]:
        return [(_compile(b), a) for a, b in self.pairs]

    @staticmethod
    def _apply(table: list[tuple[re.Pattern[str], str]], key: str) -> str | None:
        for rx, target in table:
            m = rx.fullmatch(key)
            if m:
                return _fill(target, m.groupdict())
        return None

    def a_to_b(self, key: str) -> str | None:
        """``key`` (layout a) in layout b, or None when no template knows it."""
        return self._apply(self._ab, key)

    def b_to_a(self, key: str) -> str | None:
        """``key`` (layout b) in layout a, or None when no template knows it."""
        return self._apply(self._ba, key)


def locate(keys: Iterable[str], markers: Mapping[str, Sequence[str]]) -> tuple[str, str] | None:
    """(layout, prefix) of the first layout whose marker keys all appear under one prefix."""
    keys = list(keys)
    for layout, ms in markers.items():
        prefix = find_prefix_all(keys, ms)
        if prefix is not None:
            return layout, prefix
    return None
