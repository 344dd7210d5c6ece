"""Reference generations through each family's real diffusers pipeline.

The pipeline is built from modules we loaded (transformer, optional second expert, optional VAE)
with ``tokenizer``/``text_encoder`` left out: prompt embeddings are passed in. Each denoising step's
latents are captured through ``callback_on_step_end``; a non-finite latent stops the run at once.
Wan 2.1 image-to-video takes CLIP image embeddings, which without an image encoder come from the
seed through a one-method subclass; everything else is diffusers' own code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightsmith.errors import UsageError
from weightsmith.verify.inputs import Prompt, seeded_image_embeds
from weightsmith.verify.schedulers import SchedulerChoice
from weightsmith.verify.settings import GenerationSettings

I2V_VARIANTS = {
    "cogvideox": ("5b-i2v", "1.5-5b-i2v"),
    "wan": ("2.1-i2v", "2.1-flf2v", "2.2-i2v-a14b"),
    "sana": (),
}
# Wan 2.2 A14B hands over from the high-noise to the low-noise expert at this fraction of the
# training timesteps (the released I2V pipeline's boundary_ratio).
A14B_BOUNDARY = 0.9


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
    return variant in I2V_VARIANTS.get(family, ())


def pipeline_class(family: str, variant: str) -> type:
    """The diffusers pipeline class that runs this family and variant."""
    import diffusers

    if family == "cogvideox":
        return (
            diffusers.CogVideoXImageToVideoPipeline
            if is_i2v(family, variant)
            else diffusers.CogVideoXPipeline
        )
    if family == "wan":
        if variant == "2.1-vace":
            raise UsageError(
                "verifying Wan VACE models is not supported yet (they need control videos)",
                hint="verify the Wan 2.1 T2V/I2V models, or compare VACE transformers with `weightsmith inspect`",
            )
        return diffusers.WanImageToVideoPipeline if is_i2v(family, variant) else diffusers.WanPipeline
    if family == "sana":
        return diffusers.SanaSprintPipeline if variant == "sprint" else diffusers.SanaPipeline
    raise UsageError(f"no pipeline known for family {family!r}")


def _wan_i2v_with_embeds(base: type) -> type:
    """WanImageToVideoPipeline whose ``encode_image`` returns seeded CLIP states (no image encoder)."""

    def encode_image(self: Any, image: Any, device: torch.device | None = None) -> torch.Tensor:
        return self._weightsmith_image_embeds.to(device)

    return type(base.__name__, (base,), {"encode_image": encode_image})


def build_pipeline(parts: Parts) -> Any:
    """The family's diffusers pipeline around ``parts`` (no text encoder, no tokenizer)."""
    cls = pipeline_class(parts.family, parts.variant)
    kwargs: dict[str, Any] = {
        "tokenizer": None,
        "text_encoder": None,
        "vae": parts.vae,
        "transformer": parts.transformer,
        "scheduler": parts.scheduler.build(),
    }
    if parts.family == "wan":
        kwargs["transformer_2"] = parts.transformer_2
        kwargs["boundary_ratio"] = parts.boundary_ratio if parts.transformer_2 is not None else None
        kwargs["expand_timesteps"] = parts.expand_timesteps
        if is_i2v(parts.family, parts.variant):
            if parts.transformer.config.get("image_dim") is not None:
                cls = _wan_i2v_with_embeds(cls)
            kwargs["image_encoder"] = None
            kwargs["image_processor"] = None
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


def _image_embeds_for(parts: Parts, seed: int) -> torch.Tensor | None:
    cfg = parts.transformer.config
    width = cfg.get("image_dim")
    if parts.family != "wan" or width is None:
        return None
    pos = cfg.get("pos_embed_seq_len")
    if pos:  # FLF2V: two images, half the positions each
        return seeded_image_embeds(seed, pos // 2, int(width)).repeat(2, 1, 1)
    return seeded_image_embeds(seed, 257, int(width))


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
    if not (parts.family == "sana" and parts.variant == "sprint"):
        neg = prompt.negative if prompt.negative is not None else torch.zeros_like(prompt.embeds)
        kw["negative_prompt_embeds"] = emb(neg)
    if parts.family in ("wan", "cogvideox"):
        kw["num_frames"] = settings.frames
    if parts.family == "sana":
        kw["use_resolution_binning"] = False
        if parts.variant != "sprint":
            kw["negative_prompt"] = None
        kw["prompt_attention_mask"] = emb(prompt.mask)
        if "negative_prompt_embeds" in kw:
            nm = prompt.negative_mask if prompt.negative_mask is not None else torch.ones_like(prompt.mask)
            kw["negative_prompt_attention_mask"] = emb(nm)
        if parts.variant == "sprint" and settings.steps != 2:
            kw["intermediate_timesteps"] = None
    if is_i2v(parts.family, parts.variant):
        if image is None:
            raise UsageError("image-to-video generation needs an image", hint="pass --image PATH")
        kw["image"] = image
        if parts.variant == "2.1-flf2v":
            kw["last_image"] = last_image if last_image is not None else image
    if parts.family == "wan" and parts.transformer_2 is not None and parts.boundary_ratio is not None:
        kw["guidance_scale_2"] = settings.guidance
    pipe._weightsmith_image_embeds = _image_embeds_for(parts, seed)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    notes: list[str] = []
    try:
        with torch.inference_mode():
            out = pipe(**kw)[0]
    except _NonFinite as e:
        return Generation(e.latents, steps, None, time.perf_counter() - t0, nonfinite_step=e.step)
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
