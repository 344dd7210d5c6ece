"""Fusing LoRAs into base weights, alone or while a conversion streams.

``fuse`` adds ``strength * (scale * up @ down + diff)`` (and ``strength * bias``) to one base
tensor in float32 (float64 for a float64 base) and rounds once, to the base dtype or the
conversion's output dtype. ``fused_stream`` wraps the conversion engine's ``stream``: each output
tensor that a LoRA targets gets its delta as it passes, so memory stays one tensor plus the LoRAs
(which are small). Several LoRAs each carry their own strength (``--lora PATH[:SCALE]``);
``--lora-scale`` is the strength of those given without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from weightsmith.convert.engine import CASTABLE, Plan, stream
from weightsmith.errors import ConversionError, UsageError
from weightsmith.families import get_component
from weightsmith.lora.model import Lora, LoraModule, all_finite, name_some
from weightsmith.lora.options import check_strength
from weightsmith.lora.read import read_lora

LoraSpec = tuple[str | Path | Lora, float]


def fuse(
    base: torch.Tensor,
    contributions: Sequence[tuple[LoraModule, float]],
    part: str = "weight",
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``base`` plus every (entry, strength)'s delta for ``part`` ("weight" or "bias"), rounded once."""
    if not base.is_floating_point():
        raise ConversionError(
            f"cannot add a LoRA delta to a {base.dtype} tensor", hint="fuse before quantizing"
        )
    acc_dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    acc = base.to(acc_dtype, copy=True)
    shape = tuple(base.shape)
    for m, strength in contributions:
        if part == "bias":
            delta = None if m.bias is None else m.bias.to(acc_dtype)
        else:
            delta = m.weight_delta(shape, acc_dtype)
        if delta is not None:
            acc.add_(delta.reshape(shape), alpha=strength)
    return acc.to(out_dtype or base.dtype)


@dataclasses.dataclass
class _Target:
    part: str
    contributions: list[tuple[LoraModule, float]]


class FusedStream:
    """Iterator of ``(name, tensor)`` like ``stream(plan)``, with LoRA deltas added on the way.

    Built eagerly: every LoRA is read and checked against the plan's output names and shapes
    before the first tensor is produced, so a bad LoRA fails before a writer starts.
    ``lines`` summarises what will be fused.
    """

    def __init__(self, plan: Plan, loras: Sequence[LoraSpec], *, progress: bool = False) -> None:
        if plan.target_layout != "diffusers":
            raise UsageError(
                f"LoRAs are fused into Diffusers-layout output, not {plan.target_layout!r}",
                hint="convert with --to diffusers to fuse, then convert the fused model onward",
            )
        det = plan.detection
        adapter = get_component(det.family, det.component).lora
        if adapter is None:
            raise UsageError(
                f"LoRAs apply to a transformer, and this is a {det.family} {det.component}",
                hint="convert the transformer with --lora, and this component without",
            )
        self.plan = plan
        self.progress = progress
        self.lines: list[str] = []
        specs = {s.name: s for s in plan.specs}
        # A LoRA cannot change a block the base does not have: checked before its names are looked up.
        blocks = adapter.layers_needed(specs)
        self.targets: dict[str, _Target] = {}
        for item, strength in loras:
            check_strength(float(strength), "a LoRA strength")
            lora = item if isinstance(item, Lora) else read_lora(item, family=det.family, max_blocks=blocks)
            if lora.family not in (None, det.family) or (
                lora.family is None and det.family not in lora.candidates
            ):
                raise ConversionError(
                    f"{lora.source} is a {lora.family or '/'.join(lora.candidates)} LoRA; the base is {det.family}",
                    hint="use a LoRA made for this model",
                )
            self._add(lora, float(strength), specs)
            self.lines.append(f"fused {lora.describe()} at strength {float(strength):g}: {lora.source}")
            self.lines += [f"  {n}" for n in lora.notes]

    def _add(self, lora: Lora, strength: float, specs: dict) -> None:
        missing, misfit = [], []
        for m in lora.modules:
            wants_weight = m.has_lowrank or m.diff is not None
            keys = ([(m.weight_key, "weight")] if wants_weight else []) + (
                [(m.bias_key, "bias")] if m.bias is not None else []
            )
            for key, part in keys:
                spec = specs.get(key)
                if spec is None:
                    missing.append(key)
                    continue
                ok = m.fits(spec.shape) if part == "weight" else (tuple(spec.shape) == tuple(m.bias.shape))  # type: ignore[union-attr]
                if not ok or not spec.dtype.is_floating_point:
                    misfit.append(f"{key} {list(spec.shape)}")
                    continue
                self.targets.setdefault(key, _Target(part, [])).contributions.append((m, strength))
        if missing:
            raise ConversionError(
                f"{lora.source}: {len(missing)} tensor(s) the LoRA changes are not in the base model: "
                f"{name_some(missing)}",
                hint="the LoRA was made for another model (variant, size or layer count); check both files",
            )
        if misfit:
            raise ConversionError(
                f"{lora.source}: the LoRA's deltas do not fit {len(misfit)} base tensor(s): {name_some(misfit)}",
                hint="the LoRA was made for a model of another width; check both files",
            )

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self._run()

    def _run(self) -> Iterator[tuple[str, torch.Tensor]]:
        plan = self.plan
        out_dtypes = {s.name: s.dtype for s in plan.specs}
        # Stream without the cast so a fused tensor is rounded once, straight to the output dtype.
        raw = dataclasses.replace(plan, cast=None)
        for name, t in stream(raw, self.progress):
            want = out_dtypes[name] if plan.cast is not None and t.dtype in CASTABLE else t.dtype
            target = self.targets.get(name)
            if target is not None:
                fused = fuse(t, target.contributions, target.part, out_dtype=want)
                if not all_finite(fused) and all_finite(t):
                    raise ConversionError(
                        f"fusing the LoRA(s) into {name} gives NaN or Inf values "
                        f"(the delta overflows {str(want).removeprefix('torch.')})",
                        hint="lower the LoRA strength, or check the LoRA: its values are far too large",
                    )
                t = fused
            elif t.dtype != want:
                t = t.to(want)
            yield name, t


def fused_stream(plan: Plan, loras: Sequence[LoraSpec], *, progress: bool = False) -> FusedStream:
    """``stream(plan)`` with ``loras`` ((path or Lora, strength) pairs) fused in; checked up front."""
    return FusedStream(plan, loras, progress=progress)
