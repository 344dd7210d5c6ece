"""Tiny pipelines for verification: the real diffusers classes, sized so every GGUF type applies.

The families' own tiny models have 24-wide rows, which no K-quant block fits; these have Linear
rows of 256 (two to eight heads of 32-128) so Q2_K..Q8_0 all quantize something. The VAE is the
family's tiny VAE with its output layer scaled so decoded frames use the whole [0, 1] range
(random tiny decoders otherwise give flat grey frames that hide every difference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightsmith.families import get_component

_WAN = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 64,
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 32,
}
_COG = {
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "in_channels": 4,
    "out_channels": 4,
    "time_embed_dim": 64,
    "text_embed_dim": 64,
    "num_layers": 2,
    "sample_width": 4,
    "sample_height": 4,
    "sample_frames": 5,
    "patch_size": 2,
    "patch_size_t": None,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 8,
}
_SANA = {
    "patch_size": 1,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 8,
    "num_cross_attention_heads": 8,
    "cross_attention_head_dim": 32,
    "cross_attention_dim": 256,
    "caption_channels": 64,
    "sample_size": 16,
}

# Generation sizes that fit each tiny pipeline (height, width, frames).
TINY_SIZE = {"wan": (32, 32, 5), "cogvideox": (32, 32, 5), "sana": (32, 32, 1)}
TINY_VARIANTS = {
    "wan": ("2.1-t2v", "2.1-i2v", "2.1-flf2v", "2.2-i2v-a14b", "2.2-ti2v-5b"),
    "cogvideox": ("2b", "5b", "5b-i2v", "1.5-5b", "1.5-5b-i2v"),
    "sana": ("1.0", "1.5", "sprint"),
}


def wide_config(family: str, variant: str) -> dict[str, Any]:
    """Constructor kwargs of the verification-sized transformer of ``family`` ``variant``."""
    if family == "wan":
        cfg = dict(_WAN)
        if variant in ("2.1-i2v", "2.1-flf2v"):
            cfg |= {"in_channels": 36, "image_dim": 64, "added_kv_proj_dim": 256}
        if variant == "2.1-flf2v":
            cfg["pos_embed_seq_len"] = 8
        if variant == "2.2-i2v-a14b":
            cfg["in_channels"] = 36
        if variant == "2.2-ti2v-5b":
            cfg |= {"in_channels": 48, "out_channels": 48}
        return cfg
    if family == "cogvideox":
        cfg = dict(_COG)
        if variant != "2b":
            cfg["use_rotary_positional_embeddings"] = True
        if variant in ("5b-i2v", "1.5-5b-i2v"):
            cfg["in_channels"] = 8
        if variant == "5b-i2v":
            cfg["use_learned_positional_embeddings"] = True
        if variant.startswith("1.5"):
            cfg |= {"patch_size_t": 2, "patch_bias": False}
        if variant == "1.5-5b-i2v":
            cfg["ofs_embed_dim"] = 64
        return cfg
    cfg = dict(_SANA)
    if variant in ("1.5", "sprint"):
        cfg["qk_norm"] = "rms_norm_across_heads"
    if variant == "sprint":
        cfg["guidance_embeds"] = True
    return cfg


def signal_preserving_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights that carry a signal through every layer, like a trained network does.

    The fixtures' ``randn * 0.02`` lets biases and the skip paths drown what the blocks add, so
    nothing inside a block would matter to the output (and quantizing it would look free). Here
    matrices and kernels are ``randn / sqrt(fan_in)``, biases ``0.01 * randn``, other vectors
    (norm scales) ``1 + 0.05 * randn``; one seeded generator, parameters in name order.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) / fan_in**0.5
            elif name.endswith("bias"):
                v = torch.randn(p.shape, generator=gen) * 0.01
            else:
                v = 1.0 + torch.randn(p.shape, generator=gen) * 0.05
            p.copy_(v.to(p.dtype))
    return model.eval()


def wide_transformer(family: str, variant: str, seed: int = 0) -> nn.Module:
    """A verification-sized random transformer of the real diffusers class."""
    comp = get_component(family, "transformer")
    cls = comp.model_class(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**wide_config(family, variant))
    return signal_preserving_(model, 1000 + seed)


def vae_variant(family: str, variant: str) -> str:
    if family == "wan":
        return "2.2" if variant == "2.2-ti2v-5b" else "2.1"
    return "default" if family == "cogvideox" else "f32c32-sana"


def contrasty_vae(family: str, variant: str, seed: int = 0) -> nn.Module:
    """The family's tiny VAE re-initialised so the latents carry through to the frames.

    With the fixtures' ``randn * 0.02`` weights, biases drown the latent signal within a few
    layers and every latent decodes to the same grey picture. Here the weights are
    signal-preserving and the last decoder convolution is scaled so frames span roughly [0, 1].
    """
    vae = signal_preserving_(
        get_component(family, "vae").tiny_model(vae_variant(family, variant), seed), seed + 17
    )
    gen = torch.Generator().manual_seed(seed + 18)
    convs = [(n, m) for n, m in vae.decoder.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    _, conv_out = next((n, m) for n, m in reversed(convs) if "conv_out" in n)
    ch = _latent_channels(vae)
    z = torch.randn((2, ch, 2, 4, 4) if family != "sana" else (2, ch, 8, 8), generator=gen)
    with torch.no_grad():
        out = vae.decode(z).sample
        scale = 0.5 / float(out.std().clamp_min(1e-6))
        conv_out.weight.mul_(scale)
        if conv_out.bias is not None:
            conv_out.bias.zero_()
    return vae.eval()


def _latent_channels(vae: nn.Module) -> int:
    cfg = vae.config
    return int(cfg.get("z_dim") or cfg.get("latent_channels"))


def save_tiny_pipeline(folder: str | Path, family: str, variant: str, seed: int = 0) -> Path:
    """Write a Diffusers pipeline folder (model_index.json, transformer/, vae/, scheduler/) of a tiny model."""
    from weightsmith.verify.pipelines import A14B_BOUNDARY, Parts, build_pipeline
    from weightsmith.verify.schedulers import choose_scheduler

    folder = Path(folder)
    two = family == "wan" and variant == "2.2-i2v-a14b"
    parts = Parts(
        family,
        variant,
        wide_transformer(family, variant, seed),
        contrasty_vae(family, variant, seed),
        choose_scheduler(family, variant),
        wide_transformer(family, variant, seed + 1) if two else None,
        A14B_BOUNDARY if two else None,
        family == "wan" and variant == "2.2-ti2v-5b",
    )
    pipe = build_pipeline(parts)
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # "text_encoder=None cannot be saved" is the point here
    try:
        pipe.save_pretrained(str(folder), safe_serialization=True)
    finally:
        dlogging.set_verbosity(level)
    return folder
