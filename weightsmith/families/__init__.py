"""Model families. Importing this package registers every built-in family component.

Each family package registers its components with ``@register`` when imported; add a family by
adding a package under ``weightsmith/families/`` and importing it below.
"""

# Registration order is detection order (the first component that recognises the keys wins).
# isort: off
from weightsmith.families import cogvideox, wan, sana

# isort: on
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

# The built-in family packages, imported for their registrations.
BUILTIN = (cogvideox, wan, sana)
