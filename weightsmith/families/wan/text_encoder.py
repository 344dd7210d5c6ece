"""Wan's text encoder, UMT5-XXL's encoder: Wan's original names, transformers' and llama.cpp's.

Wan 2.1 and 2.2 ship it as ``models_t5_umt5-xxl-enc-bf16.pth``, a bare state dict in the names
of Wan's own T5 module (``token_embedding``, ``blocks.N.{norm1,attn,norm2,ffn,pos_embedding}``,
``norm``); Diffusers' Wan pipelines hold it as transformers' ``UMT5EncoderModel``; GGUF files as
llama.cpp's ``t5encoder``. Every tensor maps to one tensor, so conversions are renames and round
trips bit-exact. Wan's FFN computes ``fc2(fc1(x) * gelu(gate(x)))``, transformers'
``wo(gelu(wi_0(x)) * wi_1(x))``: gate is wi_0.
"""

from __future__ import annotations

import weightsmith.families.t5 as t5
from weightsmith.families.base import register
from weightsmith.families.textenc import LLAMACPP
from weightsmith.families.wan.keys import KeyMap

# (original, transformers)
KEYS = KeyMap(
    [
        ("token_embedding.weight", t5.EMBED),
        ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
        ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
        ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
        ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
        ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
        (
            "blocks.{i}.pos_embedding.embedding.weight",
            "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
        ),
        ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
        ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
        ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
        ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
        ("norm.weight", "encoder.final_layer_norm.weight"),
    ]
)


@register
class WanTextEncoder(t5.T5Encoder):
    """UMT5-XXL's encoder (``UMT5EncoderModel``): one relative-attention bias per block."""

    family = "wan"
    layouts = ("original", "diffusers", LLAMACPP)
    variants = ("umt5-xxl",)
    diffusers_class = "UMT5EncoderModel"
    label = "Wan text encoder (UMT5)"
    per_block_bias = True
    model_type = "umt5"
    original = KEYS
    original_markers = (
        "token_embedding.weight",
        "blocks.0.attn.q.weight",
        "blocks.0.pos_embedding.embedding.weight",
    )
    notes = ("UMT5-XXL encoder: the text encoder of every Wan 2.1 and 2.2 model",)
