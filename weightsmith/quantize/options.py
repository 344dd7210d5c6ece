"""Typed options of a quantize run: what every scheme takes, and what only the Linear schemes take."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightsmith.errors import UsageError
from weightsmith.quantize.keep import KeepBlocks


@dataclass(frozen=True)
class QuantizeOptions:
    """Options every scheme takes besides SRC, DST and the scheme name.

    ``imatrix``: an importance matrix (GGUF K/IQ recipes only); ``keep``: --keep globs;
    ``family``: insist on this family; ``config``: a Diffusers config.json for the source;
    ``report``: write DST.layers.json."""

    imatrix: str | Path | None = None
    keep: tuple[str, ...] = ()
    family: str | None = None
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    config: str | Path | None = None
    report: bool = True


@dataclass(frozen=True)
class LinearOptions:
    """What only the INT8/FP8/INT4 schemes take: the output layout (``compressed-tensors``,
    ``comfy`` (comfy_quant) or ``comfy-legacy`` (scaled fp8); None picks by DST), whole blocks kept,
    W8A8/W4A4 activations and the shard size.

    ``activation_absmax``: the largest |input| each Linear saw in reference generations, keyed by
    Diffusers module name (``blocks.0.attn1.to_q``), from ``weightsmith.verify.calibrate``
    (``quantize --calibrate``); static activation scales are derived from it (nvfp4 W4A4's
    input_global_scale, ComfyUI's input_scale). quantize cannot run generations itself (verify
    sits above it), so the caller measures and passes it in.
    ``sensitivity`` / ``fp_layers``: a ``weightsmith sensitivity`` JSON and how many of its most
    sensitive layers keep full-precision matmuls in a ComfyUI file."""

    format: str | None = None
    keep_blocks: str | KeepBlocks | None = None
    activations: str | None = None
    shard_size: str = "5GB"
    activation_absmax: Mapping[str, float] | None = None
    sensitivity: str | Path | None = None
    fp_layers: int | None = None


@dataclass(frozen=True)
class SchemeFamily:
    """A family of schemes by their command-line names, and the runner that writes them.

    ``run(src, dst, scheme, **options)`` takes the fields of ``QuantizeOptions`` (and of
    ``LinearOptions`` for the Linear schemes) as keywords."""

    name: str
    matches: Callable[[str], bool]
    run: Callable[..., Any]
    names: Callable[[], list[str]]


def check_gguf_options(
    scheme: str,
    fmt: str | None,
    keep_blocks: str | None,
    activations: str | None,
    calibrate: bool,
    sensitivity: str | os.PathLike[str] | None,
    fp_layers: int | None,
) -> bool:
    """True for a ``gguf:`` scheme, which takes none of the Linear schemes' options (naming one is
    a usage error); False for any other scheme."""
    if not scheme.lower().startswith("gguf:"):
        return False
    if (
        fmt not in (None, "gguf")
        or keep_blocks is not None
        or activations
        or calibrate
        or sensitivity
        or fp_layers
    ):
        raise UsageError(
            "--format, --keep-blocks, --activations, --calibrate, --sensitivity and --fp-layers apply to "
            "int8/fp8/int4/fp4 schemes",
            hint="drop them for gguf: recipes (the GGUF file is the format)",
        )
    return True
