"""Dequantization of GGUF quant types for readers: weightsmith's torch kernels when present,
else the gguf package's numpy reference."""

from __future__ import annotations

import numpy as np
import torch


def dequantize_gguf(data: np.ndarray, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 values of a quantized GGUF tensor, in torch ``shape``."""
    try:
        from weightsmith.quantize.ggml import dequantize
    except ImportError:
        dequantize = None
    if dequantize is not None:
        return dequantize(torch.from_numpy(np.array(data, copy=True)), qtype, shape)
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as np_dequantize

    out = np_dequantize(np.asarray(data), GGMLQuantizationType[qtype])
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(shape)
