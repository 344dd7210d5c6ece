"""Reading a LoRA file and telling its family and format from its key names.

Formats read (``Lora.format``; ``names.formats()`` lists them):

* ``diffusers``: PEFT keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (optional
  ``lora_B.bias``), Diffusers module names, for every family with a LoRA adapter. Alphas come
  from the ``lora_adapter_metadata`` Diffusers stores in the safetensors header (``alphas.py``).
* a family's dotted native names (ComfyUI style, ``diffusion_model.<native module>.lora_down.weight``
  or ``lora_A``/``lora_B``; prefix ``diffusion_model.``, ``model.diffusion_model.`` or none) with
  optional ``.alpha``, ``.diff`` (full weight delta) and ``.diff_b`` (bias delta).
* a family's underscore names (kohya / musubi-tuner ``lora_unet_<native_module>.lora_down.weight``
  + ``.alpha``).
* a family's partitioned native modules (``partitioned.py``).

Which family's naming a file uses is asked of the families' LoRA adapters
(``weightsmith.families.lora``). Pickles are read through ``weightsmith.io`` (weights_only,
never executed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from weightsmith.errors import ConversionError, InputError
from weightsmith.families.lora import ComponentLora
from weightsmith.io import PipelineCheckpoint, open_checkpoint
from weightsmith.lora.alphas import peft_alphas
from weightsmith.lora.keys import Limits, entry, group, refuse_unknown, wrong_family
from weightsmith.lora.model import Lora, name_some
from weightsmith.lora.names import (
    adapter_for,
    adapters,
    diffusers_families,
    native_adapter,
    titles,
    unknown_diffusers_modules,
)
from weightsmith.lora.partitioned import read_partitioned

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what Diffusers' save_lora_weights writes

_DORA = (".dora_scale", ".lora_magnitude_vector")
# Keys of other pipeline components a transformer LoRA file may carry; left out with a note.
_FOREIGN = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")
_NATIVE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_PEFT_PREFIX = "transformer."
_PREFIXES = (*_NATIVE_PREFIXES, _PEFT_PREFIX, "base_model.model.", "")


def read_lora(
    path: str | Path,
    family: str | None = None,
    *,
    sat_alpha: float = 1.0,
    max_blocks: int | None = None,
) -> Lora:
    """Read and check a LoRA file (or a folder holding ``pytorch_lora_weights.safetensors``).

    ``family`` insists on a family (and settles families that share Diffusers names, such as
    CogVideoX and Sana); ``sat_alpha`` is the ``lora_alpha`` a partitioned (SAT) LoRA was trained
    with; ``max_blocks`` is the block count of the base model the LoRA is for (when fusing), else
    the family's bound.
    """
    state, metadata = load_state(path)
    return lora_from_state_dict(
        state, metadata, family=family, sat_alpha=sat_alpha, source=str(path), max_blocks=max_blocks
    )


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors of a LoRA file and its container metadata (LoRAs are small: read whole)."""
    p = Path(path)
    if p.is_dir() and (p / LORA_WEIGHT_NAME).is_file():
        p = p / LORA_WEIGHT_NAME
    ck = open_checkpoint(p)
    if isinstance(ck, PipelineCheckpoint):
        ck.close()
        raise InputError(
            f"{path} is a Diffusers pipeline folder, not a LoRA",
            hint=f"point at the LoRA file or the folder holding {LORA_WEIGHT_NAME}",
        )
    try:
        state = {k: ck.get(k) for k in ck}
        return state, dict(ck.metadata)
    finally:
        ck.close()


def lora_from_state_dict(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    *,
    family: str | None = None,
    sat_alpha: float = 1.0,
    source: str = "",
    max_blocks: int | None = None,
) -> Lora:
    """Detect the format and family of LoRA keys and turn them into Diffusers-named entries.

    Block indices are checked before the names are looked up: against ``max_blocks`` (the base
    model's block count) when given, else against the family's bound (its adapter's ``max_blocks``).
    """
    if family is not None:
        adapter_for(family)  # UsageError for a family without LoRA names
    src = source or "LoRA"
    limits = Limits(src, max_blocks)
    if not state:
        raise InputError(f"{src} holds no tensors", hint="check the file")
    foreign = [k for k in state if k.startswith(_FOREIGN)]
    own = {k: v for k, v in state.items() if k not in set(foreign)}
    if not own:
        raise InputError(
            f"{src} holds only text-encoder LoRA keys", hint="weightsmith handles transformer LoRAs"
        )
    dora = [k for k in own if k.endswith(_DORA)]
    if dora:
        raise ConversionError(
            f"{src} is a DoRA (keys such as {name_some(dora, 2)}); DoRA is not supported",
            hint="use a plain LoRA, or merge the DoRA into the base with the tool that trained it",
        )
    partitioned = _partitioned_adapter(own)
    underscore = _underscore_adapter(own)
    if partitioned is not None:
        lora = read_partitioned(partitioned, own, family, sat_alpha, src, limits)
    elif underscore is not None:
        lora = _read_underscore(underscore, own, family, src, limits)
    else:
        lora = _read_dotted(own, metadata or {}, family, src, limits)
    if foreign:
        lora.notes.append(f"left out {len(foreign)} text-encoder keys (e.g. {foreign[0]!r})")
    lora.check()
    lora.modules.sort(key=lambda m: m.module)
    return lora


