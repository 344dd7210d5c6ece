"""How Wan's transformer and VAE are exported (see ``weightsmith.families.export``).

Transformer: batch, frames, height and width (multiples of the patch size) and prompt length are
free; image tokens of image-to-video models are fixed by the CLIP encoder. Image-to-video takes
one image embedding per sample (its ``images`` dimension is the batch); first/last-frame models
take two per sample, so their graphs fix batch 1. Image-conditioned models also fix the prompt
length at ``I2V_TEXT_TOKENS``: diffusers' ``WanAttnProcessor`` splits the image tokens off the
joined context at ``shape[1] - 512`` (the UMT5 length its pipelines pad to), so any other length
gives a different split (torch.export stops on that slice's data-dependent bounds), and 512 is
the only length at which the model computes what it means. Diffusers builds the
rotary tables in float64 (off Apple GPUs); the export casts them to float32 once, so the graph
holds and computes them in float32 (ONNX Runtime's float64 kernels are few and slow).
VAE: the class runs its causal cache in a Python loop over latent chunks, so the frame count is
traced in (one graph per frame count); batch, height and width are free. Export tests trace a
smaller tiny VAE (``WanVAEExport.test_config``): the loop unrolls every layer once per chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from weightsmith.families.export import ExportPlan, TransformerExport, VAEExport, VAEGeometry

if TYPE_CHECKING:  # torch on use: the registry is read torch-free (start-up)
    from torch import nn


# diffusers' WanAttnProcessor: ``image_context_length = encoder_hidden_states.shape[1] - 512``.
I2V_TEXT_TOKENS = 512


class WanTransformerExport(TransformerExport):
    def multiples(self, config: Mapping[str, Any]) -> dict[str, int]:
        pt, ph, pw = (int(x) for x in config["patch_size"])
        return {"frames": pt, "height": ph, "width": pw}

    def plan(self, component: Any, config: Mapping[str, Any], variant: str, part: str) -> ExportPlan:
        plan = super().plan(component, config, variant, part)
        if config.get("image_dim") is None:
            return plan
        static = plan.static | {"image_tokens", "text"}
        text = {"text": I2V_TEXT_TOKENS}
        plan = replace(plan, sizes={**plan.sizes, **text}, second={**plan.second, **text})
        if config.get("pos_embed_seq_len"):  # two images per sample: batch 1
            one = {"batch": 1}
            return replace(
                plan,
                static=static | {"batch", "images"},
                sizes={**plan.sizes, **one},
                second={**plan.second, **one},
            )
        inputs = tuple(
            replace(s, dims=tuple("batch" if d == "images" else d for d in s.dims)) for s in plan.inputs
        )
        sizes = {**plan.sizes, "images": plan.sizes["batch"]}
        second = {**plan.second, "images": plan.second["batch"]}
        return replace(plan, inputs=inputs, static=static, sizes=sizes, second=second)

    @contextlib.contextmanager
    def patched(self, model: nn.Module) -> Iterator[nn.Module]:
        import torch

        rope = getattr(model, "rope", None)
        saved = {n: getattr(rope, n) for n in ("freqs_cos", "freqs_sin") if rope is not None}
        try:
            for n, t in saved.items():
                setattr(rope, n, t.to(torch.float32))
            yield model
        finally:
            for n, t in saved.items():
                setattr(rope, n, t)


def vae_geometry(config: Mapping[str, Any]) -> VAEGeometry:
    """2.1: 3 pixel channels in; 2.2: pixels are patchified inside (``in_channels`` counts them)."""
    p = int(config.get("patch_size") or 1)
    return VAEGeometry(
        in_channels=int(config["in_channels"]) // (p * p),
        latent_channels=int(config["z_dim"]),
        spatial=int(config.get("scale_factor_spatial") or 8),
        temporal=int(config.get("scale_factor_temporal") or 4),
        static_frames=True,
    )


class WanVAEExport(VAEExport):
    def test_config(self, tiny: Mapping[str, Any]) -> dict[str, Any]:
        """Three stages of one resnet each, both resampling in time and space (x4 in time, as
        ``_encode``'s 4-frame chunks assume), the mid block's attention: every op kind and cache
        path of the released VAE. A spatial-only stage is left out: its resample is the
        time-resampling one's without the causal time convolution. About 60% of the tiny VAE's nodes."""
        if tiny.get("patch_size"):  # 2.2's residual, patchified VAE keeps its tiny shape
            return dict(tiny)
        return {
            **tiny,
            "dim_mult": [1, 2, 4],
            "num_res_blocks": 1,
            "temperal_downsample": [True, True],
            "scale_factor_spatial": 4,
            "scale_factor_temporal": 4,
        }
