"""Tiny pipelines for verification: the real diffusers classes, sized so every GGUF type applies.

The families' own tiny models have 24-wide rows, which no K-quant block fits; their wide
configurations (``Component.tiny_config(variant, wide=True)``) have Linear rows of 256 so Q2_K..Q8_0
all quantize something, with weights that carry a signal through every layer. The VAE is the
family's tiny VAE with its output layer scaled so decoded frames use the whole [0, 1] range
(random tiny decoders otherwise give flat grey frames that hide every difference). Which variants
verify, at which size, each family's generation adapter says.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightsmith.errors import UsageError
from weightsmith.families import get_component
from weightsmith.families.tiny_init import SIGNAL, randomize_
from weightsmith.verify.family import generation, verifiable


class _PerFamily(Mapping[str, Any]):
    """A read-only family -> value view of the registry, computed on access (families that
    register later are included)."""

    def __init__(self, attr: str) -> None:
        self._attr = attr

    def __getitem__(self, family: str) -> Any:
        return getattr(generation(family), self._attr)

    def __iter__(self) -> Iterator[str]:
        return iter([c.family for c in verifiable()])

    def __len__(self) -> int:
        return len(verifiable())


# Generation sizes that fit each tiny pipeline (height, width, frames), and the variants that verify.
TINY_SIZE: Mapping[str, tuple[int, int, int]] = _PerFamily("tiny_size")
TINY_VARIANTS: Mapping[str, tuple[str, ...]] = _PerFamily("tiny_variants")


def wide_config(family: str, variant: str) -> dict[str, Any]:
    """Constructor kwargs of the verification-sized transformer of ``family`` ``variant``."""
    return get_component(family, "transformer").tiny_config(variant, wide=True)


def signal_preserving_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights that carry a signal through every layer, like a trained network does
    (``families.tiny_init.SIGNAL``: matrices ``randn / sqrt(fan_in)``, small biases, norm scales
    near one), so quantizing a block's layers changes the output."""
    return randomize_(model, seed, SIGNAL)


def wide_transformer(family: str, variant: str, seed: int = 0) -> nn.Module:
    """A verification-sized random transformer of the real diffusers class."""
    comp = get_component(family, "transformer")
    cls = comp.model_class(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**wide_config(family, variant))
    return signal_preserving_(model, 1000 + seed)


def vae_variant(family: str, variant: str) -> str:
    return generation(family).vae_variant(variant)


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
    z = torch.randn((2, ch, 2, 4, 4) if generation(family).video else (2, ch, 8, 8), generator=gen)
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


def _tiny_vae(family: str, variant: str, seed: int) -> nn.Module | None:
    """The contrasty tiny VAE, or None for a family that registers no VAE (latents are scored)."""
    try:
        get_component(family, "vae")
    except UsageError:
        return None
    return contrasty_vae(family, variant, seed)


def save_tiny_pipeline(folder: str | Path, family: str, variant: str, seed: int = 0) -> Path:
    """Write a Diffusers pipeline folder (model_index.json, transformer/, vae/, scheduler/) of a tiny model."""
    from weightsmith.verify.pipelines import Parts, build_pipeline
    from weightsmith.verify.schedulers import choose_scheduler

    folder = Path(folder)
    gen = generation(family)
    boundary = gen.expert_boundary(variant)
    two = boundary is not None
    parts = Parts(
        family,
        variant,
        wide_transformer(family, variant, seed),
        _tiny_vae(family, variant, seed),
        choose_scheduler(family, variant),
        wide_transformer(family, variant, seed + 1) if two else None,
        boundary,
        gen.expands_timesteps(variant),
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
