"""The ``__init__`` parameters of a family's diffusers classes, as data.

Config checks (``config_check.py``) type each key of a config.json by the diffusers class's own
``__init__`` annotations. Importing a diffusers model class imports torch and diffusers (seconds),
which ``inspect`` of a file with an embedded config must not pay; so each family package keeps
those annotations as a table (``<family>/config_fields.py``, written by
``python -m weightsmith.families.config_fields_writer``) stamped with the diffusers version it was read
from. The table is used only when that version is the installed one; otherwise, and for a class
no table holds, the class itself is imported and read (the same annotations, just slower).
``tests/families/test_config_fields.py`` checks every table against the installed diffusers.
"""

from __future__ import annotations

import inspect as pyinspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# A parameter's (annotation, default); the default is kept only when it is a plain literal.
Field = tuple[Any, Any]


@dataclass(frozen=True)
class ConfigFields:
    """The parameters of some diffusers classes (``classes``: class name -> parameter -> field)
    as diffusers ``diffusers`` declares them."""

    diffusers: str = ""
    classes: Mapping[str, Mapping[str, Field]] = field(default_factory=dict)


@lru_cache(maxsize=1)
def installed_diffusers() -> str | None:
    """The installed diffusers version (from its metadata: diffusers itself is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return None


@lru_cache(maxsize=32)
def class_fields(cls: type) -> dict[str, Field]:
    """``__init__`` parameter -> (annotation, default) of a diffusers class, read from the class."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to defaults' types
        hints = {}
    out: dict[str, Field] = {}
    for name, p in pyinspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(name)
        if ann is None and p.default is not p.empty and p.default is not None:
            ann = type(p.default)
        out[name] = (ann, p.default)
    return out


def fields_of(comp: Any) -> list[dict[str, Field]]:
    """The parameters of every diffusers class ``comp`` builds (one table per class, variant order).

    From the family's stored table when it was read from the installed diffusers, else from
    the class (importing diffusers); a class diffusers does not have is skipped.
    """
    stored: ConfigFields = getattr(comp, "config_fields", None) or ConfigFields()
    current = stored.diffusers and stored.diffusers == installed_diffusers()
    out: list[dict[str, Field]] = []
    seen: set[str] = set()
    for variant in (None, *comp.variants):
        name = comp.class_name(variant)
        if name in seen:
            continue
        seen.add(name)
        if current and name in stored.classes:
            out.append(dict(stored.classes[name]))
            continue
        try:
            cls = comp.model_class(variant)
        except (AttributeError, ImportError):
            continue
        out.append(class_fields(cls))
    return out
