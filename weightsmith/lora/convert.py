"""`weightsmith lora convert`: read a LoRA in any format, write it in another, say what happened."""

from __future__ import annotations

from pathlib import Path

from weightsmith.errors import UsageError
from weightsmith.lora.names import target, targets
from weightsmith.lora.read import read_lora
from weightsmith.lora.write import lora_output_path, target_state_dict, write_state


def convert_lora(
    src: str | Path,
    dst: str | Path,
    to_format: str,
    family: str | None = None,
    *,
    overwrite: bool = False,
    drop_diffs: bool = False,
    sat_alpha: float = 1.0,
) -> list[str]:
    """Convert a LoRA file between formats; returns summary lines (the last is the output path).

    ``to_format``: ``diffusers`` (PEFT, any family) or a family's own format (``names.targets()``,
    e.g. ``original`` for Wan / ComfyUI, ``sat`` for CogVideoX). ``family`` insists on a family;
    when omitted it is detected (and implied by a family's own format when names fit more than
    one family). ``sat_alpha``: the lora_alpha of partitioned (SAT) LoRAs read or written (SAT's
    default is 1).
    """
    if to_format not in targets():
        raise UsageError(f"unknown LoRA format {to_format!r}", hint=f"choose one of {', '.join(targets())}")
    owner = target(to_format)
    implied = None if owner is None else owner[0].family
    if family is not None and implied is not None and family != implied:
        raise UsageError(
            f"--to {to_format} is a {implied} LoRA format, but --family is {family}",
            hint="use --to diffusers for other families",
        )
    lora = read_lora(src, family or None, sat_alpha=sat_alpha)
    if lora.family is None and implied in lora.candidates:
        lora.family = implied
    sd, notes, label = target_state_dict(lora, to_format, sat_alpha=sat_alpha, drop_diffs=drop_diffs)
    out = write_state(sd, dst, to_format, overwrite=overwrite)
    lines = [f"{lora.describe()} -> {label}: {len(sd)} tensors"]
    lines += [f"  {n}" for n in lora.notes + notes]
    lines.append(str(out))
    return lines


__all__ = ["convert_lora", "lora_output_path"]
