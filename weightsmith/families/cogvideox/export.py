"""How CogVideoX's transformer and VAE are exported (see ``weightsmith.families.export``).

Transformer: the prompt is always ``max_text_seq_length`` tokens. Models with rotary embeddings
(5B, 1.5) take the tables the pipeline computes as two documented inputs, ``rotary_cos`` and
``rotary_sin``, shaped ``[frames/pt, height/p, width/p, head_dim]`` (the pipeline's
``[tokens, head_dim]`` tables, unflattened so that their sizes follow the latent's); batch,
frames and size are then free. 2B's sinusoidal table and 5B image-to-video's learned table are
built for one size in Python: those graphs fix frames, height and width (batch stays free).
VAE: it decodes and encodes in Python loops over frame batches, so frames are traced in. Its
``CogVideoXSafeConv3d`` picks, from the input's size in Python, whether to split the convolution
along frames (inputs over 2 GB): under a free batch that test cannot be traced, so the export
runs each as the plain ``Conv3d`` it subclasses (the same numbers; the split only saves memory).
Export tests trace a three-block tiny VAE (``CogVideoXVAEExport.test_config``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from weightsmith.families.export import TransformerExport, VAEExport, VAEGeometry
from weightsmith.families.inputs import InputSpec

if TYPE_CHECKING:  # torch on use: the registry is read torch-free (start-up)
    import torch
    from torch import nn

PATCHES = ("frames_patches", "height_patches", "width_patches")


def _rotary(config: Mapping[str, Any]) -> bool:
    return bool(config.get("use_rotary_positional_embeddings"))


class CogVideoXTransformerExport(TransformerExport):
    def extra_inputs(self, config: Mapping[str, Any], variant: str) -> list[InputSpec]:
        if not _rotary(config):
            return []
        dims = (*PATCHES, int(config["attention_head_dim"]))
        doc = "rotary table of the latent grid, float32 (the pipeline's image_rotary_emb, unflattened)"
        return [
            InputSpec("rotary_cos", dims, doc="cos " + doc),
            InputSpec("rotary_sin", dims, doc="sin " + doc),
        ]

    def multiples(self, config: Mapping[str, Any]) -> dict[str, int]:
        p, pt = int(config["patch_size"]), int(config.get("patch_size_t") or 1)
        return {"frames": pt, "height": p, "width": p}

    def static(self, config: Mapping[str, Any], variant: str) -> frozenset[str]:
        if _rotary(config) and not config.get("use_learned_positional_embeddings"):
            return frozenset()
        return frozenset({"frames", "height", "width"})

    def derived_sizes(self, config: Mapping[str, Any], sizes: Mapping[str, int]) -> dict[str, int]:
        m = self.multiples(config)
        return {f"{d}_patches": sizes[d] // m[d] for d in ("frames", "height", "width") if d in sizes}

    def call(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        x = dict(x)
        cos, sin = x.pop("rotary_cos", None), x.pop("rotary_sin", None)
        rotary = None if cos is None else (cos.flatten(0, 2), sin.flatten(0, 2))
        return model(**x, image_rotary_emb=rotary, return_dict=False)[0]

    def feed(self, named: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        x = super().feed(named, config)
        rotary = named.get("image_rotary_emb")
        if rotary is not None:
            _, f, _, h, w = named["hidden_states"].shape
            m = self.multiples(config)
            grid = (f // m["frames"], h // m["height"], w // m["width"])
            x["rotary_cos"], x["rotary_sin"] = (t.reshape(*grid, t.shape[-1]) for t in rotary)
        return x


def vae_geometry(config: Mapping[str, Any]) -> VAEGeometry:
    return VAEGeometry(
        in_channels=int(config["in_channels"]),
        latent_channels=int(config["latent_channels"]),
        spatial=2 ** (len(config["down_block_types"]) - 1),
        temporal=int(config.get("temporal_compression_ratio") or 4),
        static_frames=True,
    )


class CogVideoXVAEExport(VAEExport):
    def test_config(self, tiny: Mapping[str, Any]) -> dict[str, Any]:
        """Three blocks: two that resample in time and space (x4 in time, as released) and the last,
        which keeps its size, with a channel change for resnet shortcuts: every op kind of the
        released four-block VAE, whose third block resamples in space only (the same convolution
        without the time pooling or interpolation)."""
        return {
            **tiny,
            "down_block_types": ("CogVideoXDownBlock3D",) * 3,
            "up_block_types": ("CogVideoXUpBlock3D",) * 3,
            "block_out_channels": (8, 16, 16),
        }

    @contextlib.contextmanager
    def patched(self, model: nn.Module) -> Iterator[nn.Module]:
        from torch import nn

        safe = [m for m in model.modules() if type(m).__name__ == "CogVideoXSafeConv3d"]
        try:
            for m in safe:
                m.forward = nn.Conv3d.forward.__get__(m)  # instance attribute: the plain convolution
            yield model
        finally:
            for m in safe:
                del m.forward
