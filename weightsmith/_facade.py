"""Verbs that share their name with an internal package: ``weightsmith.convert`` is both the
package ``weightsmith/convert/`` and the ``convert`` verb.

Python binds a package's submodule as an attribute of the package once it is imported, so a verb
function named ``convert`` on ``weightsmith`` would be replaced by the module the first time any
code imports ``weightsmith.convert.run``. Instead each such module is made callable: its class
becomes ``VerbModule``, whose ``__call__`` is the verb of ``weightsmith.api``. Every import of
the module keeps working, and ``weightsmith.convert(src, dst, to=...)`` calls the verb whichever
was imported first. The verb is looked up by name when called (``importlib``), so this bottom
layer imports nothing above it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class VerbModule(types.ModuleType):
    """A module that, called, runs the public verb of the same name (``weightsmith.api``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        verb = getattr(importlib.import_module("weightsmith.api"), self.__name__.rpartition(".")[2])
        return verb(*args, **kwargs)


def verb_module(name: str) -> None:
    """Make the module ``name`` (being imported) callable as its verb."""
    sys.modules[name].__class__ = VerbModule
