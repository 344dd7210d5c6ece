"""Reference generations through each family's real diffusers pipeline.

The pipeline is built from modules we loaded (transformer, optional second expert, optional VAE)
with ``tokenizer``/``text_encoder`` left out: prompt embeddings are passed in. Each denoising step's
latents are captured through ``callback_on_step_end``; a non-finite latent stops the run at once.
Which pipeline class runs a model, and what it needs besides the shared arguments, the family's
generation adapter says (``weightsmith.families.generation``); everything else is diffusers' own code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightsmith.errors import UsageError, WeightsmithError
from weightsmith.verify.family import generation
from weightsmith.verify.inputs import Prompt
from weightsmith.verify.schedulers import SchedulerChoice
from weightsmith.verify.settings import GenerationSettings


@dataclass
class Generation:
    """One generation's outputs: final latents, every step's latents, frames [F, C, H, W] in [0, 1]."""

    latents: torch.Tensor
    steps: list[torch.Tensor]
    frames: torch.Tensor | None
    seconds: float
    nonfinite_step: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finite(self) -> bool:
        return self.nonfinite_step is None


@dataclass
class Parts:
    """The modules and choices one pipeline is built from."""

    family: str
    variant: str
    transformer: nn.Module
    vae: nn.Module | None
    scheduler: SchedulerChoice
    transformer_2: nn.Module | None = None
    boundary_ratio: float | None = None
    expand_timesteps: bool = False


class _NonFinite(Exception):
    def __init__(self, step: int, latents: torch.Tensor) -> None:
        self.step, self.latents = step, latents


def is_i2v(family: str, variant: str) -> bool:
    return generation(family).is_i2v(variant)


def pipeline_class(family: str, variant: str) -> type:
    """The diffusers pipeline class that runs this family and variant."""
    return generation(family).pipeline_class(variant)


def build_pipeline(parts: Parts) -> Any:
    """The family's diffusers pipeline around ``parts`` (no text encoder, no tokenizer)."""
    cls, extra = generation(parts.family).build(parts)
    kwargs: dict[str, Any] = {
        "tokenizer": None,
        "text_encoder": None,
        "vae": parts.vae,
        "transformer": parts.transformer,
        "scheduler": parts.scheduler.build(),
        **extra,
    }
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def place(pipe: Any, device: torch.device, offload: str, vae_tiling: bool) -> None:
    """Move the pipeline to ``device`` or set up diffusers' CPU offload; turn on VAE tiling."""
    if offload == "none":
        pipe.to(device)
    elif device.type == "cpu":
        raise UsageError(
            f"--offload {offload} needs a GPU (it keeps weights on the CPU and moves them to the GPU in turn)",
            hint="drop --offload on a CPU-only machine",
        )
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise UsageError(f"unknown --offload {offload!r}", hint="choose none, model or sequential")
    if vae_tiling and getattr(pipe, "vae", None) is not None and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()


def generate(
    pipe: Any,
    parts: Parts,
    settings: GenerationSettings,
    prompt: Prompt,
    seed: int,
    image: Any = None,
    last_image: Any = None,
    decode: bool = True,
    device: torch.device | None = None,
) -> Generation:
    """Run one seeded generation; ``settings`` must be resolved (no ``None`` sizes)."""
    dev = device or torch.device("cpu")
    dtype = settings.torch_dtype
    steps: list[torch.Tensor] = []

    def on_step(_pipe: Any, i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        lat = kw["latents"].detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(lat).all()):
            raise _NonFinite(i, lat)
        steps.append(lat.clone())
        return {}

    def emb(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dev, dtype if t.is_floating_point() else t.dtype)

    kw: dict[str, Any] = {
        "prompt_embeds": emb(prompt.embeds),
        "height": settings.height,
        "width": settings.width,
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "pt" if decode else "latent",
        "callback_on_step_end": on_step,
        "return_dict": False,
    }
    gen = generation(parts.family)
    kw.update(gen.call_kwargs(parts, settings, prompt, emb, image, last_image))
    pipe._weightsmith_image_embeds = gen.image_embeds(parts, seed)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    notes: list[str] = []
    try:
        with torch.inference_mode():
            out = pipe(**kw)[0]
    except _NonFinite as e:
        return Generation(e.latents, steps, None, time.perf_counter() - t0, nonfinite_step=e.step)
    except WeightsmithError:  # ours (several are ValueErrors too) already say what is wrong
        raise
    except ValueError as e:  # diffusers' own input checks (sizes, frame counts...)
        msg = " ".join(str(e).split())[:300]
        raise UsageError(
            f"{type(pipe).__name__} refused the generation settings: {msg}",
            hint="adjust --height/--width/--frames/--steps to what this model takes",
        ) from None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    frames = None
    if decode:
        frames = out.detach().to("cpu", torch.float32)
        frames = frames[0] if frames.dim() == 5 else frames  # [B, F, C, H, W] video, [B, C, H, W] image
        if not bool(torch.isfinite(frames).all()):
            return Generation(steps[-1], steps, frames, seconds, nonfinite_step=len(steps), notes=notes)
    latents = steps[-1] if steps else out.detach().to("cpu", torch.float32)
    return Generation(latents, steps, frames, seconds, notes=notes)
