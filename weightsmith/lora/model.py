"""A LoRA as weightsmith holds it: one entry per Diffusers module, whatever file format it came from.

Every reader turns its keys into ``LoraModule`` entries named as modules of the family's Diffusers
class (``blocks.0.attn1.to_q``), and every writer and the fuser start from those entries, so a
format is one reader and one writer, never a pair-by-pair converter.

The effective change an entry makes to its module, at user strength ``s``:

    weight += s * (scale * up @ down + diff)        scale = alpha / rank, or 1 with no alpha
    bias   += s * bias

``bias`` is ComfyUI's ``diff_b`` and PEFT's ``lora_B.bias``; neither is scaled by alpha/rank
(ComfyUI adds diff_b at strength only; a PEFT file written here has alpha == rank).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from weightsmith.errors import ConversionError

SHOW = 5  # how many names an error message lists
# No real LoRA scales its product by more than this (alpha/rank is typically 0.5..2, rsLoRA a few
# tens); beyond it float32 weights overflow, so the scale can only come from a corrupt alpha.
_MAX_SCALE = 1e12


def name_some(names: Iterable[str], n: int = SHOW) -> str:
    """The first ``n`` names (sorted, quoted) and a count of the rest, for one-line errors."""
    ns = sorted(set(names))
    shown = ", ".join(repr(k) for k in ns[:n])
    return shown + (f" and {len(ns) - n} more" if len(ns) > n else "")


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of a float tensor is finite (float8 e4m3 has no isfinite kernel: widened)."""
    if not t.is_floating_point():
        return True
    if t.element_size() == 1:
        t = t.float()
    return bool(torch.isfinite(t).all())


