"""Writes each built-in family's ``config_fields.py`` from the installed diffusers (a developer's
tool, run after upgrading diffusers; then ``ruff format`` the tables):
``python -m weightsmith.families.config_fields_writer``."""

from __future__ import annotations

import ast
import importlib
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightsmith.families.config_fields import Field, class_fields, installed_diffusers

_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", tuple: "tuple", dict: "dict"}


def annotation_source(ann: Any, top: bool = True) -> str:
    """Python source for an annotation, in the builtin forms the checks understand (``int | None``,
    ``tuple[int, ...]``); anything else becomes ``Any``, which the checks treat alike (fits all)."""
    if ann is None:
        return "None"  # no annotation at all
    if ann is type(None):
        return "type(None)" if top else "None"
    if ann is Ellipsis:
        return "..."
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(annotation_source(a, False) for a in typing.get_args(ann))
    if origin in _NAMES:
        args = typing.get_args(ann)
        base = _NAMES[origin]
        return f"{base}[{', '.join(annotation_source(a, False) for a in args)}]" if args else base
    if ann in _NAMES:
        return _NAMES[ann]
    return "Any"


def _default_source(value: Any) -> str:
    """A default as source when it is a plain literal, else ``None`` (only its type matters)."""
    try:
        text = repr(value)
        return text if ast.literal_eval(text) == value else "None"
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "None"


def table_source(classes: Mapping[str, dict[str, Field]], version: str) -> str:
    """The text of a ``<family>/config_fields.py`` holding ``classes``."""
    lines = [
        '"""The __init__ parameters of this family\'s diffusers classes: (annotation, default), as',
        f"diffusers {version} declares them. Written by `python -m weightsmith.families.config_fields_writer`",
        '(see weightsmith/families/config_fields.py); do not edit by hand."""',
        "",
        "from typing import Any",
        "",
        "from weightsmith.families.config_fields import ConfigFields",
        "",
        "CONFIG_FIELDS = ConfigFields(",
        f"    diffusers={version!r},",
        "    classes={",
    ]
    for name, fields in sorted(classes.items()):
        lines.append(f"        {name!r}: {{")
        for param, (ann, default) in fields.items():
            lines.append(f"            {param!r}: ({annotation_source(ann)}, {_default_source(default)}),")
        lines.append("        },")
    lines += ["    },", ")", ""]
    text = "\n".join(lines)
    if "Any" not in text.split("CONFIG_FIELDS", 1)[1]:
        text = text.replace("from typing import Any\n\n", "")
    return text


def write_tables() -> list[Path]:
    """Rewrite every built-in family's table from the installed diffusers."""
    from weightsmith.families import BUILTIN, components

    version = installed_diffusers() or ""
    written = []
    for package in BUILTIN:
        classes: dict[str, dict[str, Field]] = {}
        for comp in components():
            if not type(comp).__module__.startswith(package.__name__ + "."):
                continue
            for variant in (None, *comp.variants):
                classes.setdefault(comp.class_name(variant), class_fields(comp.model_class(variant)))
        path = Path(package.__file__).with_name("config_fields.py")
        path.write_text(table_source(classes, version))
        written.append(path)
    importlib.invalidate_caches()
    return written


if __name__ == "__main__":
    for p in write_tables():
        sys.stdout.write(f"{p}\n")
