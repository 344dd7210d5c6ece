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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from weightsmith.families.base import (
    NO_OPTIONS,
    Detection,
    KeepRule,
    KeyView,
    PlanOptions,
    QuantSpec,
    find_prefix_all,
)
from weightsmith.families.ops import Drop, Op, Rename
from weightsmith.families.textenc import LLAMACPP, TextEncoder, shape_of
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


# llama.cpp's names (its converter, gguf-py's tensor map for ``t5encoder``), by transformers name.
LLAMA_MARKERS = ("token_embd.weight", "enc.blk.0.attn_q.weight", "enc.output_norm.weight")
_LLAMA_BLOCK = re.compile(r"enc\.blk\.(\d+)\.")
_PER_BLOCK = (
    "layer.0.SelfAttention.q",
    "layer.0.SelfAttention.k",
    "layer.0.SelfAttention.v",
    "layer.0.SelfAttention.o",
    "layer.0.SelfAttention.relative_attention_bias",
    "layer.0.layer_norm",
    "layer.1.DenseReluDense.wi_0",
    "layer.1.DenseReluDense.wi_1",
    "layer.1.DenseReluDense.wi",
    "layer.1.DenseReluDense.wo",
    "layer.1.layer_norm",
)


def to_llama(names: Iterable[str]) -> dict[str, str | None]:
    """Transformers name -> llama.cpp's name (None where llama.cpp has none), by gguf-py's own map."""
    import gguf

    names = list(names)
    blocks = 1 + max((int(m.group(1)) for n in names if (m := _BLOCK.match(n))), default=-1)
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, max(blocks, 1))
    return {n: table.get_name(n, try_suffixes=(".weight",)) for n in names}


def from_llama(keys: Iterable[str]) -> dict[str, str | None]:
    """llama.cpp name -> transformers name (None where no transformers tensor maps to it)."""
    keys = list(keys)
    blocks = 1 + max((int(m.group(1)) for k in keys if (m := _LLAMA_BLOCK.match(k))), default=-1)
    every = [EMBED, "encoder.final_layer_norm.weight"] + [
        f"encoder.block.{i}.{leaf}.weight" for i in range(blocks) for leaf in _PER_BLOCK
    ]
    back: dict[str, str] = {}
    for n, g in to_llama(every).items():
        # wi (ungated FFN) and wi_1 share ffn_up; the gated name wins only when wi_0 exists.
        if g is not None and (g not in back or n.endswith("wi_1.weight")):
            back[g] = n
    gated = any(k.endswith("ffn_gate.weight") for k in keys)
    out: dict[str, str | None] = {}
    for k in keys:
        n = back.get(k)
        if n is not None and not gated and n.endswith("wi_1.weight"):
            n = n[: -len("wi_1.weight")] + "wi.weight"
        out[k] = n
    return out


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


