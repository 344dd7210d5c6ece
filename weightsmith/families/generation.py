"""How a transformer runs in its diffusers pipeline: everything ``weightsmith verify`` asks a family.

A transformer ``Component`` holds one ``Generation`` adapter as its ``generation`` attribute. It
says which diffusers pipeline runs the model (and which variants take an image or two experts),
what that pipeline needs besides weights (constructor and call keyword arguments, prompt
embedding shapes and masks), the released generation defaults and scheduler, and which sizes the
model accepts. ``weightsmith/verify/`` only ever asks these questions, so it names no family. The
base class is a plain text-to-video flow-matching model; families override what differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from weightsmith.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Defaults:
    """A family's released generation settings."""

    height: int
    width: int
    frames: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class Geometry:
    """What one model accepts: pixel multiples, its own upper bounds, fixed sizes, the text length.

    ``max_*`` None: the model sets no bound (verify applies its own limits on what a user may ask).
    ``family`` and ``pipeline`` name the model in messages; verify fills in the family.
    """

    h_multiple: int
    w_multiple: int
    temporal: int  # video frames are temporal*k + 1; 0 for image families
    max_height: int | None = None
    max_width: int | None = None
    max_frames: int | None = None
    why_max: str = ""  # what sets the upper bounds (the rotary table)
    fixed_hw: tuple[int, int] | None = None  # learned positional embeddings: this size only
    text_len: int | None = None  # prompt tokens the positional table fixes
    text_width: int | None = None
    sample_hw: tuple[int, int] | None = None  # the model's own sample size, when it has one
    sample_frames: int | None = None
    family: str = ""
    pipeline: str = ""  # the diffusers pipeline that would refuse (or silently round) a size


def config_int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    """A positive integer setting; anything else (a hostile config) is a usage error, not a crash."""
    v = cfg.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v > 2**31:
        raise UsageError(
            f"the model's config has {key} = {str(v)[:40]!r}, not a positive whole number",
            hint="fix the model's config.json",
        )
    return v


def config_blocks(cfg: Mapping[str, Any], key: str, default: int) -> int:
    """How many VAE blocks a config lists (the pipeline's spatial factor is 2**(n-1))."""
    v = cfg.get(key)
    if v is None:
        return default
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 16:
        raise UsageError(
            f"the VAE config has {key} = {str(v)[:40]!r}, not a list of block widths",
            hint="fix the VAE's config.json",
        )
    return len(v)


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def seeded_normal(seed: int, salt: int, *shape: int) -> torch.Tensor:
    """A unit-normal tensor drawn from ``seed`` (``salt`` keeps different draws apart)."""
    import torch

    g = torch.Generator().manual_seed(salt * (seed + 1))
    return torch.randn(*shape, generator=g)


