"""A GGUF job without torch: read, plan, quantize and write on numpy arrays.

The common job (a safetensors source, the CPU, the fused C kernels, a plan made only of renames,
splits, fuses and reshapes) never needs torch: importing it costs more than quantizing a small
model. ``refusal`` says why a job cannot run here (then ``run.py`` takes the torch path and logs
the reason); ``read``, ``prepare`` and ``encode`` are the numpy counterparts of the engine's
``stream`` and ``encode.py``, and give the same bytes and the same SQNR (tests compare the files).

Float conversions follow torch's CPU rounding bit for bit: round-to-nearest-even to F16 and BF16;
a tensor holding NaN is cast by torch itself (its NaN bits depend on its loop); BF16 sources
travel as their uint16 bit patterns (widened to float32 exactly, by a shift).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from weightsmith.convert.engine import Plan, stream
from weightsmith.io.base import Checkpoint
from weightsmith.kernels.ggml import native
from weightsmith.kernels.ggml.native_arrays import f16_array, quantize_array
from weightsmith.quantize.device import cpu_without_torch
from weightsmith.quantize.gguf.encode import F16_MAX, beyond_f16, not_finite
from weightsmith.quantize.report import Sqnr

FLOAT_TYPES = ("F32", "F16", "BF16")
BF16_BITS = np.dtype(np.uint16)  # a BF16 source's arrays: every source is a float (``refusal``)


def refusal(
    device: str, imatrix: object, ck: Checkpoint, plan: Plan, specs: Iterable[tuple[tuple[int, ...], str]]
) -> str | None:
    """Why this job cannot run on numpy arrays (None: it can). ``specs``: (shape, ggml type) of
    every output tensor."""
    if imatrix is not None:
        return "an importance matrix is given"
    where = cpu_without_torch(device)
    if where:
        return where
    if native.backend_setting() == "torch":
        return "WEIGHTSMITH_GGML_BACKEND=torch"
    if plan.cast is not None:
        return "the plan casts dtypes"
    infos = ck.infos
    for op in plan.ops:
        if not op.arrays:
            return f"the plan's {op.kind} step ({type(op).__name__}) runs on torch tensors"
        for k in op.inputs:
            if infos[k].storage not in ck.array_storages:
                return f"tensor {k!r} is stored as {infos[k].storage} in a {ck.container} source"
    import gguf

    for shape, qtype in specs:
        if qtype in FLOAT_TYPES:
            continue
        if qtype not in native.NATIVE_TYPES:
            return f"{qtype} has no C kernel"
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
        if not shape or shape[-1] % block:
            return f"a {list(shape)} tensor does not split into {qtype} blocks"
    if native.library() is None:
        return "the C kernels are not available"
    return None


def read(plan: Plan, progress: bool) -> Iterator[tuple[str, np.ndarray]]:
    """The plan's output arrays in order (``engine.stream`` reading numpy arrays)."""
    return stream(plan, progress, plan.source.read_array)


def to_float32(a: np.ndarray) -> np.ndarray:
    """float32 values of a float32/float16 array or of BF16 bit patterns (exact), contiguous."""
    if a.dtype == BF16_BITS:
        return (a.astype(np.uint32) << 16).view(np.float32)
    if a.dtype == np.float16 and np.isnan(a).any():
        return _torch_cast(a, "float32")
    return np.ascontiguousarray(a, dtype=np.float32)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """NaN-free float32 to BF16 bit patterns (uint16), rounded to nearest-even as torch does."""
    u = x.view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _torch_cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` (float32, float16 or BF16 bits) cast by torch itself; 16-bit results as uint16 bits.
    For tensors holding NaN only: torch writes a NaN's bits differently in its vector and scalar
    loops (by tensor length), which no rule here should imitate; such weights are rare."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a))
    if a.dtype == BF16_BITS:
        t = t.view(torch.bfloat16)
    out = t.to(getattr(torch, dtype))
    return out.numpy() if dtype == "float32" else out.view(torch.int16).numpy().view(np.uint16)


def prepare(t: np.ndarray, qtype: str, name: str) -> np.ndarray:
    """``encode.prepare`` for arrays: float32 for a quantized type, else ``t``. NaN/inf is refused
    by :func:`encode`, from what the C kernels report (no pass over the tensor here)."""
    return t if qtype in FLOAT_TYPES else to_float32(t)


def encode(x: np.ndarray, qtype: str, imatrix: Any, name: str) -> tuple[np.ndarray, float | None]:
    """``encode.encode`` for arrays (``x`` from :func:`prepare`): the stored array and the SQNR."""
    if qtype == "F32":
        return to_float32(x), None
    if qtype == "F16":
        if x.dtype == np.float16:
            top = float(np.abs(to_float32(x)).max()) if x.size else 0.0
            if top > F16_MAX:  # NaN passes, as in torch's check
                raise beyond_f16(name, top)
            return np.ascontiguousarray(x), None
        half, amax, nan = f16_array(to_float32(x), native.library(required=True))
        if amax > F16_MAX:
            raise beyond_f16(name, amax)
        return (_torch_cast(x, "float16").view(np.float16) if nan else half), None
    if qtype == "BF16":
        if x.dtype == BF16_BITS:
            bits = x
        else:
            f = to_float32(x)
            bits = _torch_cast(x, "bfloat16") if np.isnan(f).any() else bf16_bits(f)
        return np.ascontiguousarray(bits).view(np.int16), None
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    shape = x.shape or (1,)
    rows = x.reshape(-1, shape[-1])
    lib = native.library(required=True)
    data, signal, noise = quantize_array(rows, qtype, block, size, lib, non_finite=not_finite(name, qtype))
    data = data.reshape(*shape[:-1], shape[-1] // block * size)
    if math.isfinite(signal) and math.isfinite(noise):
        return data, Sqnr(signal, noise).db
    # rare (float32 sums overflowed, or blocks decode to inf/NaN): the torch path's two-pass
    # measure, which sums again in float64 and refuses undecodable blocks naming the tensor
    import torch

    from weightsmith.quantize.gguf.encode import blockwise_sqnr

    return data, blockwise_sqnr(torch.from_numpy(rows), torch.from_numpy(data), qtype, name)
