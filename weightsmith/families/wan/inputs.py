"""The forward inputs of Wan transformers (WanTransformer3DModel / WanVACETransformer3DModel)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightsmith.families.inputs import ForwardInputs, InputSpec


class WanInputs(ForwardInputs):
    def specs(self, config: Mapping[str, Any], variant: str) -> list[InputSpec]:
        latent = ("frames", "height", "width")
        specs = [
            InputSpec(
                "hidden_states",
                ("batch", config["in_channels"], *latent),
                doc="noisy latents [B, C, F, H, W]",
            ),
            InputSpec("timestep", ("batch",), fill="timestep", doc="diffusion timestep per sample"),
            InputSpec(
                "encoder_hidden_states", ("batch", "text", config["text_dim"]), doc="UMT5 prompt embeddings"
            ),
        ]
        if config.get("image_dim") is not None:
            specs.append(
                InputSpec(
                    "encoder_hidden_states_image",
                    ("images", "image_tokens", config["image_dim"]),
                    doc="CLIP image-encoder states (first/last-frame models: two images per sample)",
                )
            )
        if config.get("vace_in_channels") is not None:
            specs.append(
                InputSpec(
                    "control_hidden_states",
                    ("batch", config["vace_in_channels"], *latent),
                    doc="VACE context",
                )
            )
        return specs

    def sizes(self, config: Mapping[str, Any], variant: str) -> dict[str, int]:
        pos = config.get("pos_embed_seq_len")
        return {
            "batch": 1,
            "frames": 2,
            "height": 8,
            "width": 8,
            "text": 8,
            "images": 2 if pos else 1,  # first/last-frame models take two images per sample
            "image_tokens": pos // 2 if pos else 4,
        }
