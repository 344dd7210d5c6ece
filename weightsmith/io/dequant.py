"""Dequantization of GGUF quant types for readers: weightsmith's torch kernels for the types they
cover, else the gguf package's numpy reference (IQ2/IQ3/TQ... types read from other tools)."""

from __future__ import annotations

import numpy as np
import torch

from weightsmith.errors import UnsupportedFormatError
from weightsmith.kernels.ggml import dequantize, registered_types


def dequantize_gguf(data: np.ndarray, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 values of a quantized GGUF tensor, in torch ``shape``."""
    if qtype in registered_types():
        return dequantize(torch.from_numpy(np.array(data, copy=True)), qtype, shape)
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import QuantError
    from gguf.quants import dequantize as np_dequantize

    try:
        out = np_dequantize(np.asarray(data), GGMLQuantizationType[qtype])
    except (NotImplementedError, KeyError, QuantError):
        raise UnsupportedFormatError(
            f"GGML type {qtype} cannot be dequantized here",
            hint="re-quantize the model to a K-quant or legacy type",
        ) from None
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(shape)
