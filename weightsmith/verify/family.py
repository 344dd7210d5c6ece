"""The one door from verify/ to the families: a family's transformer and its generation adapter."""

from __future__ import annotations

from weightsmith.errors import UsageError
from weightsmith.families import Component, components, get_component
from weightsmith.families.generation import Generation


def generation(family: str) -> Generation:
    """The verify adapter of ``family``'s transformer (``Component.generation``)."""
    gen = get_component(family, "transformer").generation
    if gen is None:
        raise UsageError(
            f"no pipeline known for family {family!r}",
            hint="give the family's transformer Component a generation adapter (families/generation.py)",
        )
    return gen


def verifiable() -> list[Component]:
    """Every transformer component that declares a generation adapter, in registry order."""
    return [c for c in components() if c.component == "transformer" and c.generation is not None]


def reads_gguf(family: str) -> bool:
    """Whether diffusers' own ``from_single_file`` loads weightsmith's GGUF of this family."""
    return get_component(family, "transformer").quant.diffusers_reads_gguf


def published_layout(family: str) -> str:
    """The layout single-file checkpoints of the family's transformer are published (and GGUF
    written) in: its ``quant.gguf_layout``, else its first layout other than Diffusers'."""
    comp = get_component(family, "transformer")
    if comp.quant.gguf_layout in comp.layouts:
        return comp.quant.gguf_layout
    return next((layout for layout in comp.layouts if layout != "diffusers"), comp.layouts[0])


def demo_schemes(family: str) -> tuple[str, ...]:
    """The schemes the demo's matrix adds for ``family`` alone (its generation's ``demo_schemes``)."""
    return generation(family).demo_schemes


def demo_models() -> list[tuple[str, str]]:
    """(family, variant) of the model each family shows in the demo and its verification matrix."""
    return [(c.family, c.generation.demo_variant) for c in verifiable() if c.generation.demo_variant]
