"""Wan in its diffusers pipelines: T2V, I2V/FLF2V (CLIP image states from the seed), the two-expert
2.2 A14B and the 2.2 TI2V-5B with per-token timesteps; sizes bounded by the rotary table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from weightsmith.errors import UsageError
from weightsmith.families.generation import (
    Defaults,
    Generation,
    Geometry,
    config_int,
    lcm,
    seeded_normal,
)

if TYPE_CHECKING:
    import torch

# Wan 2.2 A14B hands over from the high-noise to the low-noise expert at this fraction of the
# training timesteps (the released I2V pipeline's boundary_ratio).
A14B_BOUNDARY = 0.9
# CLIP image-encoder tokens Wan 2.1 I2V takes per image.
CLIP_TOKENS = 257


def _with_image_embeds(base: type) -> type:
    """WanImageToVideoPipeline whose ``encode_image`` returns seeded CLIP states (no image encoder)."""

    def encode_image(self: Any, image: Any, device: torch.device | None = None) -> torch.Tensor:
        return self._weightsmith_image_embeds.to(device)

    return type(base.__name__, (base,), {"encode_image": encode_image})


class WanGeneration(Generation):
    title = "Wan"
    defaults = Defaults(480, 832, 81, 50, 5.0)
    text_width_key = "text_dim"
    text_len = 512
    pipeline = "WanPipeline"
    i2v_pipeline = "WanImageToVideoPipeline"
    i2v_variants = ("2.1-i2v", "2.1-flf2v", "2.2-i2v-a14b")
    expert_components = ("transformer", "transformer_2")
    expert_boundaries = {"2.2-i2v-a14b": A14B_BOUNDARY}
    expand_timesteps_variants = ("2.2-ti2v-5b",)
    scheduler = {
        "_class_name": "UniPCMultistepScheduler",
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": 3.0,
        "num_train_timesteps": 1000,
    }
    demo_variant = "2.1-t2v"
    tiny_variants = ("2.1-t2v", "2.1-i2v", "2.1-flf2v", "2.2-i2v-a14b", "2.2-ti2v-5b")
    tiny_size = (32, 32, 5)

    def pipeline_class(self, variant: str) -> type:
        if variant == "2.1-vace":
            raise UsageError(
                "verifying Wan VACE models is not supported yet (they need control videos)",
                hint="verify the Wan 2.1 T2V/I2V models, or compare VACE transformers with `weightsmith inspect`",
            )
        return super().pipeline_class(variant)

    def build(self, run: Any) -> tuple[type, dict[str, Any]]:
        cls = self.pipeline_class(run.variant)
        kwargs: dict[str, Any] = {
            "transformer_2": run.transformer_2,
            "boundary_ratio": run.boundary_ratio if run.transformer_2 is not None else None,
            "expand_timesteps": run.expand_timesteps,
        }
        if self.is_i2v(run.variant):
            if run.transformer.config.get("image_dim") is not None:
                cls = _with_image_embeds(cls)
            kwargs["image_encoder"] = None
            kwargs["image_processor"] = None
        return cls, kwargs

    def call_kwargs(self, run, settings, prompt, move, image=None, last_image=None) -> dict[str, Any]:
        kw = super().call_kwargs(run, settings, prompt, move, image, last_image)
        if run.variant == "2.1-flf2v":
            kw["last_image"] = last_image if last_image is not None else image
        if run.transformer_2 is not None and run.boundary_ratio is not None:
            kw["guidance_scale_2"] = settings.guidance
        return kw

    def image_embeds(self, run: Any, seed: int) -> torch.Tensor | None:
        cfg = run.transformer.config
        width = cfg.get("image_dim")
        if width is None:
            return None
        pos = cfg.get("pos_embed_seq_len")
        if pos:  # FLF2V: two images, half the positions each
            return seeded_normal(seed, 104_729, 1, pos // 2, int(width)).repeat(2, 1, 1)
        return seeded_normal(seed, 104_729, 1, CLIP_TOKENS, int(width))

    def geometry(
        self,
        tcfg: Mapping[str, Any],
        vcfg: Mapping[str, Any] | None,
        expert_cfgs: list[Mapping[str, Any]],
    ) -> Geometry:
        spatial = config_int(vcfg, "scale_factor_spatial", 8) if vcfg else 8
        temporal = config_int(vcfg, "scale_factor_temporal", 4) if vcfg else 4
        patch = tcfg.get("patch_size") or (1, 2, 2)
        if not (isinstance(patch, (list, tuple)) and len(patch) == 3):
            raise UsageError(
                f"the model's config has patch_size = {str(patch)[:40]!r}, not 3 numbers",
                hint="fix patch_size in the transformer's config.json (e.g. [1, 2, 2])",
            )
        p_t, p_h, p_w = (config_int({"patch_size": x}, "patch_size", 1) for x in patch)
        rope = min(config_int(c, "rope_max_seq_len", 1024) for c in expert_cfgs)
        h_mul, w_mul = lcm(16, spatial * p_h), lcm(16, spatial * p_w)
        # Positions per axis after the VAE and the patch embedding must fit the rotary table.
        max_latent_frames = (rope + 1) * p_t - 1
        return Geometry(
            h_mul,
            w_mul,
            temporal,
            max_height=rope * p_h * spatial // h_mul * h_mul,
            max_width=rope * p_w * spatial // w_mul * w_mul,
            max_frames=(max_latent_frames - 1) * temporal + 1,
            why_max=f"its rotary table holds {rope} positions per axis (rope_max_seq_len)",
            text_width=config_int(tcfg, "text_dim", 4096),
            pipeline=self.pipeline_name(),
        )

    def lone_expert_note(self, variant: str | None) -> str:
        return "Wan 2.2 A14B baseline given without its low-noise expert: one expert runs every step"

    def vae_variant(self, variant: str) -> str:
        return "2.2" if variant == "2.2-ti2v-5b" else "2.1"
