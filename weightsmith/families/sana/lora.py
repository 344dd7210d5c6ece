"""How Sana LoRA files name the transformer's modules: Diffusers names only (Sana has no native
LoRA format); they are read off the tiny model, which has every optional part."""

from __future__ import annotations

from weightsmith.families.lora import ComponentLora


class SanaLora(ComponentLora):
    """LoRA names of the Sana transformer."""

    title = "Sana"
    largest_released = 60  # Sana 4.8B (layouts.md)
    diffusers_blocks = r"transformer_blocks"
    names_variant = "sprint"
