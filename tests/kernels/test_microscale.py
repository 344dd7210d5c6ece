"""NVFP4 / MXFP4 / MXFP8 arithmetic and layouts against their real consumers, byte for byte.

ComfyUI's side is comfy-kitchen's eager backend (what ComfyUI runs on CPU); compressed-tensors'
side is its NVFP4/MXFP4 packed compressors (CPU fallback). Every comparison is of raw bits.
"""

from __future__ import annotations

import pytest
import torch

from weightsmith.errors import QuantizationError
from weightsmith.kernels import microscale as ms
from weightsmith.kernels import microscale_layout as lay

ck = pytest.importorskip("comfy_kitchen.backends.eager.quantization")
ck_float = pytest.importorskip("comfy_kitchen.float_utils")

# Shapes: aligned, rows and columns off the 16/32/128 multiples, one column block, > 128 rows.
SHAPES = [(32, 64), (33, 48), (130, 80), (7, 40), (16, 16), (1, 100)]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, for exact comparison (NaN and -0.0 included)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def hostile_weight(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Random normal weights with an outlier, an all-zero block, a tiny block, subnormals and -0.0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    rows, cols = shape
    w[0, : min(16, cols)] = 0.0
    w[min(1, rows - 1), min(3, cols - 1)] = 7.5
    if rows > 2:
        w[2, : min(32, cols)] *= 1e-6
    if rows > 3:
        w[3, : min(8, cols)] = torch.tensor([1e-40, -1e-41, -0.0, 0.0, 3e-39, -2e-45, 1e-30, -1e-30])[
            : min(8, cols)
        ]
    if rows > 4:  # exact E2M1 ties after scaling are likely when a block holds only a few magnitudes
        w[4] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -6.0]).repeat(cols // 8 + 1)[:cols]
    return w


def comfy_pad(shape: tuple[int, int], multiple: int) -> bool:
    return lay.roundup(shape[0], multiple) != shape[0] or lay.roundup(shape[1], multiple) != shape[1]


# --- encodings ---------------------------------------------------------------------------------


def test_e2m1_encode_matches_comfy_kitchen_on_a_dense_grid_with_every_tie():
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.0, 1e-30, 1e-45, 5.999, 6.0001])
    x = torch.cat([torch.linspace(-6, 6, 24001), ties, -ties, torch.tensor([-0.0])])
    # comfy-kitchen saturates by clamping before encoding; E2M1 bit patterns as in its float_utils
    expected = ck_float._f32_to_floatx_unpacked(x.contiguous(), 2, 1)
    assert torch.equal(ms.e2m1_encode(x), expected)
    assert torch.equal(
        ms.e2m1_encode(torch.tensor([100.0, -1e9])), torch.tensor([0x7, 0xF], dtype=torch.uint8)
    )
    # compressed-tensors drops the sign of an exact -0.0 only
    assert ms.e2m1_encode(torch.tensor([-0.0, -0.1]), signed_zero=False).tolist() == [0x0, 0x8]


def test_e2m1_decode_is_the_inverse_on_all_16_codes():
    codes = torch.arange(16, dtype=torch.uint8)
    values = ms.e2m1_decode(codes)
    assert values.tolist() == list(ms.E2M1_VALUES) + [-v for v in ms.E2M1_VALUES]
    assert torch.equal(ms.e2m1_encode(values), codes)
    assert torch.equal(
        ck_float._floatx_unpacked_to_f32(codes, 2, 1).view(torch.int32), values.view(torch.int32)
    )


def test_e8m0_and_e4m3_match_comfy_kitchen():
    exps = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(bits(ms.e8m0_decode(exps[:255])), bits(ck_float.e8m0_to_f32(exps[:255])))
    assert ms.e8m0_decode(torch.tensor([0], dtype=torch.uint8), zero_is_zero=False).item() == 2.0**-127
    s = torch.tensor([0.0, 1e-9, 0.00195, 0.3, 447.9, 448.0, 460.0, 1e6])
    assert torch.equal(bits(ms.e4m3_encode(s)), bits(s.clamp(max=448.0).to(torch.float8_e4m3fn)))
    assert ms.e4m3_encode(torch.tensor([1e6])).float().item() == 448.0


