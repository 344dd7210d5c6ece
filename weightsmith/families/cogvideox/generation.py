"""CogVideoX in its diffusers pipelines: T2V and I2V, v-prediction DDIM scheduling, sizes bounded by
the positional tables (learned tables fix the size; 1.5's rotary table bounds it)."""

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


class CogVideoXGeneration(Generation):
    title = "CogVideoX"
    defaults = Defaults(480, 720, 49, 50, 6.0)
    text_width_key = "text_embed_dim"
    text_len_key = "max_text_seq_length"
    text_len = 226
    pipeline = "CogVideoXPipeline"
    i2v_pipeline = "CogVideoXImageToVideoPipeline"
    i2v_variants = ("5b-i2v", "1.5-5b-i2v")
    flow_matching = False
    ddim_scheduler = "CogVideoXDDIMScheduler"
    dpm_scheduler = "CogVideoXDPMScheduler"
    scheduler = {
        "_class_name": "CogVideoXDDIMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "set_alpha_to_one": True,
        "snr_shift_scale": 3.0,
        "steps_offset": 0,
        "timestep_spacing": "trailing",
    }
    demo_variant = "5b"
    tiny_variants = ("2b", "5b", "5b-i2v", "1.5-5b", "1.5-5b-i2v")
    tiny_size = (32, 32, 5)
    tiny_vae = "default"

    def scheduler_config(self, variant: str | None) -> dict[str, Any]:
        """The released config (the 5B models use an SNR shift of 1)."""
        cfg = dict(self.scheduler)
        if variant and variant != "2b":
            cfg["snr_shift_scale"] = 1.0
        return cfg

    def geometry(
        self,
        tcfg: Mapping[str, Any],
        vcfg: Mapping[str, Any] | None,
        expert_cfgs: list[Mapping[str, Any]],
    ) -> Geometry:
        spatial = 2 ** (config_blocks(vcfg, "block_out_channels", 4) - 1) if vcfg else 8
        temporal = config_int(vcfg, "temporal_compression_ratio", 4) if vcfg else 4
        patch = config_int(tcfg, "patch_size", 2)
        mul = lcm(8, spatial * patch)
        rows_px, cols_px = config_int(tcfg, "sample_height", 60), config_int(tcfg, "sample_width", 90)
        sample_hw = (rows_px * spatial, cols_px * spatial)
        learned = bool(tcfg.get("use_learned_positional_embeddings"))
        rotary = bool(tcfg.get("use_rotary_positional_embeddings"))
        table = learned or not rotary  # the positional table covers the text tokens too
        limits: dict[str, Any] = {}
        if rotary and tcfg.get("patch_size_t") is not None:
            # CogVideoX 1.5 slices its rotary table, sample_height/patch x sample_width/patch
            # positions, to the latent grid: a larger grid runs off its end.
            rows, cols = rows_px // patch, cols_px // patch
            limits = {
                "max_height": max(rows, 1) * patch * spatial // mul * mul,
                "max_width": max(cols, 1) * patch * spatial // mul * mul,
                "why_max": f"its rotary table holds {rows}x{cols} positions (sample_height/width over the patch size)",
            }
        return Geometry(
            mul,
            mul,
            temporal,
            **limits,
            fixed_hw=sample_hw if learned else None,
            text_len=config_int(tcfg, "max_text_seq_length", 226) if table else None,
            text_width=config_int(tcfg, "text_embed_dim", 4096),
            sample_hw=sample_hw,
            sample_frames=config_int(tcfg, "sample_frames", 49),
            pipeline=self.pipeline_name(),
        )
