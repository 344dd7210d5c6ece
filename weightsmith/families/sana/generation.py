"""Sana in its diffusers pipelines: text to image with attention masks, no resolution binning (sizes
are checked, not rounded), and Sana Sprint's SCM scheduler without a negative prompt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightsmith.families.generation import (
    Defaults,
    Generation,
    Geometry,
    config_blocks,
    config_int,
    lcm,
)


class SanaGeneration(Generation):
    title = "Sana"
    video = False
    defaults = Defaults(1024, 1024, 1, 20, 4.5)
    text_width_key = "caption_channels"
    text_len = 300
    attention_masks = True
    pipeline = "SanaPipeline"
    variant_pipelines = {"sprint": "SanaSprintPipeline"}
    scheduler = {
        "_class_name": "DPMSolverMultistepScheduler",
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": 3.0,
        "num_train_timesteps": 1000,
    }
    demo_variant = "1.0"
    demo_schemes = ("nvfp4",)  # Sana publishes NVFP4 checkpoints for Blackwell GPUs
    tiny_variants = ("1.0", "1.5", "sprint")
    tiny_size = (32, 32, 1)
    tiny_vae = "f32c32-sana"

    def negative_embeds(self, variant: str) -> bool:
        return variant != "sprint"  # Sprint runs without classifier-free guidance

    def scheduler_config(self, variant: str | None) -> dict[str, Any]:
        if variant == "sprint":
            return {"_class_name": "SCMScheduler", "num_train_timesteps": 1000, "prediction_type": "trigflow"}
        return dict(self.scheduler)

    def call_kwargs(self, run, settings, prompt, move, image=None, last_image=None) -> dict[str, Any]:
        import torch

        kw = super().call_kwargs(run, settings, prompt, move, image, last_image)
        kw["use_resolution_binning"] = False
        if run.variant != "sprint":
            kw["negative_prompt"] = None
        kw["prompt_attention_mask"] = move(prompt.mask)
        if "negative_prompt_embeds" in kw:
            nm = prompt.negative_mask if prompt.negative_mask is not None else torch.ones_like(prompt.mask)
            kw["negative_prompt_attention_mask"] = move(nm)
        if run.variant == "sprint" and settings.steps != 2:
            kw["intermediate_timesteps"] = None
        return kw

    def encode_prompt(self, pipe, text, negative, device):
        pe, pm, ne, nm = pipe.encode_prompt(
            prompt=text, do_classifier_free_guidance=True, negative_prompt=negative, device=device
        )
        return pe, pm, ne, nm

    def geometry(
        self,
        tcfg: Mapping[str, Any],
        vcfg: Mapping[str, Any] | None,
        expert_cfgs: list[Mapping[str, Any]],
    ) -> Geometry:
        spatial = 2 ** (config_blocks(vcfg, "encoder_block_out_channels", 6) - 1) if vcfg else 32
        patch = config_int(tcfg, "patch_size", 1)
        mul = lcm(32, spatial * patch)
        side = config_int(tcfg, "sample_size", 32) * spatial
        return Geometry(
            mul,
            mul,
            0,
            text_width=config_int(tcfg, "caption_channels", 2304),
            sample_hw=(side, side),
            pipeline=self.pipeline_name(),
        )
