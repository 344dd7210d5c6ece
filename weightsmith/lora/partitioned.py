"""Reading a partitioned native LoRA (e.g. SwissArmyTransformer's ``matrix_A.i`` / ``matrix_B.i``).

A fused native module (qkv) carries either one low-rank pair per Diffusers module it becomes
(partition i -> module i), or a single pair whose up rows are cut as the base weight's rows are,
by the family's own conversion op (``Link``). The family's adapter names keys and links; this
module checks and cuts. Such a LoRA may sit inside a whole LoRA-trained checkpoint: the other
tensors are ignored. The scale is ``lora_alpha / r`` with ``lora_alpha`` given by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.lora import ComponentLora
from weightsmith.lora.keys import Limits, refuse_nonfinite, wrong_family
from weightsmith.lora.model import Lora, LoraModule, name_some

_MAX_PART_DIGITS = 3  # a native module has a handful of partitions (qkv: 3)


def check_alpha(adapter: ComponentLora, sat_alpha: float) -> None:
    if not (sat_alpha > 0 and math.isfinite(sat_alpha)):
        raise UsageError(
            f"{adapter.partition_label} lora_alpha must be a positive number, got {sat_alpha}",
            hint="give --sat-alpha a positive number (the lora_alpha the LoRA was trained with)",
        )


def _collect(
    adapter: ComponentLora, state: Mapping[str, torch.Tensor], src: str
) -> tuple[dict[str, dict[int, dict[str, torch.Tensor]]], int]:
    """{native module: {partition: {down/up: tensor}}} and how many other tensors were ignored."""
    label = adapter.partition_label
    parts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    ignored = 0
    for key, t in state.items():
        split = adapter.split_partition_key(key)
        if split is None:
            ignored += 1  # a LoRA-trained checkpoint keeps every base weight beside the LoRA
            continue
        module, role, digits = split
        if len(digits) > _MAX_PART_DIGITS:
            raise ConversionError(
                f"{src}: {label} LoRA key {key[:200]!r} names partition {digits[:12]}..., "
                f"but a {label} module has at most a few",
                hint=f"the file is corrupt or not a {label} LoRA",
            )
        refuse_nonfinite(src, key, t)
        slot = parts.setdefault(module, {}).setdefault(int(digits), {})
        if role in slot:
            name = adapter.partition_roles[0 if role == "down" else 1]
            raise ConversionError(
                f"{src}: {label} LoRA module {module!r} has two {name}.{int(digits)} tensors (e.g. {key!r})",
                hint="the file is corrupt",
            )
        slot[role] = t
    return parts, ignored


def read_partitioned(
    adapter: ComponentLora,
    state: Mapping[str, torch.Tensor],
    family: str | None,
    sat_alpha: float,
    src: str,
    limits: Limits,
) -> Lora:
    fmt = adapter.partition_format or ""
    label = adapter.partition_label
    if family not in (None, adapter.family):
        raise wrong_family(src, adapter.family, fmt, family)  # type: ignore[arg-type]
    check_alpha(adapter, sat_alpha)
    parts, ignored = _collect(adapter, state, src)
    limits.check(parts, adapter.family)  # before a model is sized from the layer count
    names = adapter.links(max(adapter.native_layers_needed(parts), 1))
    unknown = sorted(n for n in parts if n not in names.by_native)
    if unknown:
        raise ConversionError(
            f"{src}: {len(unknown)} {label} LoRA module(s) are not part of a {adapter.display} transformer: "
            f"{name_some(unknown)}",
            hint=f"check that this is a {adapter.display} {label} LoRA",
        )
    down_name, up_name = adapter.partition_roles
    entries: list[LoraModule] = []
    for native in sorted(parts):
        link = names.by_native[native]
        by_part = parts[native]
        k = len(by_part)
        if sorted(by_part) != list(range(k)):
            raise ConversionError(
                f"{src}: {label} LoRA module {native!r} has partitions {sorted(by_part)}, expected 0..{k - 1}",
                hint="the file is corrupt or incomplete",
            )
        for j, p in by_part.items():
            if set(p) != {"down", "up"}:
                lack = up_name if "up" not in p else down_name
                raise ConversionError(
                    f"{src}: {label} LoRA module {native!r} partition {j} has no {lack}",
                    hint="the file is corrupt or incomplete",
                )
        n = len(link.diffusers)
        if k == n and link.partitions_match:
            for j, d in enumerate(link.diffusers):
                entries.append(LoraModule(d, by_part[j]["down"], by_part[j]["up"], alpha=sat_alpha))
        elif k == 1:
            # One LoRA over the fused module: its up rows are cut as the base weight's rows are.
            try:
                ups = link.rows_to_diffusers(by_part[0]["up"])
            except ConversionError as e:
                raise ConversionError(f"{src}: {e.message}", hint=e.hint) from None
            for d, up in zip(link.diffusers, ups):
                entries.append(LoraModule(d, by_part[0]["down"], up.contiguous(), alpha=sat_alpha))
        else:
            raise ConversionError(
                f"{src}: {label} LoRA module {native!r} has {k} partitions but maps to {n} Diffusers modules "
                f"({', '.join(link.diffusers)})",
                hint="expected one partition per module (qkv: 3) or a single partition",
            )
    lora = Lora(adapter.family, fmt, entries, src)
    lora.notes.append(f"{label} scale lora_alpha/r with lora_alpha = {sat_alpha:g}")
    if ignored:
        lora.notes.append(
            f"left out {ignored} non-LoRA tensors (base weights of a LoRA-trained {label} checkpoint)"
        )
    return lora
