"""CogVideoX DiT keys in ComfyUI's native layout (comfy/ldm/cogvideo/model.py), as renames of the
Diffusers keys.

ComfyUI's CogVideoX module keeps Diffusers' tensors one for one (q, k and v separate, the adaLN
Linear of each block already split into ``norm1.linear``/``norm2.linear`` in Diffusers' chunk
order, the same shapes, 1.5's Linear patch embedding included) but flattens the module paths:
``transformer_blocks.N.attn1.to_q`` is ``blocks.N.q``, ``ff.net.0.proj`` is ``ff_proj``,
``time_embedding.linear_1`` is ``time_embedding_linear_1``. So the layout is a pure rename, lossless
both ways; whole-path matches, never substring replacement. ComfyUI finds the model by
``blocks.0.norm1.linear.weight`` (its model_detection), which is also our marker.
"""

from __future__ import annotations

import re

# Top-level module renames, Diffusers -> ComfyUI (modules not named keep their path).
COMFY_GLOBAL = {
    "time_embedding.linear_1": "time_embedding_linear_1",
    "time_embedding.linear_2": "time_embedding_linear_2",
    "ofs_embedding.linear_1": "ofs_embedding_linear_1",
    "ofs_embedding.linear_2": "ofs_embedding_linear_2",
}
# Per-block module renames inside transformer_blocks.N. -> blocks.N.
COMFY_BLOCK = {
    "norm1.linear": "norm1.linear",
    "norm1.norm": "norm1.norm",
    "attn1.to_q": "q",
    "attn1.to_k": "k",
    "attn1.to_v": "v",
    "attn1.norm_q": "norm_q",
    "attn1.norm_k": "norm_k",
    "attn1.to_out.0": "attn_out",
    "norm2.linear": "norm2.linear",
    "norm2.norm": "norm2.norm",
    "ff.net.0.proj": "ff_proj",
    "ff.net.2": "ff_out",
}
_BLOCK_RX = re.compile(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)")

COMFY_MARKERS = ("blocks.0.norm1.linear.weight",)
COMFY_REQUIRED_MARKERS = ("patch_embed.text_proj.weight", "time_embedding_linear_1.weight")


def comfy_name(diffusers_key: str) -> str:
    """ComfyUI's name for a Diffusers CogVideoX DiT key (every key ``transformer_units`` lists)."""
    m = _BLOCK_RX.fullmatch(diffusers_key)
    if m:
        return f"blocks.{m.group(1)}.{COMFY_BLOCK[m.group(2)]}.{m.group(3)}"
    module, dot, param = diffusers_key.rpartition(".")
    if dot and module in COMFY_GLOBAL:
        return f"{COMFY_GLOBAL[module]}.{param}"
    return diffusers_key
