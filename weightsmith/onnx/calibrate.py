"""Calibration inputs for ``int8-static`` from the verifier's reference generations.

The baseline pipeline runs its reference generations (``weightsmith.verify``'s runner, the same
prompts, seeds and scheduler a later ``verify`` scores with); a hook on the transformer records
the arguments of every denoising call and the family's export adapter turns them into the
graph's named inputs (``ExportAdapter.feed``). So the activation ranges are those the model sees
when it generates, not random tensors.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from weightsmith.families import get_component
from weightsmith.progress import bar
from weightsmith.verify.models import resolve_baseline
from weightsmith.verify.runner import Runner, prepare
from weightsmith.verify.settings import GenerationSettings


def reference_inputs(
    model: str | Path, settings: GenerationSettings, progress: bool = False
) -> list[dict[str, torch.Tensor]]:
    """The transformer's inputs at every step of MODEL's reference generations under ``settings``."""
    base = resolve_baseline(str(model))
    sched, settings, device, items = prepare(base, settings)
    runner = Runner(base, sched, settings, device)
    experts = {e: runner.baseline_module(e) for e in base.experts}
    tr = experts["transformer"]
    adapter = get_component(base.family, "transformer").export
    signature = inspect.signature(type(tr).forward)
    config = {k: v for k, v in dict(tr.config).items() if not k.startswith("_")}
    captured: list[dict[str, torch.Tensor]] = []

    def hook(mod: Any, args: tuple, kwargs: dict) -> None:
        named = dict(signature.bind_partial(mod, *args, **kwargs).arguments)
        named.pop("self", None)
        named.update(named.pop("kwargs", {}) or {})
        feeds = adapter.feed(named, config)
        captured.append(
            {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in feeds.items()}
        )

    handle = tr.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with bar(len(items), "calibrate", "gen", enabled=progress) as tick:
            runner.run(experts, items, tick, decode=False)
    finally:
        handle.remove()
    return captured