# --- layouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (128, 4), (130, 5), (257, 12), (64, 3)])
def test_swizzle_matches_comfy_kitchen_to_blocked_and_inverts(shape):
    g = torch.Generator().manual_seed(1)
    scales = torch.randint(0, 255, shape, dtype=torch.uint8, generator=g)
    ours = lay.swizzle_128x4(scales)
    assert ours.shape == (lay.roundup(shape[0], 128), lay.roundup(shape[1], 4))
    assert torch.equal(ours, ck_float.to_blocked(scales, flatten=False))
    assert torch.equal(lay.unswizzle_128x4(ours, *shape), scales)
    assert torch.equal(ck_float.from_blocked(ours, *shape), scales)
    e4m3 = scales.view(torch.float8_e4m3fn)
    assert lay.swizzle_128x4(e4m3).dtype == torch.float8_e4m3fn
    assert torch.equal(bits(lay.unswizzle_128x4(lay.swizzle_128x4(e4m3), *shape)), bits(scales))


def test_unswizzle_refuses_a_wrong_size():
    with pytest.raises(QuantizationError) as e:
        lay.unswizzle_128x4(torch.zeros(100, dtype=torch.uint8), 3, 3)
    assert e.value.hint


def test_nibble_orders_match_both_consumers():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8

    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (6, 34), dtype=torch.uint8, generator=g)
    comfy = lay.pack_nibbles(codes, even_high=True)
    assert torch.equal(comfy, ck_float.pack_uint4(codes, hi_first=True))
    assert torch.equal(lay.unpack_nibbles(comfy, even_high=True), codes)
    ct = lay.pack_nibbles(codes, even_high=False)
    assert torch.equal(ct, pack_fp4_to_uint8(ms.e2m1_decode(codes)))
    assert torch.equal(lay.unpack_nibbles(ct, even_high=False), codes)
    assert torch.equal(bits(unpack_fp4_from_uint8(ct, 6, 34, torch.float32)), bits(ms.e2m1_decode(codes)))
    with pytest.raises(QuantizationError):
        lay.pack_nibbles(codes[:, :3], even_high=True)


def test_pad_to_pads_fp8_and_leaves_aligned_tensors_alone():
    x = torch.ones(3, 5).to(torch.float8_e4m3fn)
    p = lay.pad_to(x, 4, 8)
    assert p.shape == (4, 8) and p.dtype == torch.float8_e4m3fn
    raw = p.view(torch.uint8)
    assert int(raw[3].sum()) == 0 and int(raw[:, 5:].sum()) == 0 and int(raw[:3, :5].sum()) > 0
    y = torch.ones(4, 8)
    assert lay.pad_to(y, 4, 8) is y


# --- ComfyUI: NVFP4 and MXFP8 against comfy-kitchen's eager backend ------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_nvfp4_bytes_and_dequantization_equal_comfy_kitchen(shape):
    w = hostile_weight(shape, seed=shape[0] * 1000 + shape[1])
    q = ms.quantize_nvfp4(w)
    global_scale = torch.amax(w.abs()) / (448.0 * 6.0)
    data, block_scales = ck.quantize_nvfp4(w, global_scale, pad_16x=comfy_pad(shape, 16))
    packed, swizzled = lay.pack_nibbles(q.codes, even_high=True), lay.swizzle_128x4(q.scales)
    assert torch.equal(packed, data)
    assert torch.equal(bits(swizzled), bits(block_scales))
    assert torch.equal(bits(q.global_scale), bits(global_scale))
    theirs = ck.dequantize_nvfp4(packed, q.global_scale, swizzled, torch.float32)[: shape[0], : shape[1]]
    assert torch.equal(bits(theirs), bits(ms.dequantize_nvfp4(q)))


@pytest.mark.parametrize("shape", SHAPES)
def test_mxfp8_bytes_and_dequantization_equal_comfy_kitchen(shape):
    w = hostile_weight(shape, seed=shape[0] * 7 + shape[1])
    q = ms.quantize_mxfp8(w)
    data, block_scales = ck.quantize_mxfp8(w, pad_32x=comfy_pad(shape, 32))
    assert torch.equal(bits(q.values), bits(data))
    swizzled = lay.swizzle_128x4(q.exponents)
    assert torch.equal(bits(swizzled), bits(block_scales))
    theirs = ck.dequantize_mxfp8(q.values, swizzled.view(torch.float8_e8m0fnu), torch.float32)
    assert torch.equal(bits(theirs[: shape[0], : shape[1]]), bits(ms.dequantize_mx(q)))


