"""Sana's text encoder: Gemma-2 2B's decoder stack used as an encoder (transformers' ``Gemma2Model``).

Sana feeds the last hidden states of ``Gemma2Model`` (no LM head) to its DiT. A checkpoint of the
whole causal LM (``model.`` prefix) is read under its prefix. Gemma-2 is told from other
decoders by its four norms per layer (input, post-attention, pre- and post-feedforward) without
Gemma-3's q/k norms. The head width is not in the weights (q is heads x head_dim wide): it comes
from the checkpoint's config, else Gemma-2's 256. llama.cpp's ``gemma2`` GGUF layout
(``gemma2_gguf.py``) is its second layout: renames, and the norms shifted by one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import weightsmith.families.sana.gemma2_gguf as g2
from weightsmith.errors import ConversionError
from weightsmith.families.base import (
    NO_OPTIONS,
    Detection,
    KeyView,
    PlanOptions,
    QuantSpec,
    find_prefix_all,
    register,
)
from weightsmith.families.ops import Op, Rename, Shift
from weightsmith.families.textenc import LLAMACPP, TextEncoder, shape_of
from weightsmith.io.base import TensorInfo

MARKERS = (
    "embed_tokens.weight",
    "layers.0.self_attn.q_proj.weight",
    "layers.0.pre_feedforward_layernorm.weight",
    "layers.0.post_feedforward_layernorm.weight",
    "norm.weight",
)
_LAYER = re.compile(r"layers\.(\d+)\.")
GEMMA2_HEAD_DIM = 256  # every released Gemma-2 size but 27B (128); a config overrides it


@register
class SanaTextEncoder(TextEncoder):
    """Gemma-2's decoder stack (``Gemma2Model``) in transformers' names."""

    family = "sana"
    layouts = ("diffusers", LLAMACPP)
    inexact_layouts = {
        LLAMACPP: "llama.cpp stores the RMS-norm weights as 1 + w in float32: w comes back rounded"
    }
    variants = ("gemma-2-2b",)
    quant = QuantSpec(
        blocks=r"^layers\.([0-9]+)\.",
        gguf_arch="gemma2",
        gguf_layout=LLAMACPP,
        gguf_v=("blk.*.attn_v.weight",),
        gguf_ffn_down=("blk.*.ffn_down.weight",),
        gguf_small_f32=False,
        comfy_refusal=(
            "ComfyUI has no Sana model to use its Gemma-2 with (its Gemma-2 text-encoder loader "
            "serves Lumina 2)"
        ),
    )
    diffusers_class = "Gemma2Model"
    label = "Sana text encoder (Gemma-2)"

    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        layout = "diffusers"
        prefix = find_prefix_all(infos, MARKERS)
        if prefix is not None:
            view = KeyView(infos, prefix)
        else:
            prefix = find_prefix_all(infos, g2.LLAMA_MARKERS)
            if prefix is None:
                return None
            layout = LLAMACPP
            stripped = {k[len(prefix) :]: k for k in infos if k.startswith(prefix)}
            back = g2.from_llama(stripped)
            view = KeyView({back[k] or k: infos[src] for k, src in stripped.items()})
        if view.any("layers.0.self_attn.q_norm.weight"):
            return None  # Gemma-3
        emb = view.shape("embed_tokens.weight") or (0, 0)
        facts: dict[str, Any] = {
            "hidden_size": emb[1],
            "vocab_size": emb[0],
            "num_hidden_layers": view.count_indices(r"layers\.(\d+)\."),
        }
        head_dim = (config or {}).get("head_dim")
        if isinstance(head_dim, int) and not isinstance(head_dim, bool) and head_dim > 0:
            facts["head_dim"] = head_dim
        notes = ("Gemma-2 2B decoder used as an encoder: the text encoder of every Sana model",)
        return Detection(self.family, self.component, layout, self.variants[0], prefix, notes, facts)

    def source_names(
        self, detection: Detection, infos: Mapping[str, TensorInfo]
    ) -> tuple[dict[str, str], list[Op]]:
        """Transformers name -> source key (a prefix stripped); nothing to drop."""
        p = detection.prefix
        stripped = {(k[len(p) :] if k.startswith(p) else k): k for k in infos}
        if detection.layout != LLAMACPP:
            return stripped, []
        back = g2.from_llama(stripped)
        return {(back[k] or k): src for k, src in stripped.items()}, []

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Renames (a prefix stripped), checked against ``Gemma2Model``'s names and shapes."""
        names, _ = self.checked_names(detection, infos, target_layout, options)
        src_llama = detection.layout == LLAMACPP
        if target_layout == LLAMACPP:
            target = {n: options.prefix + str(t) for n, t in g2.to_llama(names).items()}
        else:
            target = {n: n for n in names}
        if src_llama == (target_layout == LLAMACPP):
            return [Rename(k, target[n]) for n, k in names.items()]
        step = g2.NORM_OFFSET if target_layout == LLAMACPP else -g2.NORM_OFFSET
        return [
            Shift(k, target[n], step) if g2.is_norm(n) else Rename(k, target[n]) for n, k in names.items()
        ]

    def gguf_metadata(
        self, detection: Detection, config: Callable[[], Mapping[str, Any]], source: Any, file_type: int
    ) -> dict[str, Any]:
        """llama.cpp's ``gemma2`` hyperparameters (transformers' GGUF loader builds the config from them)."""
        return g2.metadata(config(), file_type, str(detection.variant or self.variants[0]))

    def derive_config(
        self, shapes: Mapping[str, tuple[int, ...]], detection: Detection, what: str
    ) -> dict[str, Any]:
        """``Gemma2Config`` kwargs from shapes and the head width (errors name the component only)."""
        what = self.title()
        vocab, hidden = shape_of(shapes, "embed_tokens.weight", what)
        q = shape_of(shapes, "layers.0.self_attn.q_proj.weight", what)[0]
        kv = shape_of(shapes, "layers.0.self_attn.k_proj.weight", what)[0]
        head_dim = int(detection.facts.get("head_dim", GEMMA2_HEAD_DIM))
        if q % head_dim or kv % head_dim:
            raise ConversionError(
                f"{what}: q ({q}) and k ({kv}) widths are not multiples of head_dim {head_dim}",
                hint="give the checkpoint's config.json (--config) so the head width is known",
            )
        layers = 1 + max((int(m.group(1)) for k in shapes if (m := _LAYER.match(k))), default=-1)
        return {
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": shape_of(shapes, "layers.0.mlp.gate_proj.weight", what)[0],
            "num_hidden_layers": layers,
            "num_attention_heads": q // head_dim,
            "num_key_value_heads": kv // head_dim,
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
        }

    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """Two layers (one sliding-window, one global, as Gemma-2 alternates); ``wide``: 256-wide rows."""
        self.check_variant(variant)
        return {
            "vocab_size": 256 if wide else 96,
            "hidden_size": 256 if wide else 16,
            "intermediate_size": 512 if wide else 40,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 128 if wide else 8,
            "query_pre_attn_scalar": 128 if wide else 8,
        }
