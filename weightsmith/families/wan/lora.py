"""How Wan LoRA files name the transformer's modules: Wan original / ComfyUI names and musubi-tuner's.

Both come from the family's own whole-key template table (``KEYMAP``, original <-> Diffusers),
read with ``.weight`` appended to a module name (and stripped again); musubi-tuner's
``blocks_0_self_attn_q`` names are the same templates with dots written as underscores.
"""

from __future__ import annotations

from collections.abc import Iterable

from weightsmith.families.lora import WEIGHT, ComponentLora, LoraTarget
from weightsmith.families.wan.keys import KeyMap


class WanLora(ComponentLora):
    """LoRA names of the Wan transformer, from its original <-> Diffusers key map."""

    title = "Wan"
    largest_released = 40  # Wan 14B (layouts.md)
    block_words = ("blocks",)  # blocks.N, vace_blocks.N, musubi blocks_N_
    diffusers_blocks = r"blocks|vace_blocks"
    exclusive = True  # blocks.N.attn1 is Wan's own; CogVideoX and Sana use transformer_blocks.N
    native_format = "wan-original"
    underscore_format = "wan-musubi"
    underscore_label = "musubi-tuner"
    format_help = (
        (
            "wan-original",
            (
                "ComfyUI / Wan: diffusion_model.blocks.0.self_attn.q.lora_down.weight,",
                "lora_up, .alpha, .diff, .diff_b",
            ),
        ),
        ("wan-musubi", ("musubi-tuner: lora_unet_blocks_0_self_attn_q.lora_down.weight, .alpha",)),
    )
    targets = (
        LoraTarget(
            name="original",
            naming="native",
            label="original",
            summary="Wan original (ComfyUI)",
            choice_help="Wan/ComfyUI",
            dst_help=("a .safetensors file with ComfyUI's diffusion_model. keys (Wan only)",),
            example_dst="comfy.safetensors",
            prefix="diffusion_model.",  # ComfyUI's LoRA prefix, which Diffusers' Wan converter expects
        ),
    )

    def __init__(self, keymap: KeyMap) -> None:
        self._keymap = keymap
        self._musubi: KeyMap | None = None

    def native_to_diffusers(self, native: str) -> tuple[str, bool] | None:
        key = self._keymap.a_to_b(native + WEIGHT)
        if key is not None and key.endswith(WEIGHT):
            return key[: -len(WEIGHT)], False
        key = self._keymap.a_to_b(native)
        if key is not None and not key.endswith((WEIGHT, ".bias")):
            return key, True
        return None

    def diffusers_to_native(self, module: str, param: bool = False) -> str | None:
        if param:
            return self._keymap.b_to_a(module)
        key = self._keymap.b_to_a(module + WEIGHT)
        return key[: -len(WEIGHT)] if key is not None else None

    def unknown_diffusers(self, modules: Iterable[str]) -> list[str]:
        return [m for m in sorted(set(modules)) if self.diffusers_to_native(m) is None]

    def underscore_to_native(self, name: str) -> str | None:
        """Wan original module for a musubi-tuner name (``blocks_0_self_attn_q`` -> ``blocks.0.self_attn.q``)."""
        if self._musubi is None:
            pairs = []
            for native, _ in self._keymap.pairs:
                tpl = native[: -len(".{p}")] if native.endswith(".{p}") else native
                pairs.append((tpl.replace(".", "_"), tpl))
            self._musubi = KeyMap(pairs)
        return self._musubi.a_to_b(name)
