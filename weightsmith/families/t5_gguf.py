"""The metadata of a ``t5encoder`` GGUF file, as llama.cpp's converter writes it.

Hyperparameters (``t5encoder.*``) come from the model's config; the tokenizer (``tokenizer.ggml.*``)
from the SentencePiece model found beside the weights, or in the ``tokenizer/`` folder of the
pipeline the weights belong to. ComfyUI-GGUF rebuilds UMT5's SentencePiece model from these keys
and llama.cpp tokenizes with them, so a T5 GGUF without them is refused rather than written.

The values are collected on a gguf-py ``GGUFWriter`` (its own ``add_*`` methods and
``SpecialVocab``, the calls llama.cpp's converter makes), so types match what llama.cpp writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightsmith.errors import NotFoundError, UnsupportedFormatError

TOKENIZER_FILES = ("tokenizer.model", "spiece.model")  # llama.cpp's order
N_CTX_DEFAULT = 512  # llama.cpp's converter's value when the config has no n_positions


def tokenizer_dirs(source: Path) -> list[Path]:
    """Where a tokenizer of the weights at ``source`` may be: beside them, or the pipeline's tokenizer/."""
    folder = source if source.is_dir() else source.parent
    return [folder, folder / "tokenizer", folder.parent / "tokenizer"]


def find_tokenizer(source: Path) -> Path:
    """The SentencePiece model for the weights at ``source``, or a NotFoundError saying what to pass."""
    dirs = tokenizer_dirs(source)
    for d in dirs:
        for name in TOKENIZER_FILES:
            if (d / name).is_file():
                return d / name
    raise NotFoundError(
        f"a t5encoder GGUF embeds the tokenizer, but no {' or '.join(TOKENIZER_FILES)} is beside "
        f"{source} or in a tokenizer/ folder next to it",
        hint="copy the model's spiece.model (from its tokenizer folder) next to the weights",
    )


def metadata(
    config: Mapping[str, Any], blocks: int, file_type: int, source: Path, name: str
) -> dict[str, Any]:
    """Every t5encoder and tokenizer key of the file (gguf-py typed values), ``general.name`` = ``name``."""
    import gguf

    w = gguf.GGUFWriter(path=None, arch="t5encoder")
    w.add_name(name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_context_length(int(config.get("n_positions") or N_CTX_DEFAULT))
    w.add_embedding_length(int(config["d_model"]))
    w.add_feed_forward_length(int(config["d_ff"]))
    w.add_block_count(blocks)
    w.add_head_count(int(config["num_heads"]))
    w.add_key_length(int(config["d_kv"]))
    w.add_value_length(int(config["d_kv"]))
    eps = float(config.get("layer_norm_epsilon", 1e-6))
    w.add_layer_norm_eps(eps)
    w.add_relative_attn_buckets_count(int(config["relative_attention_num_buckets"]))
    w.add_layer_norm_rms_eps(eps)
    w.add_file_type(file_type)
    _add_vocab(w, find_tokenizer(source), int(config["vocab_size"]), config)
    return {k: v for k, v in w.kv_data[0].items() if k != "general.architecture"}


def _add_vocab(w: Any, path: Path, vocab_size: int, config: Mapping[str, Any]) -> None:
    """llama.cpp's T5 vocabulary: every piece with its score and type, ``[PADn]`` up to the
    model's vocabulary size, the normalizer's flags and charsmap, and the special token ids."""
    import gguf
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
        sp = SentencePieceProcessor(model_proto=path.read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf and sentencepiece raise their own kinds
        raise UnsupportedFormatError(
            f"{path} is not a SentencePiece model ({type(e).__name__})",
            hint="pass the model's own spiece.model",
        ) from None
    if proto.trainer_spec.model_type != 1:  # UNIGRAM
        raise UnsupportedFormatError(
            f"{path} is a SentencePiece model of type {proto.trainer_spec.model_type}, not unigram",
            hint="T5 and UMT5 use unigram SentencePiece models; pass the model's own spiece.model",
        )
    types = gguf.TokenType
    n = max(vocab_size, sp.vocab_size())
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    kinds = [int(types.UNUSED)] * n
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        kind = types.NORMAL
        if sp.IsUnknown(i):
            kind = types.UNKNOWN
        elif sp.IsControl(i):
            kind = types.CONTROL
        elif sp.IsUnused(i):
            kind = types.UNUSED
        elif sp.IsByte(i):
            kind = types.BYTE
        kinds[i] = int(kind)
    w.add_tokenizer_model("t5")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(kinds)
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_remove_extra_whitespaces(proto.normalizer_spec.remove_extra_whitespaces)
    if proto.normalizer_spec.precompiled_charsmap:
        w.add_precompiled_charsmap(proto.normalizer_spec.precompiled_charsmap)
    # Special ids and add-bos/eos flags as llama.cpp reads them from the tokenizer's folder
    # (tokenizer.json, tokenizer_config.json, config.json); ids it lacks from the model's config.
    special = gguf.SpecialVocab(path.parent, n_vocab=n)
    for typ in special.special_token_types:
        tok = config.get(f"{typ}_token_id")
        if typ not in special.special_token_ids and isinstance(tok, int) and 0 <= tok < n:
            special.special_token_ids[typ] = tok
    special.add_to_gguf(w, quiet=True)
