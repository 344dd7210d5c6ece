"""Small previews of a generation for the report: a few frames, downscaled, as uint8 RGB."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PREVIEW_FRAMES = 8
PREVIEW_SIZE = 128


def preview(gen: Any, ref: Any = None) -> np.ndarray | None:
    """Up to 8 frames of a pipelines.Generation as uint8 [F, H, W, 3] (latents: the first three channels, scaled by the baseline's range)."""
    import torch.nn.functional as F

    if gen.frames is not None:
        fr = gen.frames
    else:
        lat = gen.latents[0].float()
        if lat.dim() == 3:
            lat = lat[:, None]
        lat = lat[:3].permute(1, 0, 2, 3)  # [F, C, H, W]
        r = ref.latents[0].float() if ref is not None else gen.latents[0].float()
        r = r[:, None] if r.dim() == 3 else r
        lo = r[:3].amin(dim=(1, 2, 3)).view(1, -1, 1, 1)
        hi = r[:3].amax(dim=(1, 2, 3)).view(1, -1, 1, 1)
        fr = ((lat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        if fr.shape[1] < 3:
            fr = fr.repeat(1, 3, 1, 1)[:, :3]
    idx = torch.linspace(0, fr.shape[0] - 1, min(PREVIEW_FRAMES, fr.shape[0])).round().long()
    fr = fr[idx].float().nan_to_num(0.0).clamp(0, 1)
    h, w = fr.shape[-2:]
    s = PREVIEW_SIZE / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    fr = F.interpolate(fr, size=size, mode="nearest" if s >= 1 else "area")
    return (fr.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
