"""Quantization schemes by the names used on the command line, and the runner each dispatches to.

A scheme family (``options.SchemeFamily``) matches a prefix (``gguf:``) or exact names (``int8``,
``fp8``...) and runs the whole job; ``find_scheme`` finds it. Adding a scheme family is listing
one more here (or ``register_scheme_family`` from outside the package).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

from weightsmith.errors import UsageError
from weightsmith.quantize.options import SchemeFamily

__all__ = ["SchemeFamily", "find_scheme", "known_schemes", "register_scheme_family"]


def _loader(module: str) -> Callable[[], SchemeFamily]:
    return lambda: importlib.import_module(module).SCHEME_FAMILY


# Each family's runner module is imported when a scheme is looked up in it, in this order: a GGUF
# job never imports the Linear runner (torch), so its numpy path starts without torch.
_FAMILIES: list[Callable[[], SchemeFamily]] = [
    _loader("weightsmith.quantize.gguf.run"),
    _loader("weightsmith.quantize.linear.run"),
]


def register_scheme_family(fam: SchemeFamily) -> None:
    _FAMILIES.append(lambda: fam)


def _families() -> Iterator[SchemeFamily]:
    for load in _FAMILIES:
        yield load()


def known_schemes() -> list[str]:
    return [n for f in _families() for n in f.names()]


def find_scheme(scheme: str) -> SchemeFamily:
    for f in _families():
        if f.matches(scheme):
            return f
    raise UsageError(f"unknown scheme {scheme!r}", hint=f"choose one of {', '.join(known_schemes())}")
