"""Quantization schemes by the names used on the command line, and the runner each dispatches to.

A scheme family registers a prefix (``gguf:``) or exact names (``int8``, ``fp8``...) and a
function that runs the whole job; ``run_scheme`` finds it. Adding a scheme is registering one.
"""

from __future__ import annotations

from collections.abc import Callable
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
