"""Model families. Importing this package registers every built-in family component.

Each module registers its components with ``@register``; add a family by adding a module and
importing it below.
"""

import importlib
import importlib.util

from weightsmith.families.base import (
    Component,
    Detection,
    KeyView,
    PlanOptions,
    components,
    detect,
    families,
    get_component,
    register,
)

__all__ = [
    "Component",
    "Detection",
    "KeyView",
    "PlanOptions",
    "components",
    "detect",
    "families",
    "get_component",
    "register",
]

for _name in ("cogvideox", "wan", "sana"):
    if importlib.util.find_spec(f"weightsmith.families.{_name}") is not None:
        importlib.import_module(f"weightsmith.families.{_name}")
