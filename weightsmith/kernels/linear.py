"""INT8, FP8, INT4 and FP4 (NVFP4, MXFP4) weight schemes for Linear layers: the numbers, independent of any file layout.

A ``LinearScheme`` says how one 2-D weight becomes integers (or fp8 values) and scales; the
kernels here quantize and dequantize it in torch, on whatever device the tensor is on, with the
same result on CPU and CUDA (only IEEE-exact operations: abs-max, one division, round-half-even,
clamp, a cast). The layouts that store the result (compressed-tensors, ComfyUI's comfy_quant and
its legacy scaled fp8) live in ``weightsmith.quantize.linear.formats`` (writing) and
``weightsmith.io.quantized`` (reading).
Adding a scheme is registering one more ``LinearScheme``.

Conventions (chosen so that compressed-tensors' own compressor, given our scales, produces our
integers, and its decompressor our weights):

* symmetric int: ``scale = absmax / qmax`` with ``qmax = 2**(bits-1) - 1`` (int8: 127, int4: 7),
  ``q = clamp(round(w / scale), -qmax, qmax)``;
* asymmetric int (groups): the range is widened to include 0, ``scale = (max - min) / (2**bits - 1)``,
  ``zp = clamp(round(qmin - min / scale), qmin, qmax)``, ``q = clamp(round(w / scale + zp), qmin, qmax)``
  with ``qmin, qmax = -2**(bits-1), 2**(bits-1) - 1``;
* fp8: ``scale = absmax / finfo(fp8).max``, ``q = clamp(w / scale, -max, max).to(fp8)``;
* an all-zero row or group gets scale 1 (no division by zero);
* scales are float32; dequantization is ``(q - zp) * scale`` computed in the scale's dtype;
* fp4 (kind ``"fp4"``: ``nvfp4`` blocks of 16, ``mxfp4`` blocks of 32): the arithmetic of
  ``weightsmith.kernels.microscale`` in compressed-tensors' convention, codes packed two per byte
  (even column in the low nibble), so its compressors read and write our very bytes.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from weightsmith.errors import QuantizationError, UsageError
from weightsmith.kernels.microscale import (
    MX,
    MX_BLOCK,
    NVFP4,
    NVFP4_BLOCK,
    dequantize_mx,
    dequantize_nvfp4,
    quantize_mxfp4,
    quantize_nvfp4,
)
from weightsmith.kernels.microscale_comfy import comfy_values, dequantize_comfy, quantize_comfy
from weightsmith.kernels.microscale_layout import pack_nibbles, unpack_nibbles

GRANULARITIES = ("channel", "tensor", "group")
# Activation quantization an artifact may record: dynamic per token (W8A8 int8/fp8), or nvfp4
# (W4A4: blocks of 16 under a calibrated static global scale).
ACTIVATIONS = ("int8", "fp8", "nvfp4")
# Where a QuantizedWeight's numbers are laid out: compressed-tensors' (unpadded, row-major scales,
# fp4 even column in the low nibble) or ComfyUI's microscaled one (``microscale_comfy``).
LAYOUTS = ("compressed-tensors", "comfy")


@dataclass(frozen=True)
class LinearScheme:
    """How one Linear weight is quantized (see the module docstring for the arithmetic)."""

    name: str
    kind: str  # "int", "float" (fp8) or "fp4" (E2M1 in blocks: nvfp4, mxfp4)
    bits: int
    granularity: str  # "channel" (one scale per output row), "tensor" or "group"
    group_size: int | None = None
    symmetric: bool = True
    fp8_dtype: torch.dtype | None = None
    formats: tuple[str, ...] = ("compressed-tensors",)
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("int", "float", "fp4") or self.granularity not in GRANULARITIES:
            raise ValueError(f"bad scheme {self}")
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError(f"{self.name}: group_size goes with granularity 'group'")
        if self.kind == "float" and (self.fp8_dtype is None or not self.symmetric):
            raise ValueError(f"{self.name}: float schemes are symmetric fp8")
        if self.kind == "fp4" and self.group_size not in (NVFP4_BLOCK, MX_BLOCK):
            raise ValueError(f"{self.name}: fp4 blocks are 16 (nvfp4) or 32 (mxfp4)")

    @property
    def nvfp4(self) -> bool:
        """An fp4 scheme with e4m3 block scales and a global scale (else E8M0 exponents, MXFP4)."""
        return self.kind == "fp4" and self.group_size == NVFP4_BLOCK

    @property
    def microscaled(self) -> bool:
        """Blocks of 16/32 with their own small scales (nvfp4, mxfp4, mxfp8), not int/fp8 math."""
        return self.kind == "fp4" or (self.kind == "float" and self.granularity == "group")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def fmax(self) -> float:
        if self.fp8_dtype is None:
            raise QuantizationError(
                f"{self.name} is an integer scheme: it has no fp8 range",
                hint="this is a bug in weightsmith; report it",
            )
        return float(torch.finfo(self.fp8_dtype).max)

    def fits(self, in_features: int) -> bool:
        """Whether a row of ``in_features`` splits into whole groups."""
        return self.group_size is None or in_features % self.group_size == 0


LINEAR_SCHEMES: dict[str, LinearScheme] = {}


def register_linear_scheme(scheme: LinearScheme) -> LinearScheme:
    LINEAR_SCHEMES[scheme.name] = scheme
    return scheme


register_linear_scheme(
    LinearScheme("int8", "int", 8, "channel", description="int8, symmetric, one scale per output channel")
)
register_linear_scheme(
    LinearScheme(
        "fp8", "float", 8, "channel", fp8_dtype=torch.float8_e4m3fn, description="float8_e4m3fn, per channel"
    )
)
register_linear_scheme(
    LinearScheme(
        "fp8-tensor",
        "float",
        8,
        "tensor",
        fp8_dtype=torch.float8_e4m3fn,
        formats=("compressed-tensors", "comfy"),
        description="float8_e4m3fn, one scale per tensor (ComfyUI's scaled fp8)",
    )
)
register_linear_scheme(
    LinearScheme(
        "fp8-e5m2",
        "float",
        8,
        "tensor",
        fp8_dtype=torch.float8_e5m2,
        formats=("comfy",),
        description="float8_e5m2, one scale per tensor (ComfyUI only: compressed-tensors has no e5m2)",
    )
)
register_linear_scheme(
    LinearScheme(
        "int8-tensor",
        "int",
        8,
        "tensor",
        formats=("comfy",),
        description="int8, symmetric, one float32 scale per tensor (ComfyUI's int8_tensorwise)",
    )
)
for _g, _name in ((128, "int4"), (64, "int4-g64"), (32, "int4-g32"), (16, "int4-g16")):
    register_linear_scheme(
        LinearScheme(_name, "int", 4, "group", _g, description=f"int4, symmetric, groups of {_g} (W4A16)")
    )
register_linear_scheme(
    LinearScheme(
        "nvfp4",
        "fp4",
        4,
        "group",
        NVFP4_BLOCK,
        formats=("compressed-tensors", "comfy"),
        description="NVFP4: E2M1, blocks of 16 with e4m3 scales, float32 global scale (W4A16)",
    )
)
register_linear_scheme(
    LinearScheme(
        "mxfp4", "fp4", 4, "group", MX_BLOCK, description="MXFP4: E2M1, blocks of 32 with E8M0 scales (W4A16)"
    )
)
register_linear_scheme(
    LinearScheme(
        "mxfp8",
        "float",
        8,
        "group",
        MX_BLOCK,
        fp8_dtype=torch.float8_e4m3fn,
        formats=("comfy",),
        description="MXFP8: float8_e4m3fn, blocks of 32 with E8M0 scales (ComfyUI's mxfp8)",
    )
)
register_linear_scheme(
    LinearScheme(
        "int4-asym", "int", 4, "group", 128, symmetric=False, description="int4, zero points, groups of 128"
    )
)


def get_linear_scheme(name: str) -> LinearScheme:
    try:
        return LINEAR_SCHEMES[name.lower()]
    except KeyError:
        raise UsageError(
            f"unknown scheme {name!r}", hint=f"choose one of {', '.join(LINEAR_SCHEMES)} or gguf:TYPE"
        ) from None


@dataclass
class QuantizedWeight:
    """One quantized 2-D weight.

    ``data`` holds the values as int8 (int schemes) or fp8, or, when ``packed_bits`` is set, as
    int32 words packed the compressed-tensors way (kept packed at run time to save memory).
    ``scale`` is (out, 1) per channel, (out, n_groups) per group, or one element per tensor;
    ``zero_point`` (asymmetric only) is int8 (out, n_groups).
    fp4: ``data`` is uint8 codes packed two per byte (even column low), ``scale`` the block scales
    as stored (float8_e4m3fn for nvfp4, uint8 E8M0 exponents for mxfp4), ``global_scale`` nvfp4's
    float32 (1,) (compressed-tensors' sense: 2688 / amax); ``input_global_scale`` nvfp4 W4A4's
    calibrated float32 (1,) for its activations (same sense), carried to the runtime.
    ``layout="comfy"`` (nvfp4, mxfp8): ComfyUI's storage (``microscale_comfy``): ``data`` padded
    (nvfp4 even column high), ``scale`` the swizzled padded block scales, ``global_scale`` nvfp4's
    ``weight_scale_2`` (amax / 2688, float32 scalar). ``input_scale``: a ComfyUI file's static
    activation scale (absmax / format max; nvfp4: / 2688), for layers whose matmul quantizes inputs.
    """

    scheme: LinearScheme
    data: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    shape: tuple[int, int]
    packed_bits: int | None = None
    global_scale: torch.Tensor | None = None
    input_global_scale: torch.Tensor | None = None
    layout: str = "compressed-tensors"
    input_scale: torch.Tensor | None = None

    def values(self) -> torch.Tensor:
        """The quantized values, unpacked (int8, fp8 or uint8 E2M1 codes), shaped like the weight."""
        if self.layout == "comfy":
            return comfy_values(self.data, self.shape, self.scheme.nvfp4)
        if self.scheme.kind == "fp4":
            return unpack_nibbles(self.data, even_high=False)
        if self.packed_bits is None:
            return self.data
        return unpack_int32(self.data, self.packed_bits, self.shape[1])

    def dequantize(self) -> torch.Tensor:
        """The weight the stored numbers encode, in the scale's dtype (float32 for ours and fp4)."""
        if self.layout == "comfy":
            return dequantize_comfy(self.data, self.scale, self.global_scale, self.shape, self.scheme.nvfp4)
        if self.scheme.kind == "fp4":
            return dequantize_fp4(self)
        return dequantize(self.values(), self.scale, self.zero_point, self.scheme)

    def rows(self, r0: int, r1: int) -> QuantizedWeight:
        """Rows ``r0:r1`` as a weight of their own (views, no copy): every stored tensor but a
        per-tensor scale and nvfp4's global scale is row-major, one row per weight row (not so in
        ComfyUI's swizzled layout, which is refused here)."""
        if self.layout != "compressed-tensors":
            raise ValueError(f"rows() needs a row-major layout, not {self.layout!r}")
        out = self.shape[0]

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return t[r0:r1] if t is not None and t.dim() and t.shape[0] == out and out > 1 else t

        n = min(r1, out) - r0
        return QuantizedWeight(
            self.scheme, self.data[r0:r1], cut(self.scale), cut(self.zero_point),  # type: ignore[arg-type]
            (n, self.shape[1]), self.packed_bits, self.global_scale, cut(self.input_global_scale),
        )  # fmt: skip

    def to(self, device: torch.device | str) -> QuantizedWeight:
        zp = self.zero_point.to(device) if self.zero_point is not None else None
        gs, igs, ins = (
            t.to(device) if t is not None else None
            for t in (self.global_scale, self.input_global_scale, self.input_scale)
        )
        return QuantizedWeight(
            self.scheme,
            self.data.to(device),
            self.scale.to(device),
            zp,
            self.shape,
            self.packed_bits,
            gs,
            igs,
            self.layout,
            ins,
        )

    @property
    def nbytes(self) -> int:
        extra = [t for t in (self.zero_point, self.global_scale) if t is not None]
        ts = [self.data, self.scale, *extra]
        return sum(t.numel() * t.element_size() for t in ts)


def quantize_weight(
    w: torch.Tensor,
    scheme: LinearScheme,
    device: torch.device | str | None = None,
    name: str = "weight",
    layout: str = "compressed-tensors",
) -> QuantizedWeight:
    """Quantize one 2-D weight with ``scheme`` on ``device`` (default: where ``w`` is).

    ``layout="comfy"`` stores nvfp4/mxfp8 as ComfyUI does (padded, no row refused); mxfp8 exists
    only there. Other schemes store the same numbers in both layouts."""
    if w.ndim != 2:
        raise QuantizationError(
            f"{name}: {scheme.name} quantizes 2-D Linear weights, got shape {list(w.shape)}",
            hint="keep it with --keep, or quantize only 2-D Linear weights",
        )
    x = w.to(device=device or w.device, dtype=torch.float32)
    out, inn = x.shape
    if (scheme.kind == "float" and scheme.microscaled) or (layout == "comfy" and scheme.nvfp4):
        data, scale, g = quantize_comfy(x, scheme.nvfp4, name)
        return QuantizedWeight(scheme, data, scale, None, (out, inn), None, g, layout="comfy")
    if not scheme.fits(inn):
        raise QuantizationError(
            f"{name}: row of {inn} is not a multiple of {scheme.name}'s group of {scheme.group_size}",
            hint="keep it with --keep, or choose a scheme with a smaller group (int4-g64, int4-g32)",
        )
    if scheme.kind == "fp4":
        return quantize_fp4(x, scheme, name)
    if x.data_ptr() == w.data_ptr():
        x = x.clone()  # the in-place steps below must not touch the caller's tensor
    one = torch.ones((), dtype=torch.float32, device=x.device)
    if scheme.kind == "float":
        amax = (
            x.abs().amax(dim=1, keepdim=True)
            if scheme.granularity == "channel"
            else x.abs().amax().reshape(1)
        )
        _check_finite(amax, name)
        scale = torch.where(amax > 0, amax / scheme.fmax, one)
        q = x.div_(scale).clamp_(-scheme.fmax, scheme.fmax).to(scheme.fp8_dtype)  # type: ignore[arg-type]
        return QuantizedWeight(scheme, q, scale, None, (out, inn))
    if scheme.granularity == "group":
        xv = x.view(out, inn // scheme.group_size, scheme.group_size)  # type: ignore[operator]
    elif scheme.granularity == "channel":
        xv = x.view(out, 1, inn)
    else:
        xv = x.view(1, 1, out * inn)
    if scheme.symmetric:
        amax = xv.abs().amax(dim=-1)
        _check_finite(amax, name)
        scale = _fit_top(torch.where(amax > 0, amax / scheme.qmax, one), float(scheme.qmax))
        q = xv.div_(scale.unsqueeze(-1)).round_().clamp_(scheme.qmin, scheme.qmax)
        zp = None
    else:
        lo = xv.amin(dim=-1).clamp(max=0)
        hi = xv.amax(dim=-1).clamp(min=0)
        _check_finite(hi, name)
        _check_finite(lo, name)
        levels = float(scheme.qmax - scheme.qmin)
        scale = (hi - lo) / levels
        if not bool(torch.isfinite(scale).all()):  # a group spanning -3e38..3e38: its range in float64
            wide = ((hi.to(torch.float64) - lo.to(torch.float64)) / levels).to(torch.float32)
            scale = torch.where(torch.isfinite(scale), scale, wide)
        scale = torch.where(scale > 0, scale, one)
        zpf = torch.round(scheme.qmin - lo / scale).clamp(scheme.qmin, scheme.qmax)
        q = xv.div_(scale.unsqueeze(-1)).add_(zpf.unsqueeze(-1)).round_().clamp_(scheme.qmin, scheme.qmax)
        zp = zpf.to(torch.int8)
    q = q.to(torch.int8).view(out, inn)
    if scheme.granularity == "tensor":
        scale = scale.reshape(1)
    return QuantizedWeight(scheme, q, scale, zp, (out, inn))


def quantize_fp4(x: torch.Tensor, scheme: LinearScheme, name: str = "weight") -> QuantizedWeight:
    """NVFP4 / MXFP4 in compressed-tensors' convention (no padding: the policy keeps rows no block divides)."""
    if scheme.nvfp4:
        q = quantize_nvfp4(x, convention="compressed-tensors", pad=1, name=name)
        packed = pack_nibbles(q.codes, even_high=False)
        return QuantizedWeight(scheme, packed, q.scales, None, q.shape, None, q.global_scale.reshape(1))
    m = quantize_mxfp4(x, name=name)
    return QuantizedWeight(scheme, pack_nibbles(m.values, even_high=False), m.exponents, None, m.shape)


def dequantize_fp4(qw: QuantizedWeight) -> torch.Tensor:
    """Float32 weight of an fp4 ``QuantizedWeight``: the exact products compressed-tensors rounds to bf16."""
    codes = qw.values()
    if qw.scheme.nvfp4:
        if qw.global_scale is None:
            raise QuantizationError(
                f"{qw.scheme.name} weight of shape {list(qw.shape)} has no global scale",
                hint="the artifact lacks weight_global_scale; re-export it or use the unquantized checkpoint",
            )
        g = qw.global_scale.to(torch.float32).reshape(())
        scales = qw.scale.to(torch.float8_e4m3fn)
        return dequantize_nvfp4(NVFP4(codes, scales, g, qw.shape, "compressed-tensors"))
    return dequantize_mx(MX(codes, qw.scale.to(torch.uint8), qw.shape, "e2m1"))


def _fit_top(scale: torch.Tensor, top: float) -> torch.Tensor:
    """``scale`` lowered by an ulp where ``top * scale`` rounds past float32's largest value (an
    abs-max at ~3.4e38), so that the top level decodes to a finite number; otherwise unchanged."""
    for _ in range(4):
        over = ~torch.isfinite(scale * top)
        if not bool(over.any()):
            break
        scale = torch.where(over, torch.nextafter(scale, torch.zeros_like(scale)), scale)
    return scale


def _check_finite(t: torch.Tensor, name: str) -> None:
    """A NaN or infinity anywhere in a row reaches its abs-max: one cheap check on the reduced tensor."""
    if not bool(torch.isfinite(t).all()):
        raise QuantizationError(
            f"{name} holds NaN or infinite values", hint=f"keep it unquantized with --keep '{name}'"
        )


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, scheme: LinearScheme
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in the scale's dtype, per channel, tensor or group.

    The operations and their order are compressed-tensors' (and torchao's, in float32), so all
    three give the same bits."""
    v = q.to(scale.dtype)
    if scheme.granularity == "group":
        out, inn = q.shape
        v = v.view(out, -1, scheme.group_size)  # type: ignore[arg-type]
        if zero_point is not None:
            v = v - zero_point.to(scale.dtype).unsqueeze(-1)
        return (v * scale.unsqueeze(-1)).view(out, inn)
    if zero_point is not None:
        v = v - zero_point.to(scale.dtype)
    return v * scale


# ---------------------------------------------------------------------------------------------
# compressed-tensors' int32 packing: value + 2**(bits-1) as an unsigned field, element i of a row
# at bit i*bits of the row's bit stream, 32 bits a word (for 4 and 8 bits no field straddles).


def pack_int32(q: torch.Tensor, bits: int, dim: int = 1, rows_per_chunk: int = 4096) -> torch.Tensor:
    """Pack int8 values along ``dim`` (1: rows of a weight; 0: columns, as zero points are)."""
    if bits not in (4, 8):
        raise QuantizationError(
            f"packing {bits}-bit values is not supported (only 4 and 8)", hint="choose an int4 or int8 scheme"
        )
    if dim == 0:
        return pack_int32(q.t(), bits, 1, rows_per_chunk).t().contiguous()
    rows, cols = q.shape
    if sys.byteorder == "little" or q.device.type != "cpu":
        # Little-endian words: byte j of a row holds values 2j, 2j+1 (4-bit, low nibble first) or j.
        u = (q.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)
        if bits == 4:
            if cols % 2:
                u = F.pad(u, (0, 1))
            u = u[:, 0::2] | (u[:, 1::2] << 4)
        if u.shape[1] % 4:
            u = F.pad(u, (0, 4 - u.shape[1] % 4))
        return u.contiguous().view(-1).view(torch.int32).view(rows, -1)
    per = 32 // bits
    shifts = torch.arange(per, device=q.device, dtype=torch.int64) * bits
    out = []
    for start in range(0, rows, rows_per_chunk):  # bounded int64 temporaries
        u64 = q[start : start + rows_per_chunk].to(torch.int64) + (1 << (bits - 1))
        if cols % per:
            u64 = F.pad(u64, (0, per - cols % per))
        words = (u64.view(u64.shape[0], -1, per) << shifts).sum(-1)
        out.append(torch.where(words >= 2**31, words - 2**32, words).to(torch.int32))
    return torch.cat(out) if len(out) != 1 else out[0]


def unpack_int32(packed: torch.Tensor, bits: int, cols: int, dim: int = 1) -> torch.Tensor:
    """Inverse of ``pack_int32``: int8 values, ``cols`` of them along ``dim``."""
    if bits not in (4, 8):
        raise QuantizationError(
            f"unpacking {bits}-bit values is not supported (only 4 and 8)",
            hint="the file is corrupt or uses an unsupported packing; re-export it with 4 or 8 bits",
        )
    if dim == 0:
        return unpack_int32(packed.t(), bits, cols, 1).t().contiguous()
    rows = packed.shape[0]
    if sys.byteorder == "little" or packed.device.type != "cpu":
        # Each int32 word is four bytes, lowest first: split bytes (and nibbles) without int64.
        b = packed.contiguous().view(torch.uint8).view(rows, -1)
        u = torch.stack((b & 0xF, b >> 4), dim=-1).view(rows, -1) if bits == 4 else b
        return (u[:, :cols].to(torch.int16) - (1 << (bits - 1))).to(torch.int8)
    per = 32 // bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.int64) * bits
    w = packed.to(torch.int64) & 0xFFFFFFFF
    u = ((w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(rows, -1)[:, :cols]
    return (u - (1 << (bits - 1))).to(torch.int8)


def packed_cols(cols: int, bits: int) -> int:
    return math.ceil(cols * bits / 32)
