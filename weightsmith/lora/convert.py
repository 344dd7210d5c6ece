"""`weightsmith lora convert`: read a LoRA in any format, write it in another, say what happened."""

from __future__ import annotations

from pathlib import Path

from weightsmith.errors import UsageError
from weightsmith.lora.read import read_lora
from weightsmith.lora.write import (
    TARGETS,
    lora_output_path,
    original_state_dict,
    peft_state_dict,
    sat_state_dict,
    write_state,
)

# The family a target format belongs to (diffusers PEFT serves every family).
_FORMAT_FAMILY = {"original": "wan", "sat": "cogvideox"}


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

    ``to_format``: ``diffusers`` (PEFT, any family), ``original`` (Wan / ComfyUI) or ``sat``
    (CogVideoX SwissArmyTransformer). ``family`` insists on a family; when omitted it is detected
    (and implied by ``original``/``sat`` when names fit more than one family).
    ``sat_alpha``: the lora_alpha of SAT LoRAs read or written (SAT's default is 1).
    """
    if to_format not in TARGETS:
        raise UsageError(f"unknown LoRA format {to_format!r}", hint=f"choose one of {', '.join(TARGETS)}")
    implied = _FORMAT_FAMILY.get(to_format)
    if family is not None and implied is not None and family != implied:
        raise UsageError(
            f"--to {to_format} is a {implied} LoRA format, but --family is {family}",
            hint="use --to diffusers for other families",
        )
    lora = read_lora(src, family or None, sat_alpha=sat_alpha)
    if lora.family is None and implied in lora.candidates:
        lora.family = implied
    if to_format == "diffusers":
        sd, notes = peft_state_dict(lora, drop_diffs=drop_diffs)
        label = "diffusers PEFT"
    elif to_format == "original":
        sd, notes = original_state_dict(lora)
        label = "Wan original (ComfyUI)"
    else:
        sd, notes = sat_state_dict(lora, sat_alpha=sat_alpha, drop_diffs=drop_diffs)
        label = "CogVideoX SAT"
    out = write_state(sd, dst, to_format, overwrite=overwrite)
    lines = [f"{lora.describe()} -> {label}: {len(sd)} tensors"]
    lines += [f"  {n}" for n in lora.notes + notes]
    lines.append(str(out))
    return lines


__all__ = ["convert_lora", "lora_output_path"]
