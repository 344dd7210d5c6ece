"""How Wan transformers are quantized: what stays in high precision (Diffusers names) and how
GGUF recipes see the original layout (ComfyUI-GGUF's patch of llama.cpp)."""

from __future__ import annotations

from weightsmith.families.base import KeepRule, QuantSpec

TRANSFORMER_QUANT = QuantSpec(
    keep=(
        KeepRule("patch_embedding.*", "patch embedding"),
        KeepRule("vace_patch_embedding.*", "patch embedding"),
        KeepRule("condition_embedder.time_*", "time embedding"),
        KeepRule("condition_embedder.text_embedder.*", "text embedding"),
        KeepRule("condition_embedder.image_embedder.*", "image embedding"),
        KeepRule("vace_blocks.*.proj_in.*", "VACE hint projection"),
        KeepRule("vace_blocks.*.proj_out.*", "VACE hint projection"),
        KeepRule("*scale_shift_table", "modulation table"),
        KeepRule("proj_out.*", "head"),
    ),
    gguf_arch="wan",
    gguf_layout="original",
    gguf_v=("*.self_attn.v.weight", "*.cross_attn.v.weight"),
    gguf_ffn_down=("*.ffn.2.weight",),
    gguf_f32=("*modulation*",),
    diffusers_reads_gguf=True,
    comfy_fp8=True,
)
