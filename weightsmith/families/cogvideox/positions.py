"""CogVideoX-2B's fixed sincos position table, for the one layout that must store it: ComfyUI's.

ComfyUI's model detection reads the presence of ``patch_embed.pos_embedding`` as "absolute
positions, no RoPE" and its absence as "RoPE" (comfy/model_detection.py), so a 2B file without
the table would run there as a RoPE model. Diffusers keeps the table as a non-persistent buffer
(never saved), so going to ComfyUI's layout it is derived here: the buffer diffusers'
``CogVideoXPatchEmbed`` builds for the same config (its own method computes it, in float64),
stored in float32 like ComfyUI's buffer. ComfyUI itself recomputes the sincos values at run time: only the table's presence and shape matter to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def table_rows(settings: Mapping[str, Any], patch: int) -> int:
    """Rows of the joint (text + video patches) table for a 1.0 model's sample size."""
    h, w = int(settings["sample_height"]) // patch, int(settings["sample_width"]) // patch
    frames = (int(settings["sample_frames"]) - 1) // int(settings["temporal_compression_ratio"]) + 1
    return int(settings["max_text_seq_length"]) + h * w * frames


def sincos_table(dim: int, settings: Mapping[str, Any], patch: int) -> torch.Tensor:
    """The [1, rows, dim] float32 table diffusers' CogVideoXPatchEmbed registers for these settings."""
    import torch
    from diffusers.models.embeddings import CogVideoXPatchEmbed

    # Only the grid attributes the method reads; building the module would allocate its
    # projections (text_proj alone is 4096 x 1920 at 2B size) for nothing.
    grid = SimpleNamespace(
        patch_size=patch,
        temporal_compression_ratio=int(settings["temporal_compression_ratio"]),
        embed_dim=dim,
        spatial_interpolation_scale=float(settings["spatial_interpolation_scale"]),
        temporal_interpolation_scale=float(settings["temporal_interpolation_scale"]),
        max_text_seq_length=int(settings["max_text_seq_length"]),
    )
    return CogVideoXPatchEmbed._get_positional_embeddings(
        grid,  # type: ignore[arg-type]
        int(settings["sample_height"]),
        int(settings["sample_width"]),
        int(settings["sample_frames"]),
    ).to(torch.float32)
