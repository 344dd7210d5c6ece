"""Pictures for the report: frame strips (baseline | candidate | difference) and an animation of
both, encoded with Pillow and inlined as base64 so report.html stays one file."""

from __future__ import annotations

import base64
import io

import numpy as np

DIFF_GAIN = 4.0  # differences are amplified so small ones show; the caption says by how much


def _pil():
    from PIL import Image

    return Image


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def strip_png(base: np.ndarray, cand: np.ndarray, gain: float = DIFF_GAIN) -> bytes:
    """Rows baseline, candidate, |difference| x gain; columns are frames. Inputs uint8 [F, H, W, 3]."""
    image = _pil()
    n = min(base.shape[0], cand.shape[0])
    b, c = base[:n].astype(np.int16), cand[:n].astype(np.int16)
    d = np.clip(np.abs(b - c) * gain, 0, 255)
    rows = [np.concatenate(list(x), axis=1) for x in (b, c, d)]
    gap = np.full((2, rows[0].shape[1], 3), 255, dtype=np.int16)
    grid = np.concatenate([rows[0], gap, rows[1], gap, rows[2]], axis=0).astype(np.uint8)
    buf = io.BytesIO()
    image.fromarray(grid, "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def animation_gif(base: np.ndarray, cand: np.ndarray, ms: int = 250) -> bytes:
    """An animated GIF, baseline left and candidate right, looping over the frames."""
    image = _pil()
    n = min(base.shape[0], cand.shape[0])
    gap = np.full((base.shape[1], 4, 3), 255, dtype=np.uint8)
    frames = [image.fromarray(np.concatenate([base[i], gap, cand[i]], axis=1), "RGB") for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms, loop=0, disposal=2
    )
    return buf.getvalue()
