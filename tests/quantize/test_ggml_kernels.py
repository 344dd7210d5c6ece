"""The torch GGUF kernels against ggml's reference quantizer (golden bytes) and gguf's numpy code."""

from __future__ import annotations

import functools
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from weightsmith.errors import QuantizationError
from weightsmith.kernels.ggml import byte_shape, dequantize, get_kernel, native, quantize, registered_types
from weightsmith.kernels.ggml.native import IMATRIX_TYPES, NATIVE_TYPES

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "ggml_golden.npz"
QUANT_TYPES = [
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
]
ALL_TYPES = ["F32", "F16", "BF16", *QUANT_TYPES]
GQT = gguf.GGMLQuantizationType


@functools.lru_cache(maxsize=1)
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def cases() -> list[str]:
    return [k[2:] for k in golden() if k.startswith("x/")]


@functools.cache
def ours(qtype: str, with_imatrix: bool, backend: str = "auto") -> dict[str, np.ndarray]:
    """Our bytes for every golden case, from one batched call (rows are independent)."""
    g = golden()
    names = cases()
    x = torch.from_numpy(np.concatenate([g[f"x/{c}"] for c in names]))
    im = torch.from_numpy(g["imatrix"]) if with_imatrix else None
    q = quantize(x, qtype, im, backend=backend).numpy()
    rows = g[f"x/{names[0]}"].shape[0]
    return {c: q[i * rows : (i + 1) * rows] for i, c in enumerate(names)}


# ------------------------------------------------------------------------------ golden bytes


# the fused CPU kernels (native.py) and the torch kernels each, with and without importance weights
BACKENDS = [
    pytest.param(False, "torch", id="plain-torch"),
    pytest.param(False, "native", id="plain-native"),
    pytest.param(True, "torch", id="imatrix-torch"),
    pytest.param(True, "native", id="imatrix-native"),
]


def _need_backend(backend: str) -> None:
    if backend == "native" and native.library() is None:
        pytest.skip(f"no native kernels here: {native.info()}")


@pytest.mark.parametrize("case", cases())
@pytest.mark.parametrize(("with_imatrix", "backend"), BACKENDS)
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_bytes_equal_ggml(qtype: str, with_imatrix: bool, backend: str, case: str) -> None:
    if backend == "native" and qtype not in (IMATRIX_TYPES if with_imatrix else NATIVE_TYPES):
        pytest.skip(f"{qtype} has no fused CPU kernel")
    _need_backend(backend)
    expected = golden()[f"{'qi' if with_imatrix else 'q'}/{qtype}/{case}"]
    got = ours(qtype, with_imatrix, backend)[case]
    assert got.dtype == np.uint8 and got.shape == expected.shape
    if not np.array_equal(got, expected):
        k = get_kernel(qtype)
        diff = (got != expected).reshape(-1, k.type_size).any(1)
        pytest.fail(f"{qtype} {case}: {int(diff.sum())} of {diff.size} blocks differ from ggml")


# ------------------------------------------------------------------------------ dequantization


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_dequantize_equals_gguf(qtype: str, with_imatrix: bool) -> None:
    """Exact float32 equality with gguf's numpy dequantizer, on our bytes and on ggml's."""
    pref = "qi" if with_imatrix else "q"
    for c in cases():
        for data in (ours(qtype, with_imatrix)[c], golden()[f"{pref}/{qtype}/{c}"]):
            shape = golden()[f"x/{c}"].shape
            ref = gguf.quants.dequantize(data, GQT[qtype])
            got = dequantize(torch.from_numpy(data), qtype, shape)
            assert got.dtype == torch.float32 and tuple(got.shape) == shape
            assert np.array_equal(got.numpy(), ref), f"{qtype} {c}"


def _random(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 0.02
    x[torch.rand(rows, cols, generator=g) < 1e-3] *= 20
    return x


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on inf/NaN scales
@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_dequantize_random_bytes_equals_gguf(qtype: str, backend: str) -> None:
    """Every bit pattern decodes like gguf (finite fp16 scales; NaN payloads compare by position)."""
    _need_backend(backend)
    k = get_kernel(qtype)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (64, 4 * k.type_size), dtype=torch.uint8, generator=g).numpy()
    got = dequantize(torch.from_numpy(data), qtype, (64, 4 * k.block_size), backend=backend).numpy()
    ref = gguf.quants.dequantize(data, GQT[qtype])
    assert np.array_equal(got, ref, equal_nan=True)


