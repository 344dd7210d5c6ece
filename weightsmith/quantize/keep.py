"""What a user keeps in high precision on top of the family's own policy (``Component.quant``):
``--keep GLOB`` and ``--keep-blocks first:N,last:M``, both checked against the model before any work."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from weightsmith.errors import UsageError

# Longest --keep pattern taken (a tensor name is at most a few hundred characters).
MAX_GLOB = 1000


def check_keep_globs(globs: Sequence[str], names: Iterable[str], option: str = "--keep") -> None:
    """Refuse, before any work, a --keep glob that is empty or matches no tensor of the model: a
    typo there would otherwise quantize the tensors the user meant to keep, without a word."""
    pool = sorted(set(names))
    for g in globs:
        if not g.strip():
            raise UsageError(
                f"{option} got an empty pattern", hint="give a glob of tensor names, e.g. 'blocks.0.*'"
            )
        if len(g) > MAX_GLOB:
            raise UsageError(
                f"{option} pattern of {len(g)} characters; tensor names are far shorter",
                hint="give a glob of tensor names, e.g. 'blocks.0.*'",
            )
        try:
            hit = any(fnmatch.fnmatchcase(n, g) for n in pool)
        except re.error as e:
            raise UsageError(f"{option} {g!r} is not a valid glob ({e})", hint="e.g. 'blocks.0.*'") from None
        if not hit:
            near = difflib.get_close_matches(g, pool, n=3, cutoff=0.0) or pool[:3]
            raise UsageError(
                f"{option} {g!r} matches no tensor of this model",
                hint=f"tensor names look like {', '.join(near)}",
            )


@dataclass(frozen=True)
class KeepBlocks:
    first: int = 0
    last: int = 0


def parse_keep_blocks(text: str | None) -> KeepBlocks:
    """``"first:2,last:2"`` (either part optional) -> KeepBlocks(2, 2); None -> keep none.

    An empty or malformed value is refused: a typo must not silently keep nothing."""
    if text is None:
        return KeepBlocks()
    if len(text) > 100:
        raise UsageError(
            f"--keep-blocks value of {len(text)} characters", hint="write it like first:2,last:2"
        )
    first = last = 0
    seen: set[str] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(first|last)\s*[:=]\s*([0-9]{1,6})\s*", part)
        if not m or m.group(1) in seen:
            raise UsageError(
                f"cannot read --keep-blocks {text!r}",
                hint="write it like first:2,last:2 (or first:1, last:3)",
            )
        seen.add(m.group(1))
        if m.group(1) == "first":
            first = int(m.group(2))
        else:
            last = int(m.group(2))
    return KeepBlocks(first, last)


class BlockStack:
    """The main stack of transformer blocks (what --keep-blocks counts), by Diffusers name.

    ``pattern`` is the family's ``QuantSpec.blocks``: a regex whose one group is the block index."""

    def __init__(self, pattern: str) -> None:
        self.rx = re.compile(pattern)

    def index(self, name: str) -> int | None:
        m = self.rx.match(name)
        if not m or len(m.group(1)) > 9:  # a 10-digit "index" is no block of any model
            return None
        return int(m.group(1))

    def kept(self, names: Iterable[str], keep: KeepBlocks) -> set[int]:
        """The block indices ``keep`` selects; refused when it asks for more blocks than exist."""
        idx = sorted({i for n in names if (i := self.index(n)) is not None})
        n_blocks = idx[-1] + 1 if idx else 0
        for part, count in (("first", keep.first), ("last", keep.last)):
            if count > n_blocks:
                raise UsageError(
                    f"--keep-blocks {part}:{count}, but the model has {n_blocks} transformer blocks",
                    hint=f"give at most {part}:{n_blocks}",
                )
        return set(range(min(keep.first, n_blocks))) | set(range(max(n_blocks - keep.last, 0), n_blocks))