def fold(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t * factor`` computed in at least float32 and stored in ``t``'s dtype (1 -> unchanged)."""
    if factor == 1.0:
        return t
    acc = torch.promote_types(t.dtype, torch.float32)
    return (t.to(acc) * factor).to(t.dtype).contiguous()


@dataclass
class LoraModule:
    """What one LoRA does to one module of the Diffusers model.

    ``down`` is lora_A / lora_down ``[rank, in]`` (or ``[rank, in, kh, kw]`` for a conv), ``up``
    is lora_B / lora_up ``[out, rank]`` (or ``[out, rank, 1, 1]``). ``alpha`` is the stored
    network alpha; None means scale 1 (PEFT's convention when no alpha is stored). ``param``
    marks an entry whose ``module`` names a parameter itself (Wan's ``scale_shift_table``),
    which only a full ``diff`` can target.
    """

    module: str
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    bias: torch.Tensor | None = None
    diff: torch.Tensor | None = None
    param: bool = False

    @property
    def rank(self) -> int | None:
        return None if self.down is None else int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank: the factor the low-rank product is multiplied by."""
        if self.alpha is None or self.rank is None:
            return 1.0
        return self.alpha / self.rank

    @property
    def weight_key(self) -> str:
        return self.module if self.param else f"{self.module}.weight"

    @property
    def bias_key(self) -> str:
        return f"{self.module}.bias"

    @property
    def has_lowrank(self) -> bool:
        return self.down is not None and self.up is not None

    @property
    def out_features(self) -> int | None:
        if self.up is not None:
            return int(self.up.shape[0])
        if self.diff is not None:
            return int(self.diff.shape[0])
        return None if self.bias is None else int(self.bias.shape[0])

    def check(self, where: str = "") -> None:
        """Refuse entries whose tensors cannot form a delta (mismatched ranks, odd shapes)."""
        at = f"{where}: " if where else ""
        m = self.module
        if (self.down is None) != (self.up is None):
            have, lack = ("lora_A", "lora_B") if self.up is None else ("lora_B", "lora_A")
            raise ConversionError(
                f"{at}LoRA module {m!r} has {have} but no {lack}",
                hint="the file is incomplete or not a LoRA; re-export it",
            )
        if self.down is None and self.diff is None and self.bias is None:
            raise ConversionError(
                f"{at}LoRA module {m!r} carries only an alpha", hint="the file is incomplete"
            )
        for what, t in (
            ("lora_A", self.down),
            ("lora_B", self.up),
            ("diff", self.diff),
            ("diff_b", self.bias),
        ):
            if t is None:
                continue
            if not t.is_floating_point():
                raise ConversionError(
                    f"{at}LoRA module {m!r}: {what} is {t.dtype}, not a float tensor",
                    hint="the LoRA file is corrupt or made for another model; re-export it",
                )
            if what in ("lora_A", "lora_B") and t.ndim >= 2 and t.shape[0 if what == "lora_A" else 1] == 0:
                raise ConversionError(
                    f"{at}LoRA module {m!r} has rank 0 ({what} {list(t.shape)}), which changes nothing",
                    hint="the file is corrupt or not a LoRA; re-export it",
                )
            if t.ndim == 0 or t.numel() == 0:
                raise ConversionError(
                    f"{at}LoRA module {m!r}: {what} has shape {list(t.shape)}, which holds no delta",
                    hint="the file is corrupt or not a LoRA",
                )
            if not all_finite(t):
                raise ConversionError(
                    f"{at}LoRA module {m!r}: {what} holds NaN or Inf values",
                    hint="the LoRA is broken (a diverged training run?); it would turn the model into NaN",
                )
        if self.down is not None and self.up is not None:
            if self.down.ndim not in (2, 4) or self.up.ndim != self.down.ndim:
                raise ConversionError(
                    f"{at}LoRA module {m!r}: lora_A {list(self.down.shape)} and lora_B "
                    f"{list(self.up.shape)} are not a linear or conv LoRA pair",
                    hint="the file is corrupt or not a LoRA",
                )
            if self.up.shape[1] != self.down.shape[0]:
                raise ConversionError(
                    f"{at}LoRA module {m!r}: lora_A has rank {self.down.shape[0]} but lora_B has rank "
                    f"{self.up.shape[1]} (shapes {list(self.down.shape)} and {list(self.up.shape)})",
                    hint="the file is corrupt or mixes two LoRAs; re-export it",
                )
            if any(int(s) != 1 for s in self.up.shape[2:]):
                raise ConversionError(
                    f"{at}LoRA module {m!r}: a conv lora_B must be 1x1, got {list(self.up.shape)}",
                    hint="the file is corrupt or not a LoRA; re-export it",
                )
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise ConversionError(f"{at}LoRA module {m!r} has alpha {self.alpha}", hint="the file is corrupt")
        if self.alpha is not None and abs(self.scale) > _MAX_SCALE:
            raise ConversionError(
                f"{at}LoRA module {m!r}: alpha {self.alpha:g} over rank {self.rank} is a scale of "
                f"{self.scale:g}, which overflows any weight it touches",
                hint="the file is corrupt",
            )
        out = self.out_features
        if self.bias is not None and (self.bias.ndim != 1 or (out is not None and self.bias.shape[0] != out)):
            raise ConversionError(
                f"{at}LoRA module {m!r}: bias delta {list(self.bias.shape)} does not fit {out} output rows",
                hint="the LoRA file is corrupt or made for another model; re-export it",
            )
        if self.diff is not None and self.up is not None and self.diff.shape[0] != self.up.shape[0]:
            raise ConversionError(
                f"{at}LoRA module {m!r}: diff {list(self.diff.shape)} and lora_B {list(self.up.shape)} disagree",
                hint="the file is corrupt or mixes two LoRAs; re-export it",
            )

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        """Whether this entry's weight delta has the base weight's shape."""
        if self.diff is not None and tuple(self.diff.shape) != tuple(weight_shape):
            return False
        if self.down is None or self.up is None:
            return True
        if not weight_shape or self.up.shape[0] != weight_shape[0]:
            return False
        return self.down[0].numel() == math.prod(weight_shape[1:])

    def weight_delta(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """``scale * up @ down + diff`` in ``dtype``, shaped like the base weight (None if no weight change)."""
        delta = None
        if self.down is not None and self.up is not None:
            up = self.up.reshape(self.up.shape[0], -1).to(dtype)
            down = self.down.reshape(self.down.shape[0], -1).to(dtype)
            delta = (up @ down).reshape(shape)
            if self.scale != 1.0:
                delta = delta * self.scale
        if self.diff is not None:
            diff = self.diff.to(dtype).reshape(shape)
            delta = diff.clone() if delta is None else delta + diff
        return delta


@dataclass
class Lora:
    """A LoRA read from a file: its family, the format it was stored in, and its entries.

    ``family`` is None when the module names fit more than one family (``candidates`` lists
    them; CogVideoX and Sana share ``transformer_blocks.N.attn1.*``). ``notes`` say what the
    reader left out or assumed, for the summary.
    """

    family: str | None
    format: str
    modules: list[LoraModule]
    source: str = ""
    candidates: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        if not self.modules:
            raise ConversionError(f"{self.source or 'LoRA'}: no LoRA modules found", hint="check the file")
        seen: set[str] = set()
        for m in self.modules:
            if m.module in seen:
                raise ConversionError(
                    f"{self.source}: LoRA module {m.module!r} appears twice",
                    hint="the file is corrupt or mixes two LoRAs; re-export it",
                )
            seen.add(m.module)
            m.check(self.source)

    def ranks(self) -> list[int]:
        return sorted({r for m in self.modules if (r := m.rank) is not None})

    def alphas(self) -> list[float]:
        return sorted({m.alpha for m in self.modules if m.alpha is not None})

    def describe(self) -> str:
        """One line: family, format, module count, ranks and scales."""
        ranks = self.ranks()
        scales = sorted({round(m.scale, 6) for m in self.modules if m.has_lowrank})
        fam = self.family or "/".join(self.candidates) or "unknown family"
        parts = [f"{fam} LoRA ({self.format})", f"{len(self.modules)} modules"]
        if ranks:
            parts.append("rank " + ",".join(map(str, ranks)))
        if scales and scales != [1.0]:
            parts.append("scale alpha/rank " + ",".join(f"{s:g}" for s in scales))
        n_diff = sum(m.diff is not None for m in self.modules)
        n_bias = sum(m.bias is not None for m in self.modules)
        if n_diff:
            parts.append(f"{n_diff} full-weight diffs")
        if n_bias:
            parts.append(f"{n_bias} bias diffs")
        return ", ".join(parts)
