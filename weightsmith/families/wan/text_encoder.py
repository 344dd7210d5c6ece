"""Wan's text encoder, UMT5-XXL's encoder: Wan's original names and transformers' names.

Wan 2.1 and 2.2 ship it as ``models_t5_umt5-xxl-enc-bf16.pth``, a bare state dict in the names
of Wan's own T5 module (``token_embedding``, ``blocks.N.{norm1,attn,norm2,ffn,pos_embedding}``,
``norm``); Diffusers' Wan pipelines hold it as transformers' ``UMT5EncoderModel``. Every tensor
maps to one tensor, so conversions are renames and round trips bit-exact. Wan's FFN computes
``fc2(fc1(x) * gelu(gate(x)))``, transformers' ``wo(gelu(wi_0(x)) * wi_1(x))``: gate is wi_0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import weightsmith.families.t5 as t5
from weightsmith.families.base import NO_OPTIONS, Detection, KeyView, PlanOptions, register
from weightsmith.families.ops import Op
from weightsmith.families.textenc import TextEncoder
from weightsmith.families.wan.keys import KeyMap, locate
from weightsmith.io.base import TensorInfo

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
ORIGINAL_MARKERS = (
    "token_embedding.weight",
    "blocks.0.attn.q.weight",
    "blocks.0.pos_embedding.embedding.weight",
)


@register
class WanTextEncoder(TextEncoder):
    """UMT5-XXL's encoder in Wan's original ``.pth`` names and transformers' ``UMT5EncoderModel`` names."""

    family = "wan"
    layouts = ("original", "diffusers")
    variants = ("umt5-xxl",)
    diffusers_class = "UMT5EncoderModel"
    label = "Wan text encoder (UMT5)"
    tied = t5.TIED

    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Wan's original names (any prefix), or transformers' names with a relative-attention
        bias in every block (UMT5's mark) or a config saying ``umt5``."""
        found = locate(infos, {"original": ORIGINAL_MARKERS})
        if found is not None:
            _, prefix = found
            names = {KEYS.a_to_b(k[len(prefix) :]) or k: k for k in infos if k.startswith(prefix)}
            view = KeyView({n: infos[k] for n, k in names.items()})
            return self._detection("original", prefix, view)
        hit = t5.find(infos)
        if hit is None:
            return None
        view, per_block = hit
        if not per_block and (config or {}).get("model_type") != "umt5":
            return None
        return self._detection("diffusers", view.prefix, view)

    def _detection(self, layout: str, prefix: str, view: KeyView) -> Detection:
        notes = ("UMT5-XXL encoder: the text encoder of every Wan 2.1 and 2.2 model",)
        return Detection(self.family, self.component, layout, self.variants[0], prefix, notes, t5.facts(view))

    def _transformers_names(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> tuple[dict, list]:
        """Transformers name -> source key, and ops dropping tied aliases; unknown keys kept as is."""
        if detection.layout == "diffusers":
            return t5.canonical(detection, infos)
        p = detection.prefix
        names = {}
        for k in infos:
            stripped = k[len(p) :] if k.startswith(p) else None
            names[(KEYS.a_to_b(stripped) if stripped is not None else None) or k] = k
        return names, []

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Renames, checked against ``UMT5EncoderModel``'s names and shapes for the derived config."""
        self.check_plan(detection, target_layout, options)
        names, drops = self._transformers_names(detection, infos)
        shapes = {n: tuple(infos[k].shape) for n, k in names.items()}
        what = f"{self.title()} ({detection.layout} layout)"
        self.check_shapes(what, shapes, detection.variant, t5.derive_config(shapes, what))
        if target_layout == "original":
            target = {n: options.prefix + str(KEYS.b_to_a(n)) for n in names}
        else:
            target = {n: n for n in names}
        return drops + t5.renames(names, target)

    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """``UMT5Config`` kwargs from the transformers-layout shapes (T5 v1.1 gated GELU FFN)."""
        names, _ = self._transformers_names(detection, infos)
        return t5.derive_config({n: tuple(infos[k].shape) for n, k in names.items()}, self.title())

    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """Two blocks (so the per-block bias shows), gated GELU as the released model;
        ``wide``: 256-wide rows so every GGUF K-type applies."""
        self.check_variant(variant)
        return t5.tiny_config(wide)
