"""Perceptual metrics, used only when their weights are already on this machine (never downloaded).

LPIPS needs the ``lpips`` package (its linear heads ship inside it) and torchvision's AlexNet
backbone in the torch hub cache; CLIP score needs a local CLIP model and the text prompts, which
the tiny and embedding-only runs do not have. When anything is missing the metric is skipped and
the report says why.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_available() -> tuple[bool, str]:
    """(usable, why not)."""
    if importlib.util.find_spec("lpips") is None:
        return False, "LPIPS skipped: the lpips package is not installed"
    if importlib.util.find_spec("torchvision") is None:
        return False, "LPIPS skipped: torchvision (its AlexNet backbone) is not installed"
    if not (_hub_checkpoints() / ALEXNET_FILE).is_file():
        return (
            False,
            f"LPIPS skipped: no local AlexNet weights ({_hub_checkpoints() / ALEXNET_FILE}); nothing is downloaded",
        )
    return True, ""


def perceptual_notes() -> list[str]:
    """What the report says about the perceptual metrics it could not compute."""
    notes = []
    ok, why = lpips_available()
    if not ok:
        notes.append(why)
    notes.append("CLIP score skipped: needs a local CLIP model and text prompts; nothing is downloaded")
    return notes


@lru_cache(maxsize=1)
def lpips_scorer() -> Callable[[torch.Tensor, torch.Tensor], float] | None:
    """A function scoring [F, C, H, W] frames in [0, 1] with LPIPS (AlexNet), or None."""
    ok, _ = lpips_available()
    if not ok:
        return None
    os.environ.setdefault("TORCH_HOME", str(Path(torch.hub.get_dir()).parent))
    import lpips  # type: ignore[import-not-found]

    net = lpips.LPIPS(net="alex", verbose=False).eval()

    def score(ref: torch.Tensor, x: torch.Tensor) -> float:
        with torch.no_grad():
            d = net(ref.float() * 2 - 1, x.float() * 2 - 1)
        return float(d.mean())

    return score
