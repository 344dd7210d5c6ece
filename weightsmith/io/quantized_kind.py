"""Which quantized artifact a checkpoint is, told from its keys, metadata and config alone.

Kept apart from ``io/quantized.py`` (the dequantizing views, which need torch) so that opening a
plain checkpoint, as ``inspect`` does, never imports torch.
"""

from __future__ import annotations

from typing import Any

from weightsmith.io.base import Checkpoint

COMFY_MARKER = "scaled_fp8"
# Metadata keys weightsmith writes into its quantized files.
SOURCE_DTYPE_KEY = "weightsmith.source_dtype"
SCHEME_KEY = "weightsmith.scheme"
COMFY_LAYERS_KEY = "_quantization_metadata"
COMFY_QUANT_SUFFIX = ".comfy_quant"


def _ct_config_of(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    qc = (cfg or {}).get("quantization_config") or (cfg or {}).get("compression_config")
    if isinstance(qc, dict) and qc.get("quant_method", "compressed-tensors") == "compressed-tensors":
        return qc if "config_groups" in qc else None
    return None


def ct_config(ck: Checkpoint) -> dict[str, Any] | None:
    """The compressed-tensors ``quantization_config`` of a checkpoint's config, if it has one.

    Read from the config as attached, before it is checked against the weights (that check
    reads every shard's header, and is done on the plain view instead)."""
    return _ct_config_of(ck._config)


def comfy_marker(ck: Checkpoint) -> str | None:
    for k in ck.keys():
        if k == COMFY_MARKER or k.endswith("." + COMFY_MARKER):
            return k
    return None


def quantized_kind(ck: Checkpoint) -> str | None:
    """``compressed-tensors``, ``comfy-scaled-fp8``, ``comfy-quant`` or None (GGUF is read natively)."""
    if ct_config(ck) is not None:
        return "compressed-tensors"
    if comfy_marker(ck) is not None:
        return "comfy-scaled-fp8"
    if COMFY_LAYERS_KEY in ck.metadata or any(k.endswith(COMFY_QUANT_SUFFIX) for k in ck.keys()):
        return "comfy-quant"
    return None
