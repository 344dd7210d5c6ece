"""GGUF quantization of torch tensors, byte-identical to ggml's reference quantizer (exported by
the package ``weightsmith.kernels.ggml``).

``quantize`` turns a float tensor into the uint8 rows a GGUF file stores for a ggml type; ``dequantize``
reads them back. Both are vectorised over blocks, run on the input's device (CPU or CUDA), and
reproduce ggml's C code (built without floating-point contraction) bit for bit, with or without an
importance matrix. See ``common.py`` for the rules that make that hold.

Types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import gguf
import torch

from weightsmith.errors import QuantizationError

from . import floats, iquants, kquants, legacy, native  # noqa: F401  (registers the kernels)
from .common import non_finite_error, require_finite
from .native_arrays import executor as _executor
from .types import GGMLKernel, get_kernel, register, registered_types  # noqa: F401 (the package's exports)

QType = str | int | gguf.GGMLQuantizationType


def byte_shape(shape: Sequence[int], qtype: QType) -> tuple[int, ...]:
    """Shape of the uint8 array that stores a tensor of ``shape`` as ``qtype`` (like gguf's helper)."""
    k = get_kernel(qtype)
    shape = tuple(int(s) for s in shape)
    if not shape:
        shape = (1,)
    _check_row(shape, k)
    return (*shape[:-1], shape[-1] // k.block_size * k.type_size)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_budget = 1


@contextmanager
def _cpu_workers() -> Iterator[int]:
    """Run the kernels' torch ops single-threaded and yield the thread budget for chunk workers.

    The kernels issue thousands of mid-sized ops; torch's intra-op threads fork and join on each,
    and on a machine where another process holds a core that join waits for a descheduled thread
    (measured: 50x slower). Independent row chunks on worker threads use the same cores without
    that barrier. torch's thread setting is restored when the last concurrent call returns.
    """
    global _threads_users, _threads_budget
    with _threads_lock:
        if _threads_users == 0:
            _threads_budget = torch.get_num_threads()
            if _threads_budget > 1:
                torch.set_num_threads(1)
        _threads_users += 1
        budget = _threads_budget
    try:
        yield budget
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_budget > 1:
                torch.set_num_threads(_threads_budget)


def _check_row(shape: tuple[int, ...], k: type[GGMLKernel]) -> None:
    if shape[-1] % k.block_size:
        raise QuantizationError(
            f"cannot store a tensor of shape {list(shape)} as {k.name}: its rows have {shape[-1]} elements, "
            f"which is not a multiple of the {k.name} block size {k.block_size}",
            hint="keep this tensor in F16/BF16/F32, or pick a type whose block size divides the row length",
        )


def _rows_per_chunk(k: type[GGMLKernel], n: int, device: torch.device) -> int:
    """Rows per kernel call: cache-sized on CPU; on a GPU, large enough to fill it."""
    elems = k.chunk_elems if device.type == "cpu" else max(k.chunk_elems, 1 << 24)
    return max(1, elems // max(n, 1))


def quantize(
    tensor: torch.Tensor, qtype: QType, imatrix: torch.Tensor | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """Quantize ``tensor`` (rows = last dim) to ggml type ``qtype``; returns uint8 ``byte_shape(...)``.

    ``imatrix`` holds one importance weight per column (length ``tensor.shape[-1]``), as produced by
    llama.cpp's imatrix tool; types that ignore it (floats, Q8_0) accept and ignore it. The result is
    on ``tensor``'s device and byte-identical to ``ggml_quantize_chunk``. ``backend`` (default: the
    ``WEIGHTSMITH_GGML_BACKEND`` setting, ``auto``) chooses between the fused CPU kernels
    (:mod:`.native`) and the torch kernels; both give the same bytes.
    """
    return _quantize(tensor, qtype, imatrix, backend, measure=False).data


@dataclass
class Measured:
    """Quantized bytes and the energies the per-layer SQNR is made of, summed as the blocks were
    written: ``signal`` = sum x^2, ``noise`` = sum (decoded - x)^2 (float64 totals of float32
    partials; not finite where float32 overflowed or a block decodes to inf/NaN)."""

    data: torch.Tensor
    signal: float
    noise: float


def quantize_measured(
    tensor: torch.Tensor, qtype: QType, imatrix: torch.Tensor | None = None, *, backend: str | None = None
) -> Measured:
    """:func:`quantize` that also measures its error in the same pass: each chunk (each block, in the
    C kernels) is decoded right after it is quantized, while it is still in cache, so the SQNR
    needs no second pass over the tensor. Same bytes as :func:`quantize`."""
    return _quantize(tensor, qtype, imatrix, backend, measure=True)


def _quantize(
    tensor: torch.Tensor, qtype: QType, imatrix: torch.Tensor | None, backend: str | None, measure: bool
) -> Measured:
    k = get_kernel(qtype)
    if not isinstance(tensor, torch.Tensor):
        raise QuantizationError(
            f"expected a torch.Tensor to quantize, got {type(tensor).__name__}",
            hint="pass a floating-point torch.Tensor",
        )
    if not tensor.is_floating_point():
        raise QuantizationError(
            f"cannot quantize a {tensor.dtype} tensor to {k.name}", hint="convert it to a float dtype first"
        )
    shape = tuple(tensor.shape) or (1,)
    _check_row(shape, k)
    n = shape[-1]
    x = tensor.detach().reshape(-1, n).to(torch.float32).contiguous()
    out = torch.empty((x.shape[0], n // k.block_size * k.type_size), dtype=torch.uint8, device=x.device)
    if x.numel() == 0:
        return Measured(out.reshape(byte_shape(shape, k.qtype)), 0.0, 0.0)
    qw = None
    if imatrix is not None and k.uses_imatrix:
        qw = imatrix.detach().reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
        if qw.numel() != n:
            raise QuantizationError(
                f"importance matrix has {qw.numel()} weights but the rows of the tensor have {n} elements",
                hint="pass the imatrix entry that belongs to this tensor (one weight per input column)",
            )
    fused = _native_quantizer(k, x.device, qw, backend)
    if fused is None and k.needs_finite and not k.checks_finite:
        require_finite(x, k.name)
    step = _rows_per_chunk(k, n, x.device) if fused is None else native.rows_per_chunk(k.name, n)
    starts = range(0, x.shape[0], step)
    # one float64 (signal, noise) row per chunk, filled by whichever worker runs it: the totals are
    # summed in chunk order afterwards, so they do not depend on the thread schedule
    energy = torch.zeros((len(starts), 2), dtype=torch.float64, device=x.device) if measure else None

    def run(r0: int) -> None:
        xs, ys = x[r0 : r0 + step], out[r0 : r0 + step]
        slot = None if energy is None else energy[r0 // step]
        if fused is None:
            k.quantize_into(xs, qw, ys)
            if slot is not None:
                _chunk_energy(k, xs, ys, slot)
        elif not fused(xs, ys, slot):
            raise non_finite_error(k.name)

    _run_chunks(run, starts, x.device)
    data = out.reshape(byte_shape(shape, k.qtype))
    if energy is None:
        return Measured(data, math.nan, math.nan)
    signal, noise = native.chunk_totals(energy.tolist())
    return Measured(data, signal, noise)


def _chunk_energy(k: type[GGMLKernel], x: torch.Tensor, q: torch.Tensor, slot: torch.Tensor) -> None:
    """Signal and error energy of one chunk the torch kernels just quantized (still cache-sized):
    float32 dot products, added into ``slot`` in float64 without a device sync."""
    deq = k.dequantize_rows(q).reshape(-1)
    flat = x.reshape(-1)
    slot[0] += torch.dot(flat, flat).double()
    diff = deq - flat  # not in place: a float type's decoded rows may be a view of its bytes
    slot[1] += torch.dot(diff, diff).double()


def _native_quantizer(
    k: type[GGMLKernel], device: torch.device, imatrix: torch.Tensor | None, backend: str | None
) -> native.Quantizer | None:
    """The fused CPU kernel for this call, or None for the torch kernels."""
    lib = _native_library(
        k, device, backend, native.NATIVE_TYPES if imatrix is None else native.IMATRIX_TYPES
    )
    return None if lib is None else native.quantizer(k.name, lib, imatrix)


def _native_library(
    k: type[GGMLKernel], device: torch.device, backend: str | None, types: tuple[str, ...]
) -> ctypes.CDLL | None:
    """The C kernels' library where they serve this call: not on a GPU, not for a type outside
    ``types``, not with ``backend="torch"``, not where no C compiler could build it."""
    setting = native.backend_setting(backend)
    if setting == "torch" or device.type != "cpu" or k.name not in types:
        return None
    return native.library(required=setting == "native")


def _run_chunks(run: Callable[[int], None], starts: range, device: torch.device) -> None:
    """Call ``run`` on every chunk start: in order on a GPU, on up to torch's thread budget of
    worker threads (with single-threaded torch ops) on the CPU."""
    if device.type != "cpu":
        for r0 in starts:
            run(r0)
        return
    with _cpu_workers() as workers:
        if min(workers, len(starts)) > 1:
            list(_executor(workers).map(run, starts))
        else:
            for r0 in starts:
                run(r0)


def dequantize(
    data: torch.Tensor, qtype: QType, shape: Sequence[int], *, backend: str | None = None
) -> torch.Tensor:
    """Decode uint8 ggml rows back to float32 of ``shape`` (the tensor's logical shape), same device.

    ``backend`` as for :func:`quantize`; both backends give the same floats as gguf's dequantizer.
    """
    k = get_kernel(qtype)
    shape = tuple(int(s) for s in shape) or (1,)
    expected = byte_shape(shape, k.qtype)
    if data.dtype != torch.uint8:
        raise QuantizationError(
            f"expected uint8 {k.name} data, got {data.dtype}",
            hint="pass the raw GGML blocks as a torch.uint8 tensor",
        )
    if data.numel() != _prod(expected):
        raise QuantizationError(
            f"{k.name} data has {data.numel()} bytes, but a tensor of shape {list(shape)} needs {_prod(expected)}",
            hint="check the type and shape recorded for this tensor",
        )
    rows = data.reshape(-1, expected[-1])
    if rows.shape[0] == 0:
        return torch.empty(shape, dtype=torch.float32, device=data.device)
    fused = _native_dequantizer(k, data.device, backend)
    if fused is not None:
        rows = rows.contiguous()
    step = _rows_per_chunk(k, shape[-1], data.device) * 4  # decoding is light: bigger chunks
    if fused is None and step >= rows.shape[0]:
        return k.dequantize_rows(rows).reshape(shape)
    out = torch.empty((rows.shape[0], shape[-1]), dtype=torch.float32, device=data.device)

    def run(r0: int) -> None:
        if fused is None:
            out[r0 : r0 + step] = k.dequantize_rows(rows[r0 : r0 + step])
        else:
            fused(rows[r0 : r0 + step], out[r0 : r0 + step])

    _run_chunks(run, range(0, rows.shape[0], step), data.device)
    return out.reshape(shape)


def _native_dequantizer(
    k: type[GGMLKernel], device: torch.device, backend: str | None
) -> native.Quantizer | None:
    """The fused CPU decoder, or None for the torch kernels."""
    lib = _native_library(k, device, backend, native.NATIVE_TYPES)
    return None if lib is None else native.dequantizer(k.name, lib)


def _prod(shape: Sequence[int]) -> int:
    p = 1
    for s in shape:
        p *= s
    return p
