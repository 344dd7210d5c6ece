"""Tiny CogVideoX configurations: the test-sized models (after diffusers' test configs, layouts.md 6)
and the wide ones whose Linear rows are 256 so every GGUF K-type applies."""

from __future__ import annotations

from typing import Any

from weightsmith.errors import UsageError
from weightsmith.families.tiny_init import TinyInit

TRANSFORMER_VARIANTS = ("2b", "5b", "5b-i2v", "1.5-5b", "1.5-5b-i2v")

# 0.1 * N(0, 1), norm scales 1 + 0.1 * N(0, 1): activations survive the depth of the tiny DiT.
COGVIDEOX_INIT = TinyInit(
    matrix=0.1, bias=0.1, scale_center=1.0, scale_std=0.1, buffers="noise", noise_dtype="float64"
)

_TINY: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "in_channels": 4,
    "out_channels": 4,
    "time_embed_dim": 8,
    "text_embed_dim": 8,
    "num_layers": 2,
    "sample_width": 8,
    "sample_height": 8,
    "sample_frames": 9,
    "patch_size": 2,
    "patch_size_t": None,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 8,
}
_WIDE: dict[str, Any] = {
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "in_channels": 4,
    "out_channels": 4,
    "time_embed_dim": 64,
    "text_embed_dim": 64,
    "num_layers": 2,
    "sample_width": 4,
    "sample_height": 4,
    "sample_frames": 5,
    "patch_size": 2,
    "patch_size_t": None,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 8,
}


def tiny_transformer_config(variant: str, wide: bool = False) -> dict[str, Any]:
    """Constructor kwargs of the tiny (or wide) CogVideoXTransformer3DModel for ``variant``."""
    if variant not in TRANSFORMER_VARIANTS:
        raise UsageError(
            f"unknown CogVideoX transformer variant {variant!r}",
            hint="one of: " + ", ".join(TRANSFORMER_VARIANTS),
        )
    return _wide_transformer(variant) if wide else _tiny_transformer(variant)


def _tiny_transformer(variant: str) -> dict[str, Any]:
    base = dict(_TINY)
    if variant == "2b":
        return base
    if variant == "5b":
        return {**base, "use_rotary_positional_embeddings": True}
    if variant == "5b-i2v":
        # Released text length and frame count, tiny 2x3-patch grid: the learned table's 304 rows
        # (226 + 13*2*3) let diffusers_config re-derive the sample size from shapes alone.
        return {
            **base,
            "in_channels": 8,
            "use_rotary_positional_embeddings": True,
            "use_learned_positional_embeddings": True,
            "sample_height": 4,
            "sample_width": 6,
            "sample_frames": 49,
            "max_text_seq_length": 226,
        }
    if variant == "1.5-5b":
        return {**base, "patch_size_t": 2, "use_rotary_positional_embeddings": True, "patch_bias": False}
    return {  # 1.5-5b-i2v
        **base,
        "in_channels": 8,
        "patch_size_t": 2,
        "ofs_embed_dim": 8,
        "use_rotary_positional_embeddings": True,
        "patch_bias": False,
    }


def _wide_transformer(variant: str) -> dict[str, Any]:
    cfg = dict(_WIDE)
    if variant != "2b":
        cfg["use_rotary_positional_embeddings"] = True
    if variant in ("5b-i2v", "1.5-5b-i2v"):
        cfg["in_channels"] = 8
    if variant == "5b-i2v":
        cfg["use_learned_positional_embeddings"] = True
    if variant.startswith("1.5"):
        cfg |= {"patch_size_t": 2, "patch_bias": False}
    if variant == "1.5-5b-i2v":
        cfg["ofs_embed_dim"] = 64
    return cfg


def comfy_tiny_transformer_config(variant: str) -> dict[str, Any]:
    """A tiny ``variant`` ComfyUI's CogVideoX detection reads right: it assumes what every release
    has (attention_head_dim 64, out_channels 16, 1.5's 2x2x2 patches) and builds 1.0's position
    table for 60x90x49 samples and 226 text tokens, so those are the released values here (the
    2B/5B-I2V table is then [1, 17776, 64]; the model itself stays 64 wide, 2 blocks)."""
    cfg = tiny_transformer_config(variant)
    cfg |= {
        "num_attention_heads": 1,
        "attention_head_dim": 64,
        "in_channels": 2 * 16 if cfg["in_channels"] != cfg["out_channels"] else 16,
        "out_channels": 16,
        "time_embed_dim": 32,
        "text_embed_dim": 32,
        "sample_height": 60,
        "sample_width": 90,
        "sample_frames": 49,
        "max_text_seq_length": 226,
    }
    if cfg.get("ofs_embed_dim"):
        cfg["ofs_embed_dim"] = 16
    if cfg["patch_size_t"]:  # ComfyUI's 1.5 RoPE base grid (supported_models.CogVideoX_T2V)
        cfg |= {"sample_height": 96, "sample_width": 170, "sample_frames": 81}
    return cfg


def tiny_vae_config() -> dict[str, Any]:
    """Constructor kwargs of the tiny VAE (diffusers' test config, with a channel change for shortcuts).

    Also the wide one: a VAE has no Linear rows to widen."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("CogVideoXDownBlock3D",) * 4,
        "up_block_types": ("CogVideoXUpBlock3D",) * 4,
        "block_out_channels": (8, 8, 16, 16),
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 2,
        "temporal_compression_ratio": 4,
    }