class T5Encoder(TextEncoder):
    """A T5-architecture encoder in transformers' names, llama.cpp's GGUF names and, where the
    family has one (``original``: a KeyMap original <-> transformers), its own original names."""

    # True: one relative-attention bias per block (UMT5); False: block 0's only (T5).
    per_block_bias: ClassVar[bool] = False
    original: ClassVar[Any] = None
    original_markers: ClassVar[tuple[str, ...]] = ()
    model_type: ClassVar[str] = "t5"
    notes: ClassVar[tuple[str, ...]] = ()
    tied = TIED
    quant = QuantSpec(
        keep=(
            KeepRule(
                "*.relative_attention_bias.weight",
                "relative-attention bias: an additive table, never quantized by llama.cpp",
            ),
        ),
        blocks=r"^encoder\.block\.([0-9]+)\.",
        gguf_arch="t5encoder",
        gguf_layout=LLAMACPP,
        gguf_v=("enc.blk.*.attn_v.weight",),
        gguf_ffn_down=("enc.blk.*.ffn_down.weight",),
        gguf_small_f32=False,
        # ComfyUI loads T5-XXL / UMT5-XXL single files (scaled fp8, comfy_quant) in transformers'
        # names, no prefix; its T5 module has no Linear but q/k/v/o, wi_0/wi_1/wo.
        comfy_fp8=True,
        comfy_layout="diffusers",
        ct_packed=False,  # transformers' T5/UMT5 _init_weights reads q/k/v/o/wi/wo ``.weight``
    )

    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Original names (if the family has them), llama.cpp's or transformers' names; T5 and
        UMT5 told apart by block 1's own bias table, or by the config's ``model_type``."""
        if self.original is not None:
            prefix = find_prefix_all(infos, self.original_markers)
            if prefix is not None:
                names = {
                    self.original.a_to_b(k[len(prefix) :]) or k: k for k in infos if k.startswith(prefix)
                }
                view = KeyView({n: infos[k] for n, k in names.items()})
                return self._detection("original", prefix, view)
        prefix = find_prefix_all(infos, LLAMA_MARKERS)
        if prefix is not None:
            stripped = {k[len(prefix) :]: k for k in infos if k.startswith(prefix)}
            back = from_llama(stripped)
            view = KeyView({back[k] or k: infos[src] for k, src in stripped.items()})
            per_block = view.has(BIAS.format(i=1))
            layout = LLAMACPP
        else:
            hit = find(infos)
            if hit is None:
                return None
            view, per_block = hit
            prefix, layout = view.prefix, "diffusers"
        said = (config or {}).get("model_type")
        if said in ("t5", "umt5"):
            mine = said == self.model_type
        else:
            mine = per_block == self.per_block_bias
        return self._detection(layout, prefix, view) if mine and layout in self.layouts else None

    def _detection(self, layout: str, prefix: str, view: KeyView) -> Detection:
        return Detection(
            self.family, self.component, layout, self.variants[0], prefix, self.notes, facts(view)
        )

    def source_names(
        self, detection: Detection, infos: Mapping[str, TensorInfo]
    ) -> tuple[dict[str, str], list[Op]]:
        """Transformers name -> source key, and ops dropping tied aliases."""
        if detection.layout == "diffusers":
            return canonical(detection, infos)
        p = detection.prefix
        stripped = {k[len(p) :]: k for k in infos if k.startswith(p)}
        if detection.layout == LLAMACPP:
            table = from_llama(stripped)
        else:
            table = {k: self.original.a_to_b(k) for k in stripped}
        names = {k: k for k in infos if not k.startswith(p)}
        names.update({(table[k] or src): src for k, src in stripped.items()})
        return names, []

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Renames, checked against the real class's names and shapes for the derived config."""
        names, drops = self.checked_names(detection, infos, target_layout, options)
        if target_layout == "original":
            target = {n: options.prefix + str(self.original.b_to_a(n)) for n in names}
        elif target_layout == LLAMACPP:
            llama = to_llama(names)
            target = {n: options.prefix + str(llama[n]) for n in names}
        else:
            target = {n: n for n in names}
        return drops + renames(names, target)

    def derive_config(
        self, shapes: Mapping[str, tuple[int, ...]], detection: Detection, what: str
    ) -> dict[str, Any]:
        """The config class's kwargs from the transformers-layout shapes (gated GELU as T5 v1.1)."""
        return derive_config(shapes, what)

    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """Two blocks (so a per-block bias shows), gated GELU as the released models; ``wide``:
        256-wide rows so every GGUF K-type applies."""
        self.check_variant(variant)
        return tiny_config(wide)

    def gguf_metadata(
        self, detection: Detection, config: Callable[[], Mapping[str, Any]], source: Any, file_type: int
    ) -> dict[str, Any]:
        """llama.cpp's ``t5encoder`` hyperparameters and the embedded SentencePiece tokenizer;
        ``general.name`` is the variant, which transformers' GGUF loader reads to tell UMT5 from T5."""
        import weightsmith.families.t5_gguf as t5_gguf

        name = str(detection.variant or self.variants[0])
        full = config()
        return t5_gguf.metadata(full, int(full["num_layers"]), file_type, Path(source), name)
