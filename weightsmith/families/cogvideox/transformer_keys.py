"""CogVideoX DiT keys: the SAT <-> Diffusers tables, one ``Unit`` per piece of the model.

SAT keeps q, k and v fused in ``query_key_value`` and the twelve adaLN modulation vectors of a
block in one ``Linear(512 -> 12*hidden)`` whose chunk order Diffusers splits across
``norm1.linear`` and ``norm2.linear`` (layouts.md 2.1-2.3). Each piece of the model is one
``Unit`` naming its keys in both layouts, so both directions come from the same table and
renames are whole-path matches, never the substring replacements of the official converter
(whose reverse would corrupt ``linear_2`` or ``norm2``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from weightsmith.families.cogvideox._common import COMFY, DIFFUSERS, PARAMS, SAT, SAT_FOREIGN_PREFIXES
from weightsmith.families.cogvideox.comfy_keys import comfy_name

# One-to-one module renames, (SAT module path, Diffusers module path); both hold .weight/.bias.
# These restate layouts.md 2.3 rules 1-16 as whole-path pairs.
GLOBAL_RENAMES: tuple[tuple[str, str, str], ...] = (
    # (SAT, Diffusers, group) - group "core" is required, others are all-or-none.
    ("mixins.patch_embed.proj", "patch_embed.proj", "core"),
    ("mixins.patch_embed.text_proj", "patch_embed.text_proj", "core"),
    ("time_embed.0", "time_embedding.linear_1", "core"),
    ("time_embed.2", "time_embedding.linear_2", "core"),
    ("ofs_embed.0", "ofs_embedding.linear_1", "ofs"),
    ("ofs_embed.2", "ofs_embedding.linear_2", "ofs"),
)
BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("transformer.layers.{i}.input_layernorm", "transformer_blocks.{i}.norm1.norm"),
    ("mixins.adaln_layer.query_layernorm_list.{i}", "transformer_blocks.{i}.attn1.norm_q"),
    ("mixins.adaln_layer.key_layernorm_list.{i}", "transformer_blocks.{i}.attn1.norm_k"),
    ("transformer.layers.{i}.attention.dense", "transformer_blocks.{i}.attn1.to_out.0"),
    ("transformer.layers.{i}.post_attention_layernorm", "transformer_blocks.{i}.norm2.norm"),
    ("transformer.layers.{i}.mlp.dense_h_to_4h", "transformer_blocks.{i}.ff.net.0.proj"),
    ("transformer.layers.{i}.mlp.dense_4h_to_h", "transformer_blocks.{i}.ff.net.2"),
)
FINAL_RENAMES: tuple[tuple[str, str, str], ...] = (
    ("transformer.final_layernorm", "norm_final", "core"),
    ("mixins.final_layer.norm_final", "norm_out.norm", "core"),
    ("mixins.final_layer.adaLN_modulation.1", "norm_out.linear", "core"),
    ("mixins.final_layer.linear", "proj_out", "core"),
)
SAT_QKV = "transformer.layers.{i}.attention.query_key_value"
DIFF_QKV = (
    "transformer_blocks.{i}.attn1.to_q",
    "transformer_blocks.{i}.attn1.to_k",
    "transformer_blocks.{i}.attn1.to_v",
)
SAT_ADALN = "mixins.adaln_layer.adaLN_modulations.{i}.1"
DIFF_ADALN = ("transformer_blocks.{i}.norm1.linear", "transformer_blocks.{i}.norm2.linear")
SAT_POS = "mixins.pos_embed.pos_embedding"
DIFF_POS = "patch_embed.pos_embedding"
# SAT's Rotary3DPositionEmbeddingMixin registers its RoPE tables as buffers in some versions.
SAT_ROPE = ("mixins.pos_embed.freqs_sin", "mixins.pos_embed.freqs_cos")
# SAT keys the DiT never uses (layouts.md 2.1/2.3); dropped going to Diffusers.
SAT_UNUSED = {
    "transformer.position_embeddings.weight": "SAT BaseTransformer's absolute position table, unused",
    "transformer.word_embeddings.weight": "SAT BaseTransformer's token embedding, unused by the DiT",
}

# adaLN chunk order. SAT: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, then the same
# six for the text stream. Diffusers CogVideoXLayerNormZero(norm1/norm2): shift, scale, gate,
# enc_shift, enc_scale, enc_gate. So norm1 = SAT chunks 0-2 + 6-8, norm2 = 3-5 + 9-11.
ADALN_TO_DIFF = ((0, 1, 2, 6, 7, 8), (3, 4, 5, 9, 10, 11))
# The inverse, with chunks numbered norm1 0-5 then norm2 6-11.
ADALN_TO_SAT = ((0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11),)


@dataclass(frozen=True)
class Unit:
    """One piece of the model in every layout: which SAT keys become which Diffusers keys, and how.

    ``kind``: "rename" (1 <-> 1), "qkv" (1 fused <-> 3), "adaln" (1 of 12 chunks <-> 2 of 6),
    "pos" (positional table, handled per variant). ``group``: "core" units must be present; any
    other group (optional patch bias, ofs embedding, ...) is all-or-none. ComfyUI's names are
    Diffusers' renamed one for one (``comfy_keys``), so its surgery is Diffusers'.
    """

    kind: str
    sat: tuple[str, ...]
    diff: tuple[str, ...]
    group: str = "core"

    def side(self, layout: str) -> tuple[str, ...]:
        if layout == SAT:
            return self.sat
        if layout == COMFY:
            return tuple(comfy_name(k) for k in self.diff)
        return self.diff


def transformer_units(num_layers: int) -> list[Unit]:
    """Every unit of a CogVideoX DiT with ``num_layers`` blocks, in model order."""
    units: list[Unit] = []
    for sat, diff, group in GLOBAL_RENAMES:
        for p in PARAMS:
            # A 1.0 model may be built with patch_bias=False; that bias is optional on its own.
            g = "patch_bias" if (diff, p) == ("patch_embed.proj", "bias") else group
            units.append(Unit("rename", (f"{sat}.{p}",), (f"{diff}.{p}",), g))
    units.append(Unit("pos", (SAT_POS,), (DIFF_POS,), "pos"))
    for i in range(num_layers):
        for sat, diff in BLOCK_RENAMES[:1]:
            for p in PARAMS:
                units.append(Unit("rename", (f"{sat.format(i=i)}.{p}",), (f"{diff.format(i=i)}.{p}",)))
        for p in PARAMS:
            units.append(
                Unit(
                    "adaln",
                    (f"{SAT_ADALN.format(i=i)}.{p}",),
                    tuple(f"{d.format(i=i)}.{p}" for d in DIFF_ADALN),
                )
            )
        for p in PARAMS:
            units.append(
                Unit("qkv", (f"{SAT_QKV.format(i=i)}.{p}",), tuple(f"{d.format(i=i)}.{p}" for d in DIFF_QKV))
            )
        for sat, diff in BLOCK_RENAMES[1:]:
            for p in PARAMS:
                units.append(Unit("rename", (f"{sat.format(i=i)}.{p}",), (f"{diff.format(i=i)}.{p}",)))
    for sat, diff, group in FINAL_RENAMES:
        for p in PARAMS:
            units.append(Unit("rename", (f"{sat}.{p}",), (f"{diff}.{p}",), group))
    return units


LAYER_RX = {
    SAT: re.compile(r"(?:transformer\.layers|mixins\.adaln_layer\.\w+)\.(\d+)\."),
    DIFFUSERS: re.compile(r"transformer_blocks\.(\d+)\."),
    COMFY: re.compile(r"blocks\.(\d+)\."),
}


def count_layers(local_keys: Iterable[str], layout: str) -> int:
    """Blocks in the checkpoint: one more than the highest block index any key carries."""
    rx = LAYER_RX[layout]
    top = -1
    for k in local_keys:
        m = rx.match(k)
        if m:
            top = max(top, int(m.group(1)))
    return top + 1


def foreign_reason(key: str) -> str | None:
    """Why a key of another SAT engine component is left out of the DiT, or None."""
    return next((r for p, r in SAT_FOREIGN_PREFIXES.items() if key.startswith(p)), None)


def sat_drop_reason(local_key: str) -> str | None:
    """Why a SAT key that has no Diffusers counterpart is dropped, or None if it is not such a key."""
    if local_key in SAT_UNUSED:
        return SAT_UNUSED[local_key]
    if local_key in SAT_ROPE:
        return "RoPE table SAT keeps as a buffer; Diffusers recomputes it from the grid"
    if "embed_tokens" in local_key.split("."):
        return "token-embedding table the official converter drops"
    return None


SAT_MARKERS = (
    "mixins.adaln_layer.adaLN_modulations.0.1.weight",
    "transformer.layers.0.attention.query_key_value.weight",
)
DIFF_MARKERS = ("transformer_blocks.0.norm1.linear.weight",)
DIFF_REQUIRED_MARKERS = ("patch_embed.text_proj.weight", "time_embedding.linear_1.weight")
