"""Registry of GGML tensor types: one kernel class per type, looked up by name or ggml type id.

A new type is added by subclassing :class:`GGMLKernel` and decorating it with :func:`register`;
nothing else needs editing. Block and byte sizes come from gguf's own table so they cannot drift
from what gguf's reader expects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import gguf
import torch

from weightsmith.errors import QuantizationError

__all__ = ["GGMLKernel", "register", "get_kernel", "registered_types"]


class GGMLKernel(ABC):
    """Quantize rows of float32 into ggml blocks, and back.

    Subclasses set ``qtype``; ``name``, ``block_size`` and ``type_size`` are filled in by
    :func:`register`. Both methods work on 2-D row batches: ``quantize_rows`` gets float32 rows
    ``(R, n)`` and returns uint8 ``(R, n // block_size * type_size)``; ``dequantize_rows`` does the
    reverse. Rows are independent, so callers may split a tensor into row chunks freely.
    """

    qtype: ClassVar[gguf.GGMLQuantizationType]
    name: ClassVar[str]
    type_id: ClassVar[int]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    #: whether an importance matrix changes the result (Q8_0 and the float types ignore it)
    uses_imatrix: ClassVar[bool] = True
    #: whether inputs must be finite (the search-based quantizers are undefined on NaN/inf)
    needs_finite: ClassVar[bool] = True
    #: the kernel checks finiteness itself, more cheaply than a pass over the input (e.g. from its
    #: block scales, which are non-finite exactly when a block is)
    checks_finite: ClassVar[bool] = False
    #: rows are processed in chunks of about this many elements: large enough to amortise
    #: per-op overhead, small enough that the batched search tensors stay in cache
    chunk_elems: ClassVar[int] = 1 << 16

    @classmethod
    @abstractmethod
    def quantize_rows(cls, x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        """float32 ``(R, n)`` -> uint8 ``(R, n // block_size * type_size)``."""

    @classmethod
    def quantize_into(cls, x: torch.Tensor, imatrix: torch.Tensor | None, out: torch.Tensor) -> None:
        """Like :meth:`quantize_rows`, writing into ``out`` (uint8, contiguous rows); kernels may
        override it to skip the intermediate result."""
        out.copy_(cls.quantize_rows(x, imatrix))

    @classmethod
    @abstractmethod
    def dequantize_rows(cls, data: torch.Tensor) -> torch.Tensor:
        """uint8 ``(R, nbytes)`` -> float32 ``(R, nbytes // type_size * block_size)``."""


_REGISTRY: dict[str, type[GGMLKernel]] = {}


def register(cls: type[GGMLKernel]) -> type[GGMLKernel]:
    """Class decorator: fill in sizes from gguf's table and make the type available by name and id."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[cls.qtype]
    cls.name = cls.qtype.name
    cls.type_id = int(cls.qtype)
    cls.block_size = block_size
    cls.type_size = type_size
    if cls.name in _REGISTRY:
        raise ValueError(f"ggml type {cls.name} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_kernel(qtype: str | int | gguf.GGMLQuantizationType) -> type[GGMLKernel]:
    """The kernel for a type given as name (``"Q4_K"``, case-insensitive), ggml id or enum member."""
    if isinstance(qtype, gguf.GGMLQuantizationType):
        key = qtype.name
    elif isinstance(qtype, int):
        try:
            key = gguf.GGMLQuantizationType(qtype).name
        except ValueError:
            key = str(qtype)
    else:
        key = str(qtype).upper()
    kernel = _REGISTRY.get(key)
    if kernel is None:
        raise QuantizationError(
            f"ggml type {qtype!r} has no kernel here",
            hint=f"use one of {', '.join(registered_types())}",
        )
    return kernel


def registered_types() -> list[str]:
    """Names of all registered types, in ggml id order."""
    return sorted(_REGISTRY, key=lambda name: _REGISTRY[name].type_id)
