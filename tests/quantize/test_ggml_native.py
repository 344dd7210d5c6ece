"""The fused CPU kernels (weightsmith.kernels.ggml.native): same bytes as the torch kernels, a build
that falls back cleanly, and the lane widths of other CPUs.

Golden-byte equality with ggml is in test_ggml_kernels.py (parametrised over both backends)."""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from weightsmith.errors import QuantizationError
from weightsmith.kernels.ggml import dequantize, get_kernel, native, quantize
from weightsmith.kernels.ggml.native_arrays import f16_array

TYPES = list(native.NATIVE_TYPES)


def _hard_cases(cols: int, seed: int) -> torch.Tensor:
    """Rows that exercise every branch: outliers, zeros, constants, ties, subnormal and huge scales."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randn(cols, generator=g) * 0.02 for _ in range(6)]
    rows[1][torch.rand(cols, generator=g) < 0.01] *= 40  # outliers
    rows[2][::3] = 0  # sparse
    rows.append(torch.zeros(cols))
    rows.append(torch.full((cols,), -0.75))
    rows.append(torch.randint(-8, 9, (cols,), generator=g).float() * 0.25)  # ties on a grid
    rows.append(torch.randn(cols, generator=g) * 1e-38)  # subnormal scales
    rows.append(torch.randn(cols, generator=g) * 3e4)
    pm = torch.randn(cols, generator=g).abs() * 0.1
    pm[1::2] = -pm[0::2]  # +a and -a in every block: first-occurrence rules
    rows.append(pm)
    half = torch.randn(cols, generator=g)
    half[: cols // 2] = 0  # zero sub-blocks next to live ones (a scale that rounds to 0)
    rows.append(half)
    rows.append(torch.rand(cols, generator=g) + 0.5)  # all positive: min clamps to 0
    return torch.stack(rows)


@pytest.fixture(scope="module")
def lib():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the torch kernels are used")
    lib = native.library()
    assert lib is not None, native.info()  # a machine with a compiler must build it
    return lib


def _imatrix(cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    im = torch.rand(cols, generator=g) * 2 + 0.01
    im[::7] = 0  # unused columns happen in real imatrix files
    return im


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_native_equals_torch(lib, qtype: str, with_imatrix: bool) -> None:
    for cols, seed in [(512, 0), (768, 1), (256, 2)]:
        x = _hard_cases(cols, seed)
        im = _imatrix(cols, seed) if with_imatrix else None
        got = quantize(x, qtype, im, backend="native")
        assert torch.equal(got, quantize(x, qtype, im, backend="torch")), cols


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_partial_tiles_and_row_chunks(
    lib, qtype: str, with_imatrix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block counts that leave a partial SIMD tile, one row per call, and several worker threads."""
    k = get_kernel(qtype)
    x = _hard_cases(768, 5)
    im = _imatrix(768, 5) if with_imatrix else None
    whole = quantize(x, qtype, im, backend="torch")
    head = None if im is None else im[:256]
    one = quantize(x[:1, :256], qtype, head, backend="native")
    assert torch.equal(one, quantize(x[:1, :256], qtype, head, backend="torch"))
    assert torch.equal(quantize(x, qtype, im, backend="native"), whole)
    monkeypatch.setattr(k, "chunk_elems", 1)
    monkeypatch.setattr(native, "rows_per_chunk", lambda name, n: 1)  # the C kernels' chunking
    assert torch.equal(quantize(x, qtype, im, backend="native"), whole)


