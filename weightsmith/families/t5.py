"""T5-architecture text encoders in transformers' names (``T5EncoderModel``, ``UMT5EncoderModel``).

CogVideoX encodes prompts with T5 v1.1 XXL, Wan with UMT5-XXL. Both are the same stack in
transformers' names: ``shared`` embedding, ``encoder.block.N.layer.0`` (self-attention q/k/v/o,
relative-attention bias, RMS norm) and ``encoder.block.N.layer.1`` (gated-GELU FFN wi_0/wi_1/wo,
RMS norm), ``encoder.final_layer_norm``. They differ in one thing the weights show: T5 holds
one relative-attention bias table (block 0's, shared by every block), UMT5 one per block.

The encoder's embedding is tied: the model's state dict names it twice (``shared.weight`` and
``encoder.embed_tokens.weight``) and transformers saves it once as ``shared.weight``. A
checkpoint holding only the alias is renamed, one holding both has the alias dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from weightsmith.families.base import Detection, KeyView, find_prefix_all
from weightsmith.families.ops import Drop, Op, Rename
from weightsmith.families.textenc import shape_of
from weightsmith.io.base import TensorInfo

EMBED = "shared.weight"
EMBED_ALIAS = "encoder.embed_tokens.weight"
TIED = {EMBED_ALIAS: EMBED}
MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.final_layer_norm.weight")
BIAS = "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"
_BLOCK = re.compile(r"encoder\.block\.(\d+)\.")


def find(infos: Mapping[str, TensorInfo]) -> tuple[KeyView, bool] | None:
    """(keys under their prefix, per-block bias?) of a T5/UMT5 encoder in transformers' names, or None.

    ``per-block bias`` is None-free: True when block 1 has its own relative-attention bias (UMT5),
    False when only block 0 has one (T5); a one-block encoder reads as T5.
    """
    prefix = find_prefix_all(infos, MARKERS)
    if prefix is None:
        return None
    view = KeyView(infos, prefix)
    if not view.any(EMBED, EMBED_ALIAS) or not view.has(BIAS.format(i=0)):
        return None
    if view.any("decoder.final_layer_norm.weight", "encoder.block.0.layer.1.EncDecAttention.q.weight"):
        return None  # a whole encoder-decoder model, not the encoder a pipeline uses
    return view, view.has(BIAS.format(i=1))


def facts(view: KeyView) -> dict[str, Any]:
    """What ``inspect`` shows of a T5/UMT5 encoder: width, depth, heads, vocabulary."""
    emb = view.shape(EMBED) or view.shape(EMBED_ALIAS) or (0, 0)
    bias = view.shape(BIAS.format(i=0)) or (0, 0)
    return {
        "d_model": emb[1],
        "vocab_size": emb[0],
        "num_layers": view.count_indices(r"encoder\.block\.(\d+)\."),
        "num_heads": bias[1],
    }


def derive_config(shapes: Mapping[str, tuple[int, ...]], what: str) -> dict[str, Any]:
    """The (U)T5Config kwargs the transformers-layout shapes imply."""
    emb = shapes.get(EMBED) or shape_of(shapes, EMBED_ALIAS, what)
    buckets, heads = shape_of(shapes, BIAS.format(i=0), what)
    inner = shape_of(shapes, "encoder.block.0.layer.0.SelfAttention.q.weight", what)[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    ff = shape_of(shapes, f"encoder.block.0.layer.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight", what)
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := _BLOCK.match(k)))
    return {
        "vocab_size": emb[0],
        "d_model": emb[1],
        "d_kv": inner // max(heads, 1),
        "d_ff": ff[0],
        "num_layers": layers,
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
    }


def canonical(detection: Detection, infos: Mapping[str, TensorInfo]) -> tuple[dict[str, str], list[Op]]:
    """Transformers name -> source key of a transformers-layout checkpoint, and the ops that drop
    a tied alias saved beside the embedding."""
    p = detection.prefix
    names: dict[str, str] = {}
    drops: list[Op] = []
    for k in infos:
        name = k[len(p) :] if k.startswith(p) else k
        if name == EMBED_ALIAS:
            if p + EMBED in infos:
                drops.append(Drop(k, reason="tied copy of shared.weight"))
                continue
            name = EMBED
        names[name] = k
    return names, drops


def renames(names: Mapping[str, str], target: Mapping[str, str]) -> list[Op]:
    """One Rename per tensor: source key -> its target name."""
    return [Rename(src, target[n]) for n, src in names.items()]


def tiny_config(wide: bool) -> dict[str, Any]:
    """A tiny T5 v1.1-style encoder config (shared by the T5 encoders of the families)."""
    return {
        "vocab_size": 256 if wide else 96,
        "d_model": 256 if wide else 16,
        "d_kv": 64 if wide else 4,
        "d_ff": 512 if wide else 40,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 32,
        "feed_forward_proj": "gated-gelu",
    }
