"""The forward inputs of Sana transformers (SanaTransformer2DModel)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightsmith.families.inputs import ForwardInputs, InputSpec


class SanaInputs(ForwardInputs):
    def specs(self, config: Mapping[str, Any], variant: str) -> list[InputSpec]:
        specs = [
            InputSpec(
                "hidden_states", ("batch", config["in_channels"], "height", "width"), doc="noisy latents"
            ),
            InputSpec(
                "encoder_hidden_states",
                ("batch", "text", config["caption_channels"]),
                doc="Gemma-2 embeddings",
            ),
            InputSpec("timestep", ("batch",), fill="timestep", doc="diffusion timestep per sample"),
            InputSpec(
                "encoder_attention_mask", ("batch", "text"), type_name="int64", fill="ones", doc="prompt mask"
            ),
        ]
        if config.get("guidance_embeds"):
            specs.append(
                InputSpec("guidance", ("batch",), fill="value", value=4.5, doc="Sprint's guidance scale")
            )
        return specs

    def sizes(self, config: Mapping[str, Any], variant: str) -> dict[str, int]:
        side = int(config.get("sample_size") or 32)
        return {"batch": 1, "height": side, "width": side, "text": 8}
