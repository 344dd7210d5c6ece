"""How Sana transformers are quantized: what stays in high precision (Diffusers names) and how
GGUF recipes see the original layout.

Sana's MLP is made of convolutions, which no consumer quantizes: only attention Linear weights
are. ``attn.qkv`` is the GGUF recipes' fused-qkv class.
"""

from __future__ import annotations

from weightsmith.families.base import KeepRule, QuantSpec

TRANSFORMER_QUANT = QuantSpec(
    keep=(
        KeepRule("patch_embed.*", "patch embedding"),
        KeepRule("time_embed.*", "time embedding/modulation"),
        KeepRule("caption_projection.*", "text embedding"),
        KeepRule("*scale_shift_table", "modulation table"),
        KeepRule("proj_out.*", "head"),
    ),
    gguf_arch="sana",
    gguf_layout="original",
    gguf_qkv=("*.attn.qkv.weight",),
    gguf_f32=("*scale_shift_table*", "*t_block.*"),
    diffusers_reads_gguf=True,
    comfy_refusal="ComfyUI has no native Sana model (only custom nodes load it)",
)
