"""Optional: compare the torch kernels with a ggml shared library directly, on more and odder data.

Skipped unless ``WEIGHTSMITH_LIBGGML`` names a ``libggml-base.so`` built without floating-point
contraction (for example llama-cpp-python's, or ggml built with ``-DCMAKE_C_FLAGS=-ffp-contract=off``);
its ``ggml_quantize_chunk`` is the reference. The golden-vector tests cover the same ground with
stored bytes; this one adds distributions (subnormal scales, exact ties, imatrix zeros, ...).

Data whose products overflow float32 (|x| around 1e17 and up) is left out: there the IQ4 types
depend on ggml's version (``best_index_int8`` maps NaN to the lowest level since 2026's rewrite,
to the highest before; the two agree on every finite float).
"""

from __future__ import annotations

import ctypes
import os

import gguf
import numpy as np
import pytest
import torch

from weightsmith.kernels.ggml import quantize

LIB = os.environ.get("WEIGHTSMITH_LIBGGML")
pytestmark = pytest.mark.skipif(not LIB, reason="set WEIGHTSMITH_LIBGGML=/path/to/libggml-base.so to run")
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
ROWS, COLS = 16, 1024


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIB)
    fp = ctypes.POINTER(ctypes.c_float)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = (ctypes.c_int, fp, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, fp)  # fmt: skip
    lib.ggml_quantize_init.argtypes = (ctypes.c_int,)
    return lib


def _ggml(x: np.ndarray, qtype: str, imatrix: np.ndarray | None) -> np.ndarray:
    lib = _lib()
    t = gguf.GGMLQuantizationType[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(gguf.quant_shape_to_byte_shape(x.shape, t), dtype=np.uint8)
    fp = ctypes.POINTER(ctypes.c_float)
    qw = imatrix.ctypes.data_as(fp) if imatrix is not None else ctypes.cast(0, fp)
    lib.ggml_quantize_init(int(t))
    lib.ggml_quantize_chunk(int(t), x.ctypes.data_as(fp), out.ctypes.data_as(ctypes.c_void_p), 0, x.shape[0],
                            x.shape[1], qw)  # fmt: skip
    return out


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    n = (ROWS, COLS)
    d = {
        "normal": rng.standard_normal(n) * 0.02,
        "student_t": rng.standard_t(2.0, n) * 0.02,
        "uniform": rng.uniform(-1, 1, n),
        "integers": rng.integers(-3, 4, n),
        "eighths": rng.integers(-64, 64, n) / 8,
        "fp16_grid": (rng.standard_normal(n) * 0.02).astype(np.float16),
        "row_scales": rng.standard_normal(n) * np.exp(rng.uniform(-30, 10, (ROWS, 1))),
        "offset": rng.standard_normal(n) * 0.01 + rng.uniform(-1, 1, (ROWS, 1)),
        "subnormal": rng.standard_normal(n) * 1e-38,
        "large": rng.standard_normal(n) * 1e10,  # x**3 * 127 * 32 stays below FLT_MAX
    }
    sparse = rng.standard_normal(n)
    sparse[rng.random(n) < 0.97] = 0
    d["sparse"] = sparse
    mixed = rng.standard_normal(n) * 0.05
    mixed.reshape(ROWS, -1, 16)[:, ::3] = 0
    mixed.reshape(ROWS, -1, 16)[:, 1::5] *= 1e-7
    d["mixed_zero_blocks"] = mixed
    return {k: np.asarray(v, dtype=np.float32) for k, v in d.items()}


IMATRICES = {
    "none": None,
    "random": (np.random.default_rng(12).random(COLS) * 4 + 0.05).astype(np.float32),
    "with_zeros": np.where(np.random.default_rng(13).random(COLS) < 0.2, 0, 3.0).astype(np.float32),
}


@pytest.mark.parametrize("imatrix", list(IMATRICES))
@pytest.mark.parametrize("qtype", TYPES)
def test_bytes_equal_libggml(qtype: str, imatrix: str) -> None:
    im = IMATRICES[imatrix]
    bad = []
    for name, x in _datasets().items():
        ours = quantize(torch.from_numpy(x), qtype, None if im is None else torch.from_numpy(im)).numpy()
        if not np.array_equal(ours, _ggml(x, qtype, im)):
            bad.append(name)
    assert not bad, f"{qtype} imatrix={imatrix}: bytes differ from ggml on {bad}"
