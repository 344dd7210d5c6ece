"""Generation settings shared by the baseline and every candidate, and what the cache keys on.

One ``GenerationSettings`` describes how every reference generation runs (size, steps, scheduler,
guidance, dtype, device); the baseline and each candidate run with exactly the same settings, so
any difference in the outputs comes from the weights alone.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import torch

from weightsmith.errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Released defaults per family: (height, width, frames, steps, guidance). Tiny models want smaller
# sizes; the CLI and tests pass them.
FAMILY_DEFAULTS: dict[str, tuple[int, int, int, int, float]] = {
    "wan": (480, 832, 81, 50, 5.0),
    "cogvideox": (480, 720, 49, 50, 6.0),
    "sana": (1024, 1024, 1, 20, 4.5),
}


@dataclass(frozen=True)
class GenerationSettings:
    """How each reference generation runs. ``None`` fields take the family's default."""

    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str = "default"
    seeds: tuple[int, ...] = (0,)
    dtype: str = "fp32"
    device: str = "auto"
    offload: str = "none"
    vae_tiling: bool = False
    text_len: int | None = None
    image: str | None = None
    prompts: str | None = None
    negative_prompt: str = ""

    def resolved(self, family: str, scheduler_steps: int | None = None, guidance: float | None = None):
        """The settings with the family's defaults filled in (``scheduler_steps``/``guidance``: a
        scheduler preset's own, such as Lightning's 4 steps without CFG)."""
        h, w, f, steps, cfg = FAMILY_DEFAULTS[family]
        return dataclasses.replace(
            self,
            height=self.height or h,
            width=self.width or w,
            frames=1 if family == "sana" else (self.frames or f),
            steps=self.steps or scheduler_steps or steps,
            guidance=self.guidance
            if self.guidance is not None
            else (guidance if guidance is not None else cfg),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        try:
            return DTYPES[self.dtype]
        except KeyError:
            raise UsageError(
                f"unknown --dtype {self.dtype!r}", hint=f"choose one of {', '.join(DTYPES)}"
            ) from None

    def key_material(self) -> dict[str, Any]:
        """Everything in these settings that changes a generation's numbers (seeds excluded)."""
        d = dataclasses.asdict(self)
        d.pop("seeds")
        d["device"] = device_kind(pick_device(self.device))
        return d


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0"``, ``"0,1,5"`` or ``"0-3"`` (inclusive) to a tuple of seeds."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        try:
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UsageError(f"bad --seeds {text!r}", hint="use e.g. 0 or 0,1,2 or 0-3") from None
    if not seeds:
        raise UsageError("--seeds names no seed", hint="use e.g. 0 or 0,1,2 or 0-3")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed", hint="name each seed once")
    return tuple(seeds)


def pick_device(device: str) -> torch.device:
    """``auto`` is CUDA when present (this rank's device under torchrun), else CPU."""
    import os

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available", hint="use --device cpu")
    return d


def device_kind(d: torch.device) -> str:
    """What a device's numbers depend on: CPU, or the GPU's model (cache keys use it)."""
    if d.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(d)}"
    return d.type
