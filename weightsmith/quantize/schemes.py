"""Quantization schemes by the names used on the command line, and the runner each dispatches to.

A scheme family registers a prefix (``gguf:``) or exact names (``int8``, ``fp8``...) and a
function that runs the whole job; ``run_scheme`` finds it. Adding a scheme is registering one.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from weightsmith.errors import UsageError


@dataclass(frozen=True)
class SchemeFamily:
    name: str
    matches: Callable[[str], bool]
    run: Callable[..., Any]
    names: Callable[[], list[str]]


_FAMILIES: list[SchemeFamily] = []


def register_scheme_family(fam: SchemeFamily) -> None:
    _FAMILIES.append(fam)


def known_schemes() -> list[str]:
    _load()
    return [n for f in _FAMILIES for n in f.names()]


def find_scheme(scheme: str) -> SchemeFamily:
    _load()
    for f in _FAMILIES:
        if f.matches(scheme):
            return f
    raise UsageError(f"unknown scheme {scheme!r}", hint=f"choose one of {', '.join(known_schemes())}")


def _load() -> None:
    import weightsmith.quantize.gguf_quantize  # noqa: F401 - registers gguf:*
    import weightsmith.quantize.linear_quantize  # noqa: F401 - registers int8, fp8, int4...


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