@pytest.mark.parametrize("qtype", TYPES)
def test_native_dequantize_equals_torch(lib, qtype: str) -> None:
    """On real blocks and on random bytes (NaN/inf scales included), in row chunks."""
    k = get_kernel(qtype)
    x = _hard_cases(768, 4)
    g = torch.Generator().manual_seed(2)
    noise = torch.randint(0, 256, (9, 768 // k.block_size * k.type_size), dtype=torch.uint8, generator=g)
    for data in (quantize(x, qtype, backend="torch"), noise):
        shape = (data.shape[0], 768)
        got = dequantize(data, qtype, shape, backend="native")
        assert np.array_equal(
            got.numpy(), dequantize(data, qtype, shape, backend="torch").numpy(), equal_nan=True
        )


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q5_0", "Q4_K", "Q3_K", "Q6_K"])
def test_non_finite_raises(lib, qtype: str) -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(5, 512)
        x[3, 300] = bad
        with pytest.raises(QuantizationError, match="NaN or infinite"):
            quantize(x, qtype, backend="native")
        with pytest.raises(QuantizationError, match="NaN or infinite"):
            quantize(x, qtype, torch.ones(512), backend="native")


def test_backend_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QuantizationError, match="unknown GGUF kernel backend 'fast'"):
        quantize(torch.zeros(1, 32), "Q8_0", backend="fast")
    monkeypatch.setenv("WEIGHTSMITH_GGML_BACKEND", "Torch")
    assert native.backend_setting() == "torch"
    assert native.backend_setting("native") == "native"


def test_without_compiler_falls_back_or_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native, "_compiler", lambda: None)
    info = native.build(tmp_path)
    assert info.path is None and "no C compiler" in (info.error or "")
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_info", info)
    x = _hard_cases(256, 3)
    assert torch.equal(quantize(x, "Q4_K"), quantize(x, "Q4_K", backend="torch"))  # auto: torch kernels
    with pytest.raises(QuantizationError, match="native GGUF kernels cannot be used: no C compiler"):
        quantize(x, "Q4_K", backend="native")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("int ws_abi_version(void) { return }\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    out = tmp_path / "out"
    info = native.build(out)
    assert info.path is None and "failed" in (info.error or "")
    assert list(out.iterdir()) == []


def test_build_is_cached(lib) -> None:
    first = native.info()
    assert first is not None and first.path is not None and "-ffp-contract=off" in first.flags
    t0 = time.perf_counter()
    again = native.build()
    assert again.path == first.path and time.perf_counter() - t0 < 2.0


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_a_remembered_build_starts_without_the_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Start-up does not run the compiler once a build with the same source, compiler and flags
    exists; another source (or flags) asks the compiler again."""
    src = tmp_path / "k.c"
    src.write_text("int ws_abi_version(void) { return 0; }\n")
    monkeypatch.setattr(native, "SOURCE", src)
    info = native.build(tmp_path / "out", march=False)
    assert info.path is not None, info.error

    def compiler_runs(*args: object, **kwargs: object) -> None:
        raise AssertionError("the compiler ran")

    monkeypatch.setattr(native.subprocess, "run", compiler_runs)
    again = native.build(tmp_path / "out", march=False)
    assert (again.path, again.flags) == (info.path, info.flags)
    src.write_text("int ws_abi_version(void) { return 1; }\n")
    with pytest.raises(AssertionError, match="the compiler ran"):
        native.build(tmp_path / "out", march=False)
    monkeypatch.setenv("WEIGHTSMITH_NATIVE_CFLAGS", "-O1")
    src.write_text("int ws_abi_version(void) { return 0; }\n")
    with pytest.raises(AssertionError, match="the compiler ran"):
        native.build(tmp_path / "out", march=False)


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


X86_AVX2 = platform.machine() in ("x86_64", "AMD64") and _has_avx2()
VARIANTS = [
    # this machine may build 16-lane (AVX-512) code; AVX2 machines get 8 lanes
    pytest.param(["-march=x86-64-v3", "-DNL=8", "-O2"], False, id="avx2-8-lanes",
                 marks=pytest.mark.skipif(not X86_AVX2, reason="x86 with AVX2")),
    # compilers without _Float16 (GCC < 12 on x86) take the integer fp16 conversions
    pytest.param(["-DWS_SOFT_FP16", "-O2"], True, id="soft-fp16"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "march"), VARIANTS)
def test_other_builds_give_the_same_bytes(lib, tmp_path: Path, flags: list[str], march: bool) -> None:
    """Variants of the C build that other machines get, compared with the torch kernels on every type."""
    info = native.build(tmp_path, extra_flags=flags, march=march)
    assert info.path is not None, info.error
    variant = native.load(info.path)
    x = _hard_cases(768, 11)
    for qtype in TYPES:
        for im in (None, _imatrix(768, 11)) if qtype in native.IMATRIX_TYPES else (None,):
            run = native.quantizer(qtype, variant, im)
            assert run is not None
            k = get_kernel(qtype)
            out = torch.empty((x.shape[0], x.shape[1] // k.block_size * k.type_size), dtype=torch.uint8)
            assert run(x, out)
            assert np.array_equal(out.numpy(), quantize(x, qtype, im, backend="torch").numpy()), qtype
            back = torch.empty_like(x)
            assert native.dequantizer(qtype, variant)(out, back)
            assert np.array_equal(back.numpy(), dequantize(out, qtype, x.shape, backend="torch").numpy()), (
                qtype
            )
    # F16 outputs of the numpy path: every finite float32 kind (ties, subnormals, overflow to inf)
    bits = np.random.default_rng(3).integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    f = bits.view(np.float32)
    f = f[np.isfinite(f)]
    half, amax, nan = f16_array(f, variant)
    want = torch.from_numpy(f.copy()).to(torch.float16).view(torch.int16).numpy()
    assert np.array_equal(half.view(np.int16), want) and amax == np.abs(f).max() and not nan


@pytest.mark.skipif(not hasattr(__import__("os"), "getuid") or shutil.which("cc") is None, reason="POSIX, cc")
def test_world_writable_folder_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    info = native.build(shared)
    assert info.path is None and "not private" in (info.error or "")
