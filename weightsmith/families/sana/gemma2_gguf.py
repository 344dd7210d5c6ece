"""Gemma-2 in llama.cpp's ``gemma2`` GGUF layout: tensor names by gguf-py's own map, the RMS-norm
weights stored as ``1 + w`` (llama.cpp's converter adds the one, transformers' GGUF loader takes
it off again), and the ``gemma2.*`` hyperparameters transformers' loader reads back into a
``Gemma2Config``. The tokenizer is not embedded (no Gemma tokenizer model is read here)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

LLAMA_MARKERS = (
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.post_attention_norm.weight",
    "blk.0.post_ffw_norm.weight",
    "output_norm.weight",
)
_LAYER = re.compile(r"layers\.(\d+)\.")
_LLAMA_BLOCK = re.compile(r"blk\.(\d+)\.")
_PER_LAYER = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
NORM_OFFSET = 1.0


def is_norm(name: str) -> bool:
    """A Gemma RMS-norm weight (transformers' name), stored shifted by one in llama.cpp's files."""
    return name.endswith("norm.weight")


def _table(blocks: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA2, max(blocks, 1))


def to_llama(names: Iterable[str]) -> dict[str, str | None]:
    """Transformers name -> llama.cpp's name (None where it has none)."""
    names = list(names)
    blocks = 1 + max((int(m.group(1)) for n in names if (m := _LAYER.match(n))), default=-1)
    table = _table(blocks)
    return {n: table.get_name(n, try_suffixes=(".weight",)) for n in names}


def from_llama(keys: Iterable[str]) -> dict[str, str | None]:
    """llama.cpp name -> transformers name (None where no Gemma2Model tensor maps to it)."""
    keys = list(keys)
    blocks = 1 + max((int(m.group(1)) for k in keys if (m := _LLAMA_BLOCK.match(k))), default=-1)
    every = ["embed_tokens.weight", "norm.weight"] + [
        f"layers.{i}.{leaf}.weight" for i in range(blocks) for leaf in _PER_LAYER
    ]
    back = {g: n for n, g in to_llama(every).items() if g is not None}
    return {k: back.get(k) for k in keys}


def metadata(config: Mapping[str, Any], file_type: int, name: str) -> dict[str, Any]:
    """The ``gemma2.*`` keys llama.cpp's converter writes (gguf-py typed values)."""
    import gguf

    w = gguf.GGUFWriter(path=None, arch="gemma2")
    head_dim = int(config["head_dim"])
    w.add_name(name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_context_length(int(config.get("max_position_embeddings", 8192)))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(config["num_attention_heads"]))
    w.add_head_count_kv(int(config["num_key_value_heads"]))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_file_type(file_type)
    # Without an embedded tokenizer the vocabulary size is stated (transformers' loader reads it).
    w.add_vocab_size(int(config["vocab_size"]))
    w.add_attn_logit_softcapping(float(config.get("attn_logit_softcapping") or 50.0))
    w.add_final_logit_softcapping(float(config.get("final_logit_softcapping") or 30.0))
    w.add_sliding_window(int(config.get("sliding_window", 4096)))
    return {k: v for k, v in w.kv_data[0].items() if k != "general.architecture"}
