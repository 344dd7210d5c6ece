"""CogVideoX's text encoder: the encoder of T5 v1.1 XXL, as transformers' ``T5EncoderModel``.

CogVideoX (SAT and Diffusers alike) loads it from transformers' names, so it has one layout.
One relative-attention bias table (block 0's) serves every block: that tells it from UMT5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import weightsmith.families.t5 as t5
from weightsmith.families.base import NO_OPTIONS, Detection, PlanOptions, register
from weightsmith.families.ops import Op
from weightsmith.families.textenc import TextEncoder
from weightsmith.io.base import TensorInfo


@register
class CogVideoXTextEncoder(TextEncoder):
    """T5 v1.1 XXL's encoder (``T5EncoderModel``) in transformers' names."""

    family = "cogvideox"
    layouts = ("diffusers",)
    variants = ("t5-v1_1-xxl",)
    diffusers_class = "T5EncoderModel"
    label = "CogVideoX text encoder (T5)"
    tied = t5.TIED

    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Transformers' T5 encoder names with block 0's bias only (UMT5 has one per block),
        unless a config says ``umt5``."""
        hit = t5.find(infos)
        if hit is None:
            return None
        view, per_block = hit
        if per_block or (config or {}).get("model_type") == "umt5":
            return None
        notes = ("T5 v1.1 XXL encoder: the text encoder of every CogVideoX model",)
        return Detection(
            self.family, self.component, "diffusers", self.variants[0], view.prefix, notes, t5.facts(view)
        )

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Renames (a prefix stripped, the tied alias dropped), checked against ``T5EncoderModel``."""
        self.check_plan(detection, target_layout, options)
        names, drops = t5.canonical(detection, infos)
        shapes = {n: tuple(infos[k].shape) for n, k in names.items()}
        what = f"{self.title()} ({detection.layout} layout)"
        self.check_shapes(what, shapes, detection.variant, t5.derive_config(shapes, what))
        return drops + t5.renames(names, {n: n for n in names})

    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        names, _ = t5.canonical(detection, infos)
        return t5.derive_config({n: tuple(infos[k].shape) for n, k in names.items()}, self.title())

    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        self.check_variant(variant)
        return t5.tiny_config(wide)
