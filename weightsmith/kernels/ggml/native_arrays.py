"""The fused C kernels on numpy arrays, without torch: what a GGUF job on the CPU runs when its
whole pipeline can stay in numpy (``weightsmith.quantize.gguf.arrays``).

Same chunking, worker threads and energy summation order as :func:`weightsmith.kernels.ggml.quantize`
with the native backend, so the bytes and the measured SQNR are the same as the torch path's.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from weightsmith.kernels.ggml import native

_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads (one per size, never shut down under a caller):
    starting threads per call cost ~5 ms, which dominated the many small calls a GGUF run makes
    (measured: 8 of 63 s on Wan 1.3B)."""
    with _pool_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="ggml-kernels")
        return pool


def thread_budget() -> int:
    """Worker threads without torch to ask: ``OMP_NUM_THREADS`` (which torch's default follows),
    else the CPUs this process may run on."""
    setting = os.environ.get("OMP_NUM_THREADS", "")
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def quantize_array(
    x: np.ndarray,
    name: str,
    block_size: int,
    type_size: int,
    lib: object,
    workers: int | None = None,
    non_finite: Exception | None = None,
) -> tuple[np.ndarray, float, float]:
    """(uint8 blocks of shape ``(rows, n // block_size * type_size)``, signal energy, noise energy)
    of float32 rows ``x`` ``(rows, n)`` quantized to ``name`` by the C kernels, measured as they go.
    NaN/inf input (the kernels tell, from their block scales) raises ``non_finite`` (default: the
    kernels' own error)."""
    fused = native.plain_kernel(name, lib)  # type: ignore[arg-type]
    if fused is None:
        raise ValueError(f"no fused kernel for {name}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.empty((rows, n // block_size * type_size), dtype=np.uint8)
    step = native.rows_per_chunk(name, n)
    starts = range(0, rows, step)
    energy = np.zeros((len(starts), 2), dtype=np.float64)
    # Addresses taken once: numpy's ``.ctypes`` and slicing per chunk cost ~0.1 CPU s per worker
    # thread on the speed bench's ~1,500 chunks. ``x``, ``out`` and ``energy`` are C-contiguous
    # arrays of the dtypes the kernel takes (made or checked just above) and outlive the calls.
    x0, out0, e0 = x.ctypes.data, out.ctypes.data, energy.ctypes.data
    x_row, out_row = n * 4, out.shape[1]

    def run(i: int) -> bool:  # ctypes releases the GIL during the call
        r0 = starts[i]
        count = min(step, rows - r0) * n
        return fused(x0 + r0 * x_row, out0 + r0 * out_row, count, e0 + 16 * i) == 0

    budget = workers or thread_budget()
    if min(budget, len(starts)) > 1:
        ok = all(executor(budget).map(run, range(len(starts))))
    else:
        ok = all([run(i) for i in range(len(starts))])
    if not ok:
        raise non_finite or native.non_finite_error(name)
    signal, noise = native.chunk_totals(energy.tolist())
    return out, signal, noise


def f16_array(x: np.ndarray, lib: object) -> tuple[np.ndarray, float, bool]:
    """(float16 array, largest |x|, any NaN) of float32 ``x`` in one pass of the C library: numpy's
    own cast is a scalar loop (~0.2 CPU s for the 26 M F16 weights of the speed bench's checkpoint,
    while the kernels' threads wait); the bits are torch's (nearest even, overflow to inf)."""
    import ctypes

    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.float16)
    amax = ctypes.c_float(0.0)
    nan = lib.ws_f32_to_f16(x.ctypes.data, out.ctypes.data, x.size, ctypes.byref(amax))  # type: ignore[attr-defined]
    return out, float(amax.value), bool(nan)
