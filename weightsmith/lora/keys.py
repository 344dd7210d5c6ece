"""What every LoRA reader shares: key roles, grouping keys into modules, entries, and the checks
made before any name is looked up (block bounds, finite values, the file's own key in errors)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch

from weightsmith.errors import ConversionError
from weightsmith.lora.model import LoraModule, all_finite, fold, name_some
from weightsmith.lora.names import adapter_for, adapters, blocks_beyond, lora_families, titles

# Key suffix -> role. Both naming schemes: kohya/ComfyUI (lora_down/lora_up) and PEFT (lora_A/lora_B).
_ROLES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"),
    (".lora_A.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_B.weight", "up"),
    (".lora_B.bias", "peft_bias"),
    (".lora_up.bias", "peft_bias"),
    (".diff_b", "bias"),
    (".diff", "diff"),
    (".alpha", "alpha"),
)


class Limits:
    """How deep a LoRA may reach: the base model's block count when fusing, else the family's bound."""

    def __init__(self, src: str, max_blocks: int | None) -> None:
        self.src = src
        self.max_blocks = max_blocks

    def check(self, names: Iterable[str], family: str | None) -> None:
        """Refuse module names that address a block the model cannot have, before any lookup."""
        names = list(names)
        if self.max_blocks is not None:
            deep = blocks_beyond(names, self.max_blocks)
            if deep:
                raise ConversionError(
                    f"{self.src}: {len(deep)} tensor(s) the LoRA changes are not in the base model, "
                    f"which has {self.max_blocks} blocks: {name_some(n + '.weight' for n, _ in deep)}",
                    hint="the LoRA was made for another model (variant, size or layer count); check both files",
                )
            return
        fams = [adapter_for(family)] if family in lora_families() else adapters()
        limit = max(a.max_blocks for a in fams)
        deep = blocks_beyond(names, limit)
        if deep:
            name, index = max(deep, key=lambda d: d[1])
            largest = max(a.largest_released for a in fams)
            what = titles(of=fams)
            raise ConversionError(
                f"{self.src}: LoRA module {name[:200]!r} is in block {index if index < 10**9 else 'beyond 10^9'}, "
                f"but no {what} model has that many (the deepest released has {largest}; "
                f"up to {limit} accepted)",
                hint="the file is corrupt or not a LoRA for these families",
            )


def refuse_nonfinite(src: str, key: str, t: torch.Tensor) -> None:
    if not all_finite(t):
        raise ConversionError(
            f"{src}: LoRA tensor {key!r} holds NaN or Inf values",
            hint="the LoRA is broken (a diverged training run?); fusing it would turn the model into NaN",
        )


def refuse_unknown(src: str, unknown: list[str], what: str) -> None:
    if unknown:
        raise ConversionError(
            f"{src}: {len(unknown)} key(s) are not {what}: {name_some(unknown)}",
            hint=f"check that this is a LoRA for a {titles()} transformer",
        )


def wrong_family(src: str, found: str, fmt: str, asked: str) -> ConversionError:
    return ConversionError(
        f"{src} is a {found} LoRA ({fmt} format), not a {asked} one",
        hint=f"use a {asked} LoRA, or drop --family / use a {found} base",
    )


# ------------------------------------------------------------------------------------- grouping
def _split_role(rest: str) -> tuple[str, str] | None:
    for suffix, role in _ROLES:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[: -len(suffix)], role
    return None


def group(
    keys: Mapping[str, torch.Tensor], name_of: Callable[[str], str | None], src: str = "LoRA"
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """{module: {role: tensor}} for keys whose stripped name ``name_of`` gives; the rest are unknown.

    Alphas are read to numbers here (``alpha`` role: a 0-d float tensor) and every tensor is
    checked to be finite, so errors can name the file's own key.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, t in keys.items():
        rest = name_of(key)
        split = _split_role(rest) if rest is not None else None
        if split is None:
            unknown.append(key)
            continue
        module, role = split
        slot = groups.setdefault(module, {})
        if role in slot:
            raise ConversionError(
                f"{src}: LoRA module {module!r} has two {role} tensors (e.g. {key!r})",
                hint="the file is corrupt or merges two LoRAs; re-export it",
            )
        if role == "alpha":
            t = torch.tensor(_alpha_value(t, key, src), dtype=torch.float64)
        else:
            refuse_nonfinite(src, key, t)
        slot[role] = t
    return groups, unknown


def _alpha_value(t: torch.Tensor, key: str, src: str = "LoRA") -> float:
    if t.numel() != 1:
        raise ConversionError(
            f"{src}: alpha {key!r} has {t.numel()} values, expected one", hint="the file is corrupt"
        )
    if t.is_complex() or t.dtype == torch.bool:
        raise ConversionError(f"{src}: alpha {key!r} is {t.dtype}, not a number", hint="the file is corrupt")
    value = float(t.reshape(()).float().item() if t.element_size() == 1 else t.reshape(()).item())
    if not math.isfinite(value):
        raise ConversionError(f"{src}: alpha {key!r} is {value}", hint="the file is corrupt")
    return value


def entry(
    module: str, parts: Mapping[str, torch.Tensor], alpha: float | None, param: bool = False
) -> LoraModule:
    """The LoraModule of one grouped module (``alpha``: from metadata, unless the file has its own)."""
    if "alpha" in parts:
        alpha = float(parts["alpha"].item())
    bias = parts.get("bias")
    down = parts.get("down")
    if "peft_bias" in parts:
        if bias is not None:
            raise ConversionError(
                f"LoRA module {module!r} has both a diff_b and a lora_B.bias",
                hint="the file is corrupt or merges two LoRAs; re-export it",
            )
        # PEFT multiplies lora_B.bias by alpha/rank like the product; a diff_b is added as it is.
        bias = parts["peft_bias"]
        if alpha is not None and down is not None and down.ndim >= 1 and down.shape[0] > 0:
            scale = alpha / down.shape[0]
            if abs(scale) <= 1e12:  # a larger scale is refused by LoraModule.check
                bias = fold(bias, scale)
    return LoraModule(
        module=module,
        down=down,
        up=parts.get("up"),
        alpha=alpha,
        bias=bias,
        diff=parts.get("diff"),
        param=param,
    )
