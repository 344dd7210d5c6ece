"""CogVideoX's text encoder: the encoder of T5 v1.1 XXL, as transformers' ``T5EncoderModel``.

CogVideoX (SAT and Diffusers alike) loads it from transformers' names; GGUF files hold it in
llama.cpp's ``t5encoder`` names. One relative-attention bias table (block 0's) serves every
block: that tells it from UMT5.
"""

from __future__ import annotations

import weightsmith.families.t5 as t5
from weightsmith.families.base import register
from weightsmith.families.textenc import LLAMACPP


@register
class CogVideoXTextEncoder(t5.T5Encoder):
    """T5 v1.1 XXL's encoder (``T5EncoderModel``)."""

    family = "cogvideox"
    layouts = ("diffusers", LLAMACPP)
    variants = ("t5-v1_1-xxl",)
    diffusers_class = "T5EncoderModel"
    label = "CogVideoX text encoder (T5)"
    per_block_bias = False
    model_type = "t5"
    notes = ("T5 v1.1 XXL encoder: the text encoder of every CogVideoX model",)
