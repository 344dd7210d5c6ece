"""How CogVideoX transformers are quantized: what stays in high precision (Diffusers names) and
how GGUF recipes see the SAT layout.

Extensions of ComfyUI-GGUF's patterns for the SAT names: the fused ``query_key_value`` counts as
fused qkv, ``mlp.dense_4h_to_h`` as FFN-down, and the per-block adaLN Linear layers as modulation
(kept in float, like Wan's time projection). diffusers cannot load a CogVideoX GGUF.

ComfyUI files (``--format comfy``/``comfy-legacy``) are written in ComfyUI's own CogVideoX names
(``comfy_keys``), which ComfyUI's model detection and native module read; the keep policy stays
in Diffusers names (the writer maps every output name back). Quantized there: the q/k/v/attn_out
and ff_proj/ff_out Linears of each block.
"""

from __future__ import annotations

from weightsmith.families.base import KeepRule, QuantSpec

TRANSFORMER_QUANT = QuantSpec(
    keep=(
        KeepRule("patch_embed.*", "patch/text embedding"),
        KeepRule("time_embedding.*", "time embedding"),
        KeepRule("ofs_embedding.*", "ofs embedding"),
        KeepRule("*.norm1.linear.*", "modulation"),
        KeepRule("*.norm2.linear.*", "modulation"),
        KeepRule("norm_out.*", "modulation"),
        KeepRule("proj_out.*", "head"),
    ),
    gguf_arch="cogvideox",
    gguf_layout="sat",
    gguf_qkv=("*.attention.query_key_value.weight",),
    gguf_ffn_down=("*.mlp.dense_4h_to_h.weight",),
    gguf_f32=("*adaLN_modulation*",),
    comfy_fp8=True,
    comfy_layout="comfy",
)