def _partitioned_adapter(state: Mapping[str, torch.Tensor]) -> ComponentLora | None:
    """The first family whose partitioned naming matches any key."""
    for a in adapters():
        if a.partition_format is not None and any(a.split_partition_key(k) is not None for k in state):
            return a
    return None


def _underscore_adapter(state: Mapping[str, torch.Tensor]) -> ComponentLora | None:
    """The first family with underscore names whose prefix starts any key."""
    for a in adapters():
        if a.underscore_format is not None and any(k.startswith(a.underscore_prefix) for k in state):
            return a
    return None


# ---------------------------------------------------------------------------- native names
def _read_native(
    adapter: ComponentLora,
    groups: dict[str, dict[str, torch.Tensor]],
    fmt: str,
    family: str | None,
    src: str,
    limits: Limits,
) -> Lora:
    if family not in (None, adapter.family):
        raise wrong_family(src, adapter.family, fmt, family)  # type: ignore[arg-type]
    limits.check(groups, adapter.family)
    modules = []
    for native, parts in groups.items():
        mapped = adapter.native_to_diffusers(native)
        if mapped is None:
            raise ConversionError(
                f"{src}: LoRA module {native!r} is not part of a {adapter.display} transformer",
                hint="check the file",
            )
        modules.append(entry(mapped[0], parts, None, mapped[1]))
    return Lora(adapter.family, fmt, modules, src)


def _read_underscore(
    adapter: ComponentLora, state: Mapping[str, torch.Tensor], family: str | None, src: str, limits: Limits
) -> Lora:
    prefix = adapter.underscore_prefix

    def name_of(key: str) -> str | None:
        if not key.startswith(prefix):
            return None
        name, dot, role = key[len(prefix) :].partition(".")
        native = adapter.underscore_to_native(name)
        return None if native is None or not dot else f"{native}.{role}"

    groups, unknown = group(state, name_of, src)
    refuse_unknown(src, unknown, f"{adapter.underscore_label} {adapter.display} LoRA keys")
    return _read_native(adapter, groups, adapter.underscore_format or "", family, src, limits)


# ------------------------------------------------------------------------ dotted names, any family
def _read_dotted(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    family: str | None,
    src: str,
    limits: Limits,
) -> Lora:
    prefix = next(p for p in _PREFIXES if all(k.startswith(p) for k in state))
    groups, unknown = group(state, lambda k: k[len(prefix) :], src)
    refuse_unknown(src, unknown, "LoRA keys (lora_A/lora_B, lora_down/lora_up, alpha, diff, diff_b)")
    modules = list(groups)
    limits.check(modules, family)  # before any name is looked up
    native = native_adapter(modules)
    fams = [] if (native is not None and prefix in _NATIVE_PREFIXES) else diffusers_families(modules)
    if native is not None and (prefix != _PEFT_PREFIX or not fams):
        return _read_native(native, groups, native.native_format or "", family, src, limits)
    if not fams:
        if family is not None:
            bad = unknown_diffusers_modules(family, modules)
            raise ConversionError(
                f"{src}: {len(bad)} LoRA module(s) are not part of a {family} transformer: {name_some(bad)}",
                hint="the LoRA is for another family or model; check it matches the base",
            )
        bad = [m for m in modules if native_adapter([m]) is None and not diffusers_families([m])]
        if bad:
            raise ConversionError(
                f"{src}: {len(bad)} LoRA module(s) belong to no {titles()} transformer: {name_some(bad)}",
                hint="the LoRA is for another model",
            )
        raise ConversionError(
            f"{src}: the LoRA's module names mix families (e.g. {name_some(modules, 3)})",
            hint="check the file; pass --family to see which names do not fit",
        )
    if family is not None and family not in fams:
        bad = unknown_diffusers_modules(family, modules)
        raise ConversionError(
            f"{src}: {len(bad)} LoRA module(s) are not part of a {family} transformer: {name_some(bad)}",
            hint=f"this looks like a {' or '.join(fams)} LoRA; check it matches the base",
        )
    alpha_of = peft_alphas(metadata, src)
    entries = []
    for module, parts in groups.items():
        down = parts.get("down")
        rank = int(down.shape[0]) if down is not None and down.ndim >= 1 else None
        entries.append(entry(module, parts, alpha_of(module, rank)))
    chosen = family or (fams[0] if len(fams) == 1 else None)
    lora = Lora(chosen, "diffusers", entries, src, candidates=tuple(fams))
    if chosen is None:
        lora.notes.append(f"module names fit {' and '.join(fams)}; pass --family to choose")
    return lora
