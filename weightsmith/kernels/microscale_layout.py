"""Storage layouts of microscaled weights, kept apart from the arithmetic in ``microscale``.

The same FP4 codes and block scales are stored differently by each consumer:

* nibble order: ComfyUI (comfy-kitchen) puts the even column in the HIGH nibble of each byte;
  compressed-tensors puts it in the LOW nibble;
* padding: ComfyUI pads the weight to multiples of 16 (nvfp4) or 32 (mxfp8) in both dims;
* scale matrices: ComfyUI stores them padded to (roundup(rows, 128), roundup(cols, 4)) and
  swizzled in cuBLAS's 128x4 tile order; compressed-tensors stores them row-major, unpadded.

Only reshapes, permutes, shifts and masks: exact on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weightsmith.errors import QuantizationError


def roundup(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def pad_to(x: torch.Tensor, row_multiple: int, col_multiple: int) -> torch.Tensor:
    """Zero-pad a 2-D tensor at the bottom and right to the given multiples (a no-op when aligned)."""
    rows, cols = x.shape
    pad_rows, pad_cols = roundup(rows, row_multiple) - rows, roundup(cols, col_multiple) - cols
    if pad_rows == 0 and pad_cols == 0:
        return x
    if x.dtype.is_floating_point and x.element_size() == 1:
        # F.pad has no fp8 kernel everywhere; pad the raw bytes (zero bytes are +0 in every fp8).
        return pad_to(x.view(torch.uint8), row_multiple, col_multiple).view(x.dtype)
    return F.pad(x, (0, pad_cols, 0, pad_rows))


def pack_nibbles(codes: torch.Tensor, *, even_high: bool) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dim; ``even_high`` is ComfyUI's order, else compressed-tensors'."""
    if codes.dtype != torch.uint8 or codes.shape[-1] % 2:
        raise QuantizationError(
            f"cannot pack {tuple(codes.shape)} {codes.dtype} codes into nibbles",
            hint="pass uint8 codes with an even last dimension (pad the weight first); this is a bug if it came from weightsmith",
        )
    even, odd = codes[..., 0::2] & 0x0F, codes[..., 1::2] & 0x0F
    return (even << 4) | odd if even_high else (odd << 4) | even


def unpack_nibbles(packed: torch.Tensor, *, even_high: bool) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: the last dim doubles."""
    high, low = packed >> 4, packed & 0x0F
    pair = (high, low) if even_high else (low, high)
    return torch.stack(pair, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def swizzle_128x4(scales: torch.Tensor) -> torch.Tensor:
    """Row-major block scales -> cuBLAS's 128x4 tile order, padded to (roundup(rows,128), roundup(cols,4)).

    Element (r, c) with r = 128*rb + 32*i + j, c = 4*cb + k goes to flat position
    ((rb * n_col_tiles + cb) * 32 + j) * 16 + 4*i + k; the result has the padded 2-D shape that
    ComfyUI stores (comfy-kitchen's ``to_blocked(..., flatten=False)``).
    """
    padded = pad_to(scales.view(torch.uint8) if scales.element_size() == 1 else scales, 128, 4)
    rows, cols = padded.shape
    out = padded.reshape(rows // 128, 4, 32, cols // 4, 4).permute(0, 3, 2, 1, 4).reshape(rows, cols)
    return out.view(scales.dtype) if scales.element_size() == 1 else out


def unswizzle_128x4(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of ``swizzle_128x4``, sliced back to (rows, cols)."""
    padded_rows, padded_cols = roundup(rows, 128), roundup(cols, 4)
    if blocked.numel() != padded_rows * padded_cols:
        raise QuantizationError(
            f"a swizzled scale matrix of {blocked.numel()} elements cannot hold {rows}x{cols} block scales",
            hint=f"expected {padded_rows}x{padded_cols} (rows padded to 128, columns to 4); the file is malformed",
        )
    raw = blocked.view(torch.uint8) if blocked.element_size() == 1 else blocked
    tiles = raw.reshape(padded_rows // 128, padded_cols // 4, 32, 4, 4)
    out = tiles.permute(0, 3, 2, 1, 4).reshape(padded_rows, padded_cols)[:rows, :cols]
    return out.view(blocked.dtype) if blocked.element_size() == 1 else out