# ------------------------------------------------------------------------------ float types


def test_f32_roundtrip() -> None:
    x = _random(4, 96)
    b = quantize(x, "F32")
    assert b.dtype == torch.uint8 and tuple(b.shape) == (4, 384)
    assert np.array_equal(b.numpy(), x.numpy().view(np.uint8))
    assert torch.equal(dequantize(b, "F32", x.shape), x)


def _special_values() -> torch.Tensor:
    bits = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0x7F800000, 0xFF800000, 0x00000001, 0x80000001,
                     0x80000000, 0x3F808000, 0x3F818000, 0x477FF000, 0x38000000, 0x33800000, 0x7F7FFFFF, 0x00018000, 0x807F8000],
                    dtype=np.uint32)  # fmt: skip
    return torch.from_numpy(np.concatenate([bits.view(np.float32), _random(1, 50).numpy()[0]]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warning
def test_f16_matches_numpy() -> None:
    """Round to nearest even, overflow to inf, subnormals kept: numpy's astype(float16)."""
    x = torch.cat([_special_values(), _random(1, 1000)[0] * 1000])
    b = quantize(x, "F16").numpy()
    ref = x.numpy().astype(np.float16)
    nan = np.isnan(ref)  # NaN payloads differ between converters (ggml's own builds disagree too)
    assert np.array_equal(b.view(np.float16)[~nan].view(np.uint16), ref[~nan].view(np.uint16))
    assert np.isnan(b.view(np.float16)[nan]).all()
    back = dequantize(torch.from_numpy(b), "F16", x.shape)
    assert np.array_equal(back.numpy(), gguf.quants.dequantize(b, GQT.F16), equal_nan=True)


def test_bf16_matches_gguf() -> None:
    """Round to nearest even, NaN kept quiet with its sign and payload (ggml_compute_fp32_to_bf16)."""
    x = torch.cat([_special_values(), _random(1, 1000)[0]])
    b = quantize(x, "BF16").numpy()
    assert np.array_equal(b, gguf.quants.quantize(x.numpy(), GQT.BF16))
    back = dequantize(torch.from_numpy(b), "BF16", x.shape)
    assert np.array_equal(back.numpy().view(np.uint32), gguf.quants.dequantize(b, GQT.BF16).view(np.uint32))


# ------------------------------------------------------------------------------ more data, more shapes


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"])
def test_matches_gguf_numpy_quantizer(qtype: str, backend: str) -> None:
    """gguf's numpy quantizers are byte-identical to ggml for these types: compare on more data."""
    x = _random(48, 1024, seed=3)
    x[5] = 0
    x[6, :64] = 1.25
    x[7, 100:140] = 3e-39  # subnormal scale: 1/d overflows
    _need_backend(backend)
    got = quantize(x, qtype, backend=backend).numpy()
    with np.errstate(all="ignore"):
        assert np.array_equal(got, gguf.quants.quantize(x.numpy(), GQT[qtype]))


REL_RMSE = {"Q8_0": 0.008, "Q6_K": 0.025, "Q5_K": 0.05, "Q5_1": 0.06, "Q5_0": 0.07, "Q4_K": 0.09, "Q4_1": 0.12,
            "IQ4_NL": 0.11, "IQ4_XS": 0.11, "Q4_0": 0.11, "Q3_K": 0.2, "Q2_K": 0.4}  # fmt: skip


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_roundtrip_error_is_small(qtype: str, with_imatrix: bool) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 512, generator=g)
    im = torch.rand(512, generator=g) + 0.5 if with_imatrix else None
    y = dequantize(quantize(x, qtype, im), qtype, x.shape)
    rel = float((y - x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert rel < REL_RMSE[qtype], rel


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K", "IQ4_XS", "F16"])
def test_shapes_flatten_rows(qtype: str) -> None:
    x = _random(6, 512, seed=5)
    flat = quantize(x, qtype)
    for shape in [(2, 3, 512), (1, 6, 1, 512)]:
        q = quantize(x.reshape(shape), qtype)
        assert tuple(q.shape) == byte_shape(shape, qtype) == gguf.quant_shape_to_byte_shape(shape, GQT[qtype])
        assert torch.equal(q.reshape(flat.shape), flat)
        assert torch.equal(dequantize(q, qtype, shape), dequantize(flat, qtype, x.shape).reshape(shape))
    one = quantize(x[0], qtype)
    assert tuple(one.shape) == (flat.shape[1],) and torch.equal(one, flat[0])


@pytest.mark.parametrize("qtype", ["Q5_1", "Q3_K", "Q4_K", "IQ4_NL"])
def test_chunking_and_dtype_do_not_change_bytes(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _random(24, 768, seed=9).to(torch.bfloat16)
    im = torch.rand(768) + 0.1
    whole = quantize(x, qtype, im)
    monkeypatch.setattr(get_kernel(qtype), "chunk_elems", 1)  # one row per call
    monkeypatch.setattr(native, "rows_per_chunk", lambda name, n: 1)  # also in the C kernels
    assert torch.equal(quantize(x, qtype, im), whole)
    assert torch.equal(quantize(x.float(), qtype, im), whole)


# ------------------------------------------------------------------------------ errors and registry


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "IQ4_XS"])
def test_bad_row_length_raises(qtype: str) -> None:
    with pytest.raises(QuantizationError, match="not a multiple of the .* block size"):
        quantize(torch.zeros(4, 100), qtype)


def test_bad_inputs_raise() -> None:
    with pytest.raises(QuantizationError, match="importance matrix has 10 weights"):
        quantize(torch.zeros(2, 256), "Q4_K", torch.ones(10))
    for qtype in ["Q8_0", "Q4_0", "Q4_1", "Q5_1", "Q4_K", "IQ4_NL"]:
        for bad in (float("nan"), float("inf"), -float("inf")):
            x = torch.zeros(3, 256)
            x[1, 77] = bad
            with pytest.raises(QuantizationError, match="NaN or infinite"):
                quantize(x, qtype)
            with pytest.raises(QuantizationError, match="NaN or infinite"):
                quantize(x, qtype, torch.ones(256))
    with pytest.raises(QuantizationError, match="no kernel"):
        quantize(torch.zeros(2, 32), "Q1_5")
    with pytest.raises(QuantizationError, match="needs"):
        dequantize(torch.zeros(10, dtype=torch.uint8), "Q4_0", (1, 32))
    with pytest.raises(QuantizationError, match="float dtype"):
        quantize(torch.zeros(2, 32, dtype=torch.int32), "Q8_0")


def test_registry_matches_gguf_sizes() -> None:
    assert set(registered_types()) == set(ALL_TYPES)
    for name in ALL_TYPES:
        k = get_kernel(name)
        assert get_kernel(name.lower()) is k is get_kernel(int(GQT[name])) is get_kernel(GQT[name])
        assert (k.block_size, k.type_size) == gguf.GGML_QUANT_SIZES[GQT[name]]
        assert k.type_id == int(GQT[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_cuda_matches_cpu(qtype: str, with_imatrix: bool) -> None:
    g = golden()
    x = torch.from_numpy(np.concatenate([g[f"x/{c}"] for c in cases()]))
    im = torch.from_numpy(g["imatrix"]) if with_imatrix else None
    q = quantize(x.cuda(), qtype, None if im is None else im.cuda())
    assert q.device.type == "cuda"
    assert torch.equal(q.cpu(), quantize(x, qtype, im))
    y = dequantize(q, qtype, x.shape)
    assert y.device.type == "cuda" and torch.equal(y.cpu(), dequantize(q.cpu(), qtype, x.shape))


def test_non_contiguous_input_and_ignored_imatrix() -> None:
    x = _random(64, 512, seed=4)
    xt = x.t().contiguous().t()  # same values, column-major storage
    assert not xt.is_contiguous()
    for qtype in ["Q8_0", "Q4_K", "BF16"]:
        assert torch.equal(quantize(xt, qtype), quantize(x, qtype))
    im = torch.rand(512) + 0.1
    for qtype in ["F32", "F16", "BF16", "Q8_0"]:  # ggml ignores importance weights for these
        assert torch.equal(quantize(x, qtype, im), quantize(x, qtype))
    assert not torch.equal(quantize(x, "Q4_0", im), quantize(x, "Q4_0"))


def test_torch_thread_setting_is_restored() -> None:
    before = torch.get_num_threads()
    x = _random(64, 1024, seed=6)
    q = quantize(x, "Q4_0")
    dequantize(q, "Q4_0", x.shape)
    assert torch.get_num_threads() == before
