"""Which family a LoRA's module names belong to: asked of the registered components' LoRA adapters.

Each family's transformer Component holds a LoRA adapter (``weightsmith.families.lora``) that
knows its Diffusers module names and its own LoRA formats; this module only asks them, in
registry order, and knows no family.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from weightsmith.errors import UsageError
from weightsmith.families import components
from weightsmith.families.lora import ComponentLora, LoraTarget, index_of


def adapters() -> list[ComponentLora]:
    """The LoRA adapters of every registered component that has one, in registry order."""
    return [c.lora for c in components() if c.lora is not None]


def lora_families() -> list[str]:
    """Families whose LoRA files weightsmith reads (one adapter each)."""
    return [a.family for a in adapters()]


def adapter_for(family: str) -> ComponentLora:
    """The LoRA adapter of ``family``; UsageError for a family without one."""
    for a in adapters():
        if a.family == family:
            return a
    known = lora_families()
    raise UsageError(f"unknown family {family!r}", hint=f"choose one of {', '.join(known)}")


def titles(joiner: str = " or ", of: Iterable[ComponentLora] | None = None) -> str:
    """The families as messages name them: "A, B or C"."""
    names = [a.display for a in (adapters() if of is None else of)]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + joiner + names[-1]


def formats() -> tuple[str, ...]:
    """Every LoRA format read: Diffusers PEFT, then each family's own."""
    return ("diffusers", *(f for a in adapters() for f in a.formats))


def targets() -> tuple[str, ...]:
    """Every LoRA format written (``--to``): Diffusers PEFT, then the families' own, by name."""
    return ("diffusers", *sorted(t.name for a in adapters() for t in a.targets))


def target(name: str) -> tuple[ComponentLora, LoraTarget] | None:
    """The adapter that writes format ``name`` and its description; None for Diffusers PEFT."""
    for a in adapters():
        for t in a.targets:
            if t.name == name:
                return a, t
    return None


# --------------------------------------------------------------------------------- block indices
@lru_cache(maxsize=8)
def _any_block(words: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?:^|[._])(?:{alternatives})[._]([0-9]+)(?=[._]|$)")


def block_index(name: str) -> int:
    """The highest block index a module or key name mentions, in any family's LoRA naming (-1 if none)."""
    words = tuple(sorted({w for a in adapters() for w in a.block_words}))
    return max((index_of(d) for d in _any_block(words).findall(name)), default=-1)


def blocks_beyond(names: Iterable[str], limit: int) -> list[tuple[str, int]]:
    """(name, block index) of the names that address a block at or past ``limit``; cheap, so a
    reader can refuse them before looking the names up."""
    return [(n, i) for n in names if (i := block_index(n)) >= limit]


# ------------------------------------------------------------------------------ family of names
def native_adapter(modules: Iterable[str]) -> ComponentLora | None:
    """The first family whose dotted native names (e.g. ComfyUI's) cover every module, or None."""
    mods = list(modules)
    for a in adapters():
        if a.native_format is not None and all(a.native_to_diffusers(m) is not None for m in mods):
            return a
    return None


def diffusers_families(modules: Iterable[str]) -> list[str]:
    """Families whose Diffusers transformer has every one of these modules (possibly several).

    A family whose names are its own (``exclusive``) is taken alone when it fits; otherwise
    every fitting family is listed (CogVideoX and Sana share ``transformer_blocks.N.attn1``).
    """
    mods = sorted(set(modules))
    if not mods:
        return []
    every = adapters()
    for a in every:
        if a.exclusive and a.fits_diffusers(mods):
            return [a.family]
    return [a.family for a in every if not a.exclusive and a.fits_diffusers(mods)]


def unknown_diffusers_modules(family: str, modules: Iterable[str]) -> list[str]:
    """The modules a family's Diffusers transformer does not have."""
    return adapter_for(family).unknown_diffusers(modules)
