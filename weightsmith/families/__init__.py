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
from weightsmith.families.config_check import validate_config
from weightsmith.io.base import add_config_check

__all__ = [
    "Component",
    "Detection",
    "KeyView",
    "PlanOptions",
    "components",
    "detect",
    "families",
    "get_component",
    "layouts",
    "register",
]

# Configs attached to checkpoints are checked by the families' rules (io cannot import them).
add_config_check(validate_config)

# The built-in family packages, imported for their registrations.
BUILTIN = (cogvideox, wan, sana)


def layouts() -> list[str]:
    """Every layout some registered component is known in (the choices of ``convert --to``)."""
    names = {layout for comp in components() for layout in comp.layouts}
    return sorted(names | {alias for comp in components() for alias in comp.layout_aliases})