def test_mxfp8_exponent_just_above_a_power_of_two_follows_comfy_kitchen():
    # amax / 448 a few ulps above 2**-12: float32 log2 rounds to -12, so the scale is 2**-12 and
    # the block's largest value saturates at 448 (the exact ceil would pick 2**-11).
    base = torch.tensor(448.0 * 2.0**-12)
    above = [(base.view(torch.int32) + k).view(torch.float32).item() for k in (0, 1, 2, 8, 64, 4096)]
    w = torch.zeros(len(above), 32)
    w[:, 0] = torch.tensor(above)
    w[:, 1:] = torch.linspace(-0.05, 0.05, 31)
    q = ms.quantize_mxfp8(w)
    data, block_scales = ck.quantize_mxfp8(w, pad_32x=True)
    assert torch.equal(bits(q.values), bits(data))
    assert torch.equal(bits(lay.swizzle_128x4(q.exponents)), bits(block_scales))


def test_degenerate_inputs_where_comfy_kitchen_writes_nan_dequantize_to_zero_there():
    zero = torch.zeros(16, 32)
    q = ms.quantize_nvfp4(zero)
    assert q.global_scale.item() == 1.0 and int(q.codes.sum()) == 0
    packed, swizzled = lay.pack_nibbles(q.codes, even_high=True), lay.swizzle_128x4(q.scales)
    assert int(ck.dequantize_nvfp4(packed, q.global_scale, swizzled, torch.float32).abs().sum()) == 0
    # a block too small for any E8M0 scale ComfyUI decodes (exponent 0 means 0 there)
    tiny = torch.full((32, 32), 1e-38)
    q8 = ms.quantize_mxfp8(tiny)
    assert int(q8.exponents.sum()) == 0 and int(bits(q8.values).sum()) == 0
    theirs = ck.dequantize_mxfp8(
        q8.values, lay.swizzle_128x4(q8.exponents).view(torch.float8_e8m0fnu), torch.float32
    )
    assert torch.equal(bits(theirs), bits(torch.zeros(32, 32)))


# --- compressed-tensors: NVFP4 and MXFP4 compressors ----------------------------------------------


@pytest.mark.parametrize("shape", [(32, 64), (33, 96), (130, 32), (5, 160)])
def test_nvfp4_compressed_tensors_packs_our_bytes_and_decompresses_to_our_weights(shape):
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    w = hostile_weight(shape, seed=shape[0] + shape[1])
    q = ms.quantize_nvfp4(w, convention="compressed-tensors", pad=1)
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    state = {
        "weight": w,
        "weight_scale": q.scales.to(torch.float32),
        "weight_global_scale": q.global_scale.reshape(1),
    }
    out = NVFP4PackedCompressor.compress(state, scheme)
    assert torch.equal(out["weight_packed"], lay.pack_nibbles(q.codes, even_high=False))
    assert torch.equal(bits(out["weight_scale"]), bits(q.scales))
    assert torch.equal(bits(out["weight_global_scale"]), bits(q.global_scale.reshape(1)))
    back = NVFP4PackedCompressor.decompress(dict(out), scheme)["weight"]
    assert torch.equal(bits(back), bits(ms.dequantize_nvfp4(q, torch.bfloat16)))


def test_nvfp4_compressed_tensors_scales_are_its_observers():
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    w = hostile_weight((48, 64), seed=5)
    q = ms.quantize_nvfp4(w, convention="compressed-tensors", pad=1)
    args = preset_name_to_scheme("NVFP4A16", ["Linear"]).weights
    blocks = w.reshape(48, 4, 16)
    gscale = generate_gparam(w.min(), w.max())
    assert torch.equal(bits(gscale), bits(q.global_scale.reshape(1)))
    scale, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), args, global_scale=gscale)
    assert torch.equal(bits(scale.to(torch.float8_e4m3fn)), bits(q.scales))


@pytest.mark.parametrize("shape", [(32, 64), (33, 96), (7, 32)])
def test_mxfp4_compressed_tensors_packs_our_bytes_and_decompresses_to_our_weights(shape):
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
    from compressed_tensors.quantization.utils.mxfp_utils import generate_mx_scales

    w = hostile_weight(shape, seed=shape[0] * 3 + shape[1])
    w[-1, :32] = 1e-20  # a block whose scale is below E8M0's range: exponent clamped to 0
    q = ms.quantize_mxfp4(w)
    scheme = preset_name_to_scheme("MXFP4A16", ["Linear"])
    out = MXFP4PackedCompressor.compress(
        {"weight": w, "weight_scale": ms.e8m0_decode(q.exponents, zero_is_zero=False)}, scheme
    )
    assert torch.equal(out["weight_packed"], lay.pack_nibbles(q.values, even_high=False))
    assert torch.equal(out["weight_scale"], q.exponents)
    back = MXFP4PackedCompressor.decompress(dict(out), scheme)["weight"]
    assert torch.equal(bits(back), bits(ms.dequantize_mx(q, torch.bfloat16)))
    # the exponents are its observer's wherever that is defined (non-zero blocks in range)
    amax = w.reshape(shape[0], -1, 32).abs().amax(-1)
    theirs = generate_mx_scales(amax)
    ok = (amax > 1e-30) & (theirs >= 0)
    assert torch.equal(theirs[ok].to(torch.uint8), q.exponents[ok])


