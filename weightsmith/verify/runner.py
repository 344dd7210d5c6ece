"""The reference generations' shared machinery: settings resolved for the model, the (prompt, seed)
items, and a runner that builds the family's pipeline around any transformer and runs the items.

``verify``, ``sensitivity`` and ``imatrix`` all start here, so each runs exactly the same
generations from the same settings.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import weightsmith.verify.distributed as distributed
from weightsmith.errors import UsageError
from weightsmith.verify.cache import cache_key
from weightsmith.verify.inputs import (
    Prompt,
    encode_text_prompts,
    image_digest,
    load_image,
    load_prompt_file,
    read_text_prompts,
    seeded_image,
    seeded_prompt,
)
from weightsmith.verify.models import Baseline, load_transformer, load_vae
from weightsmith.verify.pipelines import (
    Generation,
    Parts,
    build_pipeline,
    generate,
    is_i2v,
    pipeline_class,
    place,
)
from weightsmith.verify.schedulers import SchedulerChoice, choose_scheduler
from weightsmith.verify.settings import GenerationSettings, check_options, pick_device


@dataclass
class Item:
    """One (prompt, seed) generation every model runs."""

    index: int
    prompt: Prompt
    seed: int
    image: Any = None

    @property
    def label(self) -> str:
        return f"{self.prompt.label}/seed{self.seed}"


class Runner:
    """Holds what every generation shares: the VAE, scheduler, settings, device, items."""

    def __init__(
        self, base: Baseline, sched: SchedulerChoice, settings: GenerationSettings, device: torch.device
    ):
        self.base, self.sched, self.settings, self.device = base, sched, settings, device
        self.vae: nn.Module | None = load_vae(base.vae, device) if base.vae is not None else None
        self._base_modules: dict[str, nn.Module] = {}

    def baseline_module(self, expert: str) -> nn.Module:
        if expert not in self._base_modules:
            src = self.base.experts[expert]
            self._base_modules[expert] = load_transformer(
                src, "weightsmith", self.base.config(expert), self.device, self.settings.torch_dtype
            )
        return self._base_modules[expert]

    def release_baseline(self) -> None:
        self._base_modules.clear()

    def parts(self, experts: dict[str, nn.Module]) -> Parts:
        two = experts.get("transformer_2")
        return Parts(
            self.base.family,
            self.base.variant,
            experts["transformer"],
            self.vae,
            self.sched,
            two,
            self.base.boundary_ratio if two is not None else None,
            self.base.expand_timesteps,
        )

    def run(
        self, experts: dict[str, nn.Module], items: list[Item], tick: Any, decode: bool = True
    ) -> list[Generation]:
        parts = self.parts(experts)
        pipe = build_pipeline(parts)
        place(pipe, self.device, self.settings.offload, self.settings.vae_tiling)
        out = []
        for it in items:
            out.append(
                generate(
                    pipe,
                    parts,
                    self.settings,
                    it.prompt,
                    it.seed,
                    it.image,
                    decode=decode and self.vae is not None,
                    device=self.device,
                )
            )
            tick.update(1)
        del pipe
        return out


def collect(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _prompts(settings: GenerationSettings, base: Baseline, device: torch.device) -> list[Prompt] | None:
    p = settings.prompts
    if p is None:
        return None
    path = Path(p)
    if path.suffix == ".safetensors":
        return load_prompt_file(path, base.family)
    texts = read_text_prompts(path)
    if base.folder is None:
        raise UsageError(
            "text prompts need the baseline pipeline's text encoder, and BASELINE is a transformer alone",
            hint="pass the pipeline folder as BASELINE, or --prompts as a .safetensors file of embeddings",
        )
    cls = pipeline_class(base.family, base.variant)
    return encode_text_prompts(base.folder, base.family, cls, texts, settings.negative_prompt, device)


def _items(base: Baseline, settings: GenerationSettings, prompts: list[Prompt] | None) -> list[Item]:
    i2v = is_i2v(base.family, base.variant)
    fixed_image = (
        load_image(settings.image, settings.height, settings.width) if (i2v and settings.image) else None
    )
    items = []
    for seed in settings.seeds:
        plist = (
            prompts
            if prompts is not None
            else [seeded_prompt(base.family, base.config(), seed, settings.text_len)]
        )
        for p in plist:
            img = None
            if i2v:
                img = (
                    fixed_image
                    if fixed_image is not None
                    else seeded_image(seed, settings.height, settings.width)
                )
            items.append(Item(len(items), p, seed, img))
    return items


def item_key(
    base_digest: str, sched: SchedulerChoice, settings: GenerationSettings, item: Item, base: Baseline
) -> str:
    return cache_key(
        {
            "baseline": base_digest,
            "family": base.family,
            "variant": base.variant,
            "boundary_ratio": base.boundary_ratio,
            "expand_timesteps": base.expand_timesteps,
            "settings": settings.key_material(),
            "scheduler": sched.key_material(),
            "prompt": item.prompt.digest(),
            "image": image_digest(item.image) if item.image is not None else None,
            "seed": item.seed,
        }
    )


def prepare(
    base: Baseline, settings: GenerationSettings, world: distributed.World | None = None
) -> tuple[SchedulerChoice, GenerationSettings, torch.device, list[Item]]:
    """Scheduler, resolved settings, device and the (prompt, seed) items of a reference run."""
    world = world or distributed.World()
    from weightsmith.verify.geometry import check_prompts, fit_settings

    check_options(settings)
    sched = choose_scheduler(base.family, base.variant, settings.scheduler, base.scheduler_config)
    settings, size_notes = fit_settings(base, settings, sched.steps, sched.guidance)
    for note in size_notes:
        if note not in base.notes:
            base.notes.append(note)
    device = pick_device(settings.device)
    if is_i2v(base.family, base.variant) and base.vae is None:
        raise UsageError(
            f"{base.family} {base.variant} is image-to-video: its pipeline encodes the image with the VAE",
            hint="pass --vae PATH, or the pipeline folder as BASELINE",
        )
    if settings.offload != "none" and device.type == "cpu":
        raise UsageError(
            f"--offload {settings.offload} needs a GPU (it keeps weights on the CPU and moves them to the GPU in turn)",
            hint="drop --offload on a CPU-only machine",
        )
    prompts = distributed.share_call(world, lambda: _prompts(settings, base, device))
    check_prompts(base, prompts)
    return sched, settings, device, _items(base, settings, prompts)
