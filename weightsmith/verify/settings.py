"""Generation settings shared by the baseline and every candidate, and what the cache keys on.

One ``GenerationSettings`` describes how every reference generation runs (size, steps, scheduler,
guidance, dtype, device); the baseline and each candidate run with exactly the same settings, so
any difference in the outputs comes from the weights alone.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weightsmith.errors import UsageError
from weightsmith.verify.family import generation

if TYPE_CHECKING:
    import torch

# Bounds on what a user can ask for: far beyond any released model (Wan's rotary table fits 16384
# pixels and 4093 frames), small enough that a typo ends in a clear message, not an allocation
# that never finishes.
MAX_SIDE = 16384
MAX_FRAMES = 4097
MAX_STEPS = 1000  # the schedulers' training timesteps; more steps than that are not defined
MAX_TEXT_LEN = 4096
MAX_GUIDANCE = 1000.0
MAX_SEED = 2**32 - 1
MAX_SEEDS = 10000

# --dtype choices and the torch dtype (by name) each stands for.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


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
        gen = generation(family)
        d = gen.defaults
        return dataclasses.replace(
            self,
            height=self.height or d.height,
            width=self.width or d.width,
            frames=gen.frames(self.frames, d.frames),
            steps=self.steps or scheduler_steps or d.steps,
            guidance=self.guidance
            if self.guidance is not None
            else (guidance if guidance is not None else d.guidance),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        try:
            return getattr(torch, DTYPES[self.dtype])
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
    """``"0"``, ``"0,1,5"`` or ``"0-3"`` (inclusive) to a tuple of seeds.

    Seeds are whole numbers 0..MAX_SEED and at most MAX_SEEDS of them: a typo such as ``0-99999999``
    must not build a list of a hundred million generations, and seeds beyond 32 bits would
    overflow the derived generator seeds.
    """
    hint = f"use e.g. 0 or 0,1,2 or 0-3 (whole numbers 0..{MAX_SEED}, at most {MAX_SEEDS} seeds)"
    shown = _short(text)
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([0-9]{1,20})\s*-\s*([0-9]{1,20})", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise UsageError(f"bad --seeds {shown}: the range {a}-{b} runs backwards", hint=hint)
            if max(a, b) > MAX_SEED:
                raise UsageError(f"bad --seeds {shown}: a seed is larger than {MAX_SEED}", hint=hint)
            if b - a + 1 + len(seeds) > MAX_SEEDS:
                raise UsageError(f"--seeds {shown} names more than {MAX_SEEDS} seeds", hint=hint)
            seeds.extend(range(a, b + 1))
            continue
        if not re.fullmatch(r"[0-9]{1,20}", part):
            raise UsageError(f"bad --seeds {shown}", hint=hint)
        v = int(part)
        if v > MAX_SEED:
            raise UsageError(f"bad --seeds {shown}: a seed is larger than {MAX_SEED}", hint=hint)
        if len(seeds) >= MAX_SEEDS:
            raise UsageError(f"--seeds {shown} names more than {MAX_SEEDS} seeds", hint=hint)
        seeds.append(v)
    if not seeds:
        raise UsageError("--seeds names no seed", hint=hint)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {shown} repeats a seed", hint="name each seed once")
    return tuple(seeds)


def _short(text: object, limit: int = 60) -> str:
    """A user's value quoted for a message, cut short so a pasted megabyte stays one short line."""
    s = str(text)
    return repr(s if len(s) <= limit else s[:limit] + "...")


def _positive(name: str, value: int | None, top: int, what: str) -> None:
    if value is None:
        return
    if value < 1 or value > top:
        raise UsageError(f"{name} {value} is out of range", hint=f"{what}: a whole number from 1 to {top}")


def check_options(settings: GenerationSettings) -> None:
    """Refuse settings no model can run, before anything is loaded (model-independent checks).

    Sizes that depend on the model (multiples of its VAE and patch factors, its positional
    tables) are checked by ``weightsmith.verify.geometry.fit_settings`` once the model is known.
    """
    for name, v in (("--height", settings.height), ("--width", settings.width)):
        _positive(name, v, MAX_SIDE, "pixels, a multiple of the model's VAE and patch factor (e.g. 16)")
    _positive("--frames", settings.frames, MAX_FRAMES, "frames (video families take 4k+1: 1, 5, 9 ...)")
    _positive("--steps", settings.steps, MAX_STEPS, "denoising steps")
    _positive("--text-len", settings.text_len, MAX_TEXT_LEN, "tokens of seeded prompt embeddings")
    if settings.guidance is not None and not math.isfinite(settings.guidance):
        raise UsageError(f"--guidance {settings.guidance} is not a number", hint="pass e.g. --guidance 5.0")
    if settings.guidance is not None and abs(settings.guidance) > MAX_GUIDANCE:
        raise UsageError(
            f"--guidance {settings.guidance:g} is out of range",
            hint=f"pass a value from -{MAX_GUIDANCE} to {MAX_GUIDANCE}",
        )
    if settings.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {settings.dtype!r}", hint=f"choose one of {', '.join(DTYPES)}")
    if not settings.seeds:
        raise UsageError("--seeds names no seed", hint="use e.g. 0 or 0,1,2 or 0-3")
    pick_device(settings.device)
    if settings.prompts is not None:
        from weightsmith.verify.inputs import prompt_path

        prompt_path(settings.prompts)


def pick_device(device: str) -> torch.device:
    """``auto`` is CUDA when present (this rank's device under torchrun), else CPU.

    Only devices that can run a generation are accepted: ``meta`` holds no data, and a CUDA index
    or an MPS device this machine does not have would fail deep inside torch.
    """
    import os

    import torch

    hint = "use auto, cpu, cuda or cuda:N"
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"unknown device {_short(device)}", hint=hint) from None
    if d.type == "cpu":
        return d
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda asked for, but no CUDA device is available", hint="use --device cpu"
            )
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise UsageError(
                f"--device {device} asked for, but this machine has {n} CUDA device(s)",
                hint=f"use cuda:0 .. cuda:{n - 1}, or auto",
            )
        return d
    if d.type == "mps" and torch.backends.mps.is_available():
        return d
    if d.type == "meta":
        raise UsageError("--device meta holds no data and cannot run a generation", hint=hint)
    raise UsageError(f"--device {_short(device)} is not available on this machine", hint=hint)


def device_kind(d: torch.device) -> str:
    """What a device's numbers depend on: CPU, or the GPU's model (cache keys use it)."""
    import torch

    if d.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(d)}"
    return d.type
