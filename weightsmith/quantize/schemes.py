"""Quantization schemes by the names used on the command line, and the runner each dispatches to.

A scheme family (``options.SchemeFamily``) matches a prefix (``gguf:``) or exact names (``int8``,
``fp8``...) and runs the whole job; ``find_scheme`` finds it. Adding a scheme family is listing
one more here (or ``register_scheme_family`` from outside the package).
"""

from __future__ import annotations

from weightsmith.errors import UsageError
from weightsmith.quantize.gguf.run import SCHEME_FAMILY as GGUF
from weightsmith.quantize.linear.run import SCHEME_FAMILY as LINEAR
from weightsmith.quantize.options import SchemeFamily

__all__ = ["SchemeFamily", "find_scheme", "known_schemes", "register_scheme_family"]

_FAMILIES: list[SchemeFamily] = [GGUF, LINEAR]


def register_scheme_family(fam: SchemeFamily) -> None:
    _FAMILIES.append(fam)


def known_schemes() -> list[str]:
    return [n for f in _FAMILIES for n in f.names()]


def find_scheme(scheme: str) -> SchemeFamily:
    for f in _FAMILIES:
        if f.matches(scheme):
            return f
    raise UsageError(f"unknown scheme {scheme!r}", hint=f"choose one of {', '.join(known_schemes())}")
