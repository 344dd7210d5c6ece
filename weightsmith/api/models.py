"""Models as torch modules: ``load_model`` (any artifact back into its diffusers class) and
``tiny_pipeline`` (a random-weight pipeline of the real classes, to try a script on)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

PathArg = str | os.PathLike[str]

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    import torch

    from weightsmith.errors import UsageError

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(_DTYPES)} or a torch.dtype")
    out: torch.dtype = getattr(torch, _DTYPES[dtype])
    return out


def load_model(
    path: PathArg,
    *,
    component: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    family: str | None = None,
    config: dict[str, Any] | None = None,
) -> nn.Module:
    """The diffusers module (e.g. the family's transformer class) for a checkpoint of any
    container, layout or quantization: GGUF tensors stay quantized and compute in ``dtype``,
    INT8/FP8/INT4/FP4 folders and files load as their Linear layers' kernels.

    ``component``: which one of a pipeline folder (default: its transformer); ``dtype``: fp32 |
    bf16 | fp16 or a torch.dtype, cast of the plain floating-point weights; ``config``: a
    Diffusers config for a checkpoint that carries none. Put it into a pipeline with
    ``DiffusionPipeline.from_pretrained(folder, transformer=model)``."""
    from weightsmith.load import load_model as build

    return build(
        os.fspath(path), component=component, device=device, dtype=_dtype(dtype), config=config, family=family
    )


def tiny_pipeline(folder: PathArg, *, family: str, variant: str | None = None, seed: int = 0) -> Path:
    """Write a Diffusers pipeline folder of a tiny random-weight model of ``family`` (the real
    diffusers classes, a few MB; no text encoder: generations use prompt embeddings) and
    return its path. For trying scripts and CI jobs out; ``variant``: the family's demo one."""
    from weightsmith.verify.family import generation
    from weightsmith.verify.tiny import save_tiny_pipeline

    gen = generation(family)
    chosen = variant or gen.demo_variant or gen.tiny_variants[0]
    return save_tiny_pipeline(os.fspath(folder), family, chosen, seed)
