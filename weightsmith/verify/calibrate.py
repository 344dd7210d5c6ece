"""Activation calibration: the largest |input| every Linear of the transformer sees in the
reference generations ``verify`` runs, for static activation scales (``quantize --calibrate``).

The generations and hooks are ``imatrix``'s (``importance.run_linear_hooks``): same settings, same
(prompt, seed) items, every step and CFG branch. The result is keyed by Diffusers module name
(``blocks.0.attn1.to_q``), the names ``LinearOptions.activation_absmax`` takes. quantize sits below
verify, so the CLI calls this and hands the numbers down.

A layer fed NaN or an infinity is refused by name: a static scale computed from it would be
NaN or 0 and every activation through the layer lost. A Linear the generations never call (an
image-to-video projection in a text-to-video run) has no entry; writers say what they do then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from weightsmith.errors import InputError
from weightsmith.verify.importance import run_linear_hooks
from weightsmith.verify.settings import GenerationSettings


@dataclass
class Calibration:
    """Per-Linear max |input activation| (Diffusers module names), and how it was measured."""

    absmax: dict[str, float]
    items: int
    settings: GenerationSettings
    unseen: list[str] = field(default_factory=list)  # Linear layers no generation called
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        s = self.settings
        lines = [
            f"calibration: max |input| of {len(self.absmax)} Linear layers from {self.items} generation(s) "
            f"(seeds {list(s.seeds)}, {s.steps} steps, {s.height}x{s.width}) in {self.seconds:.1f} s"
        ]
        if self.unseen:
            shown = ", ".join(self.unseen[:3]) + (
                f" and {len(self.unseen) - 3} more" if len(self.unseen) > 3 else ""
            )
            lines.append(f"  note: {len(self.unseen)} Linear layer(s) never called: {shown}")
        return lines + [f"  note: {n}" for n in self.notes]


class _AbsMax:
    """Pre-hooks keeping each Linear's largest |input| (on the device; read once at the end)."""

    def __init__(self) -> None:
        self.amax: dict[str, torch.Tensor] = {}

    def hook_for(self, name: str, _mod: nn.Linear) -> Callable[[nn.Module, tuple], None]:
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            if x.numel() == 0:
                return
            a = x.abs().amax().to(torch.float32)
            prev = self.amax.get(name)
            # NaN survives torch.maximum, so one non-finite call marks the layer for good.
            self.amax[name] = a if prev is None else torch.maximum(prev, a)

        return hook


def calibrate_activations(
    model: str,
    settings: GenerationSettings,
    *,
    vae: str | None = None,
    progress: bool = True,
) -> Calibration:
    """Run MODEL's reference generations and return each Linear's max |input activation|."""
    t0 = time.perf_counter()
    hooks = _AbsMax()
    run = run_linear_hooks(model, settings, hooks.hook_for, vae=vae, progress=progress, label="calibrate")
    absmax = {name: float(v) for name, v in hooks.amax.items()}
    bad = sorted(n for n, v in absmax.items() if not torch.isfinite(torch.tensor(v)))
    if bad:
        raise InputError(
            f"calibration: Linear {bad[0]} receives non-finite activations ({absmax[bad[0]]}) in the "
            f"reference generations" + (f", and {len(bad) - 1} more layers" if len(bad) > 1 else ""),
            hint="the model overflows at these settings: check its weights (weightsmith verify against "
            "its source), or quantize without --calibrate",
        )
    linears = [n for n, m in run.transformer.named_modules() if isinstance(m, nn.Linear)]
    notes = []
    if "transformer_2" in run.base.experts:
        notes.append("two experts: measured on the high-noise transformer (the one quantize picks)")
    return Calibration(
        absmax,
        run.items,
        run.settings,
        [n for n in linears if n not in absmax],
        notes,
        time.perf_counter() - t0,
    )
