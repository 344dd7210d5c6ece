"""The LoRA code asks the families: every transformer holds a LoRA adapter, formats and targets come
from the adapters, and an adapter with no overrides reads its names off the component's tiny model."""

from __future__ import annotations

from weightsmith.families import components, get_component
from weightsmith.families.lora import ComponentLora
from weightsmith.lora.names import adapter_for, formats, lora_families, targets


def test_every_transformer_names_its_lora_modules() -> None:
    transformers = {c.family for c in components() if c.component == "transformer"}
    assert set(lora_families()) == transformers
    assert set(formats()) == {"diffusers", "wan-original", "wan-musubi", "cogvideox-sat"}
    assert targets() == ("diffusers", "original", "sat")
    assert adapter_for("cogvideox").max_blocks == 4 * 42


def test_default_adapter_reads_names_off_the_tiny_model() -> None:
    base = type(get_component("sana", "transformer"))

    class Fake(base):  # type: ignore[misc, valid-type]  # never registered
        family = "fake"
        lora = ComponentLora()

    adapter = Fake.lora
    assert adapter.family == "fake" and adapter.display == "fake" and adapter.formats == ()
    assert adapter.fits_diffusers(["transformer_blocks.7.attn1.to_q", "proj_out"])
    assert adapter.unknown_diffusers(["blocks.0.attn1.to_q", "proj_out"]) == ["blocks.0.attn1.to_q"]