# --- round trips and refusals ----------------------------------------------------------------------


def test_representable_weights_round_trip_exactly():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (8, 64), dtype=torch.uint8, generator=g)
    codes[:, ::32] = 0x7  # every block reaches +6, so its scale is exactly the power of two used
    powers = torch.ldexp(torch.ones(8, 2), torch.randint(-20, 10, (8, 2), generator=g)).repeat_interleave(
        32, dim=1
    )
    w = ms.e2m1_decode(codes) * powers + 0.0  # -0.0 codes become +0.0 (an exact -0.0 input encodes as 0 here)
    q4 = ms.quantize_mxfp4(w)
    assert torch.equal(bits(ms.dequantize_mx(q4)), bits(w))
    e4m3 = torch.randn(8, 64, generator=g).mul(100).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    e4m3[:, ::32] = 448.0
    w8 = e4m3 * powers
    assert torch.equal(bits(ms.dequantize_mx(ms.quantize_mxfp8(w8))), bits(w8))


@pytest.mark.parametrize("convention", ["comfy", "compressed-tensors"])
def test_nvfp4_error_is_within_half_a_step(convention):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(9)) * 0.05
    w[5, 7] = 7.5
    q = ms.quantize_nvfp4(w, convention=convention, pad=16)
    err = (ms.dequantize_nvfp4(q) - w).abs().reshape(64, 8, 16).amax(-1)
    s = q.scales.float()
    total = q.global_scale * s if convention == "comfy" else s / q.global_scale
    # the largest E2M1 step is 2 (between 4 and 6); e4m3 rounding of the scale adds at most 1/16
    assert bool((err <= total * 1.0 + 1e-30 + w.reshape(64, 8, 16).abs().amax(-1) / 16).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    "quantize", [ms.quantize_nvfp4, ms.quantize_mxfp8, ms.quantize_mxfp4], ids=["nvfp4", "mxfp8", "mxfp4"]
)
def test_non_finite_weights_are_refused_with_what_to_do(quantize, bad):
    w = torch.randn(4, 32)
    w[1, 5] = bad
    with pytest.raises(QuantizationError) as e:
        quantize(w, name="blocks.0.attn1.to_q.weight")
    assert "blocks.0.attn1.to_q.weight" in str(e.value) and "NaN or Inf" in str(e.value)
    assert "--keep" in e.value.hint


def test_widths_no_block_divides_are_refused_where_the_format_cannot_pad():
    w = torch.randn(4, 40)
    with pytest.raises(QuantizationError, match="blocks of 32") as e:
        ms.quantize_mxfp4(w)
    assert e.value.hint
    with pytest.raises(QuantizationError, match="blocks of 16"):
        ms.quantize_nvfp4(torch.randn(4, 24), convention="compressed-tensors", pad=1)
    with pytest.raises(QuantizationError, match="2-D float"):
        ms.quantize_mxfp8(torch.randn(2, 3, 32))
    with pytest.raises(QuantizationError, match="convention"):
        ms.quantize_nvfp4(torch.randn(4, 32), convention="other")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here; the arithmetic claims device independence"
)
def test_cuda_gives_the_cpu_bytes():
    w = hostile_weight((130, 96), seed=11)
    for quantize in (ms.quantize_nvfp4, ms.quantize_mxfp8, ms.quantize_mxfp4):
        cpu, gpu = quantize(w), quantize(w.cuda())
        for a, b in zip(
            (cpu.codes, cpu.scales) if hasattr(cpu, "codes") else (cpu.values, cpu.exponents),
            (gpu.codes, gpu.scales) if hasattr(gpu, "codes") else (gpu.values, gpu.exponents),
        ):
            assert torch.equal(bits(a), bits(b.cpu()))
    q = ms.quantize_nvfp4(w, convention="compressed-tensors", pad=1)
    assert torch.equal(
        bits(q.codes), bits(ms.quantize_nvfp4(w.cuda(), convention="compressed-tensors", pad=1).codes.cpu())
    )
