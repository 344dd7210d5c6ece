"""The forward inputs of CogVideoX transformers (CogVideoXTransformer3DModel).

The prompt length is the config's ``max_text_seq_length`` (models with positional tables need
exactly that many tokens). The rotary tables of 5B and 1.5 are an argument of diffusers' forward
(``image_rotary_emb``), computed by the pipeline from the sizes; they are not listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightsmith.families.inputs import ForwardInputs, InputSpec


class CogVideoXInputs(ForwardInputs):
    def specs(self, config: Mapping[str, Any], variant: str) -> list[InputSpec]:
        specs = [
            InputSpec(
                "hidden_states",
                ("batch", "frames", config["in_channels"], "height", "width"),
                doc="noisy latents [B, F, C, H, W] (image-to-video: image latents concatenated on C)",
            ),
            InputSpec(
                "encoder_hidden_states",
                ("batch", config["max_text_seq_length"], config["text_embed_dim"]),
                doc="T5 prompt embeddings, max_text_seq_length tokens",
            ),
            InputSpec("timestep", ("batch",), fill="timestep", doc="diffusion timestep per sample"),
        ]
        if config.get("ofs_embed_dim"):
            specs.append(
                InputSpec("ofs", ("batch",), fill="value", value=2.0, doc="1.5 image-to-video frame offset")
            )
        return specs

    def sizes(self, config: Mapping[str, Any], variant: str) -> dict[str, int]:
        frames = (int(config["sample_frames"]) - 1) // int(config.get("temporal_compression_ratio") or 4) + 1
        pt = config.get("patch_size_t")
        if pt:
            frames = max(pt, frames // pt * pt)
        return {
            "batch": 1,
            "frames": frames,
            "height": int(config["sample_height"]),
            "width": int(config["sample_width"]),
            "text": int(config["max_text_seq_length"]),
        }
