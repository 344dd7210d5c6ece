"""GGUF quantization kernels, byte-identical to ggml's reference quantizer.

``quantize`` turns a float tensor into the uint8 rows a GGUF file stores for a ggml type; ``dequantize``
reads them back (``tensors.py``: torch tensors on any device, through the torch kernels or the fused
C kernels of ``native.py``). ``native_arrays.py`` runs the C kernels on numpy arrays without torch.
The names below are imported on first use (PEP 562), so ``native`` and ``native_arrays`` load
without torch.
"""

from __future__ import annotations

from weightsmith._lazy import lazy_getattr

_NAMES = (
    "GGMLKernel",
    "Measured",
    "byte_shape",
    "dequantize",
    "get_kernel",
    "quantize",
    "quantize_measured",
    "register",
    "registered_types",
)
__getattr__ = lazy_getattr(__name__, dict.fromkeys(_NAMES, "tensors"))
__all__ = list(_NAMES)