class Generation:
    """The verify adapter of one transformer component. Class attributes are the data; methods
    answer what depends on a variant or a config. Defaults: a text-to-video flow-matching model."""

    title: ClassVar[str] = "this model"  # the family as people write it, for messages
    video: ClassVar[bool] = True
    defaults: ClassVar[Defaults] = Defaults(480, 832, 49, 50, 5.0)
    # Prompt embeddings: the config key of their width, the key that fixes their length (if any),
    # and the length seeded embeddings take otherwise (what the released pipeline pads to).
    text_width_key: ClassVar[str] = "text_dim"
    text_len_key: ClassVar[str | None] = None
    text_len: ClassVar[int] = 512
    attention_masks: ClassVar[bool] = False  # the pipeline takes prompt attention masks
    pipeline: ClassVar[str] = ""  # diffusers pipeline class (text to video/image)
    i2v_pipeline: ClassVar[str | None] = None
    i2v_variants: ClassVar[tuple[str, ...]] = ()
    variant_pipelines: ClassVar[Mapping[str, str]] = {}  # variants run by another pipeline
    expert_components: ClassVar[tuple[str, ...]] = ("transformer",)  # pipeline folder components
    expert_boundaries: ClassVar[Mapping[str, float]] = {}  # two-expert variants: handover ratio
    expand_timesteps_variants: ClassVar[tuple[str, ...]] = ()
    # Schedulers: flow-matching models take FlowMatch* and flow-sigma solvers; others the classes
    # compatible with ``ddim_scheduler`` (which --scheduler ddim and lightning name).
    flow_matching: ClassVar[bool] = True
    ddim_scheduler: ClassVar[str] = "DDIMScheduler"
    dpm_scheduler: ClassVar[str] = "DPMSolverMultistepScheduler"
    scheduler: ClassVar[Mapping[str, Any]] = {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
    }
    # Tiny verification models (demo, tests): the variant the demo shows, the variants that
    # verify, a generation size that fits them, and the VAE variant each needs.
    demo_variant: ClassVar[str | None] = None
    # Schemes the demo adds for this family alone, beyond the ones it runs on every family
    # (formats the family ships in, such as Sana's NVFP4 releases).
    demo_schemes: ClassVar[tuple[str, ...]] = ()
    tiny_variants: ClassVar[tuple[str, ...]] = ()
    tiny_size: ClassVar[tuple[int, int, int]] = (32, 32, 5)
    tiny_vae: ClassVar[str] = "default"

    # -- pipelines --------------------------------------------------------------------------------

    def is_i2v(self, variant: str) -> bool:
        return variant in self.i2v_variants

    def pipeline_class(self, variant: str) -> type:
        """The diffusers pipeline class that runs this variant."""
        import diffusers

        name = self.variant_pipelines.get(variant) or (
            self.i2v_pipeline if self.is_i2v(variant) and self.i2v_pipeline else self.pipeline
        )
        cls = getattr(diffusers, name, None) if name else None
        if cls is None:
            raise UsageError(
                f"no diffusers pipeline known for {self.title} {variant}",
                hint="name the pipeline class in the family's generation adapter",
            )
        return cls

    def pipeline_name(self) -> str:
        """The pipeline named in size messages (the text-to-video/image one)."""
        return self.pipeline

    def build(self, run: Any) -> tuple[type, dict[str, Any]]:
        """The pipeline class for ``run`` (verify's Parts) and extra constructor kwargs."""
        return self.pipeline_class(run.variant), {}

    def negative_embeds(self, variant: str) -> bool:
        """Whether the pipeline takes negative prompt embeddings (classifier-free guidance)."""
        return True

    def call_kwargs(
        self,
        run: Any,
        settings: Any,
        prompt: Any,
        move: Callable[[torch.Tensor | None], torch.Tensor | None],
        image: Any = None,
        last_image: Any = None,
    ) -> dict[str, Any]:
        """Pipeline call kwargs beyond the shared ones (prompt embeds, size, steps, guidance...).

        ``run``: verify's Parts; ``settings``: resolved GenerationSettings; ``prompt``: a Prompt;
        ``move`` puts a tensor on the generation's device and dtype.
        """
        import torch

        kw: dict[str, Any] = {}
        if self.negative_embeds(run.variant):
            neg = prompt.negative if prompt.negative is not None else torch.zeros_like(prompt.embeds)
            kw["negative_prompt_embeds"] = move(neg)
        if self.video:
            kw["num_frames"] = settings.frames
        if self.is_i2v(run.variant):
            if image is None:
                raise UsageError("image-to-video generation needs an image", hint="pass --image PATH")
            kw["image"] = image
        return kw

    def image_embeds(self, run: Any, seed: int) -> torch.Tensor | None:
        """Image-encoder states the pipeline would compute, drawn from ``seed`` (no image encoder)."""
        return None

    # -- prompts ----------------------------------------------------------------------------------

    def text_shape(self, config: Mapping[str, Any], text_len: int | None) -> tuple[int, int]:
        """(tokens, width) of the prompt embeddings a transformer takes."""
        width = int(config[self.text_width_key])
        fixed = config.get(self.text_len_key, self.text_len) if self.text_len_key else self.text_len
        return text_len or int(fixed), width

    def encode_prompt(
        self, pipe: Any, text: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(embeds, mask, negative embeds, negative mask) from the pipeline's own text encoder."""
        pe, ne = pipe.encode_prompt(
            prompt=text, negative_prompt=negative, do_classifier_free_guidance=True, device=device
        )
        return pe, None, ne, None

    # -- sizes and scheduling ---------------------------------------------------------------------

    def geometry(
        self,
        tcfg: Mapping[str, Any],
        vcfg: Mapping[str, Any] | None,
        expert_cfgs: list[Mapping[str, Any]],
    ) -> Geometry:
        """What the model accepts, from its transformer config (class defaults filled in), its VAE
        config (None: no VAE) and each expert's config."""
        return Geometry(
            16,
            16,
            4 if self.video else 0,
            text_width=config_int(tcfg, self.text_width_key, 4096),
            pipeline=self.pipeline_name(),
        )

    def frames(self, frames: int | None, default: int) -> int:
        """Frames a generation runs: images always one."""
        return (frames or default) if self.video else 1

    def scheduler_config(self, variant: str | None) -> dict[str, Any]:
        """The released scheduler config of this variant."""
        return dict(self.scheduler)

    # -- experts ----------------------------------------------------------------------------------

    def expert_boundary(self, variant: str | None) -> float | None:
        """Where a two-expert variant hands over (fraction of the training timesteps), else None."""
        return self.expert_boundaries.get(variant or "")

    def lone_expert_note(self, variant: str | None) -> str:
        return f"{self.title} {variant} baseline given without its second expert: one expert runs every step"

    def expands_timesteps(self, variant: str | None) -> bool:
        return (variant or "") in self.expand_timesteps_variants

    def vae_variant(self, variant: str) -> str:
        """The tiny VAE variant a tiny pipeline of ``variant`` is built with."""
        return self.tiny_vae
