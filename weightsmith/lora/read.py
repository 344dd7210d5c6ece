"""Reading a LoRA file and telling its family and format from its key names.

Formats read (``Lora.format``):

* ``diffusers``: PEFT keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (optional
  ``lora_B.bias``), Diffusers module names, for Wan, CogVideoX and Sana. Alphas come from the
  ``lora_adapter_metadata`` Diffusers stores in the safetensors header (``lora_alpha``,
  ``alpha_pattern``, ``use_rslora``); without it the scale is 1, as Diffusers assumes.
* ``wan-original``: ComfyUI / Wan names ``diffusion_model.blocks.0.self_attn.q.lora_down.weight``
  (or ``lora_A``/``lora_B``; prefix ``diffusion_model.``, ``model.diffusion_model.`` or none) with
  optional ``.alpha``, ``.diff`` (full weight delta) and ``.diff_b`` (bias delta).
* ``wan-musubi``: musubi-tuner's ``lora_unet_blocks_0_self_attn_q.lora_down.weight`` + ``.alpha``.
* ``cogvideox-sat``: SwissArmyTransformer LoRA keys
  ``model.diffusion_model.transformer.layers.N.attention.query_key_value.matrix_A.{0,1,2}`` /
  ``matrix_B.*`` and ``attention.dense.matrix_A.0``, alone or inside a whole LoRA-trained SAT
  checkpoint (its other tensors are ignored). SAT scales by ``lora_alpha / r`` with
  ``lora_alpha`` 1 by default (``sat_alpha``).

Pickles are read through ``weightsmith.io`` (weights_only, never executed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from weightsmith.errors import ConversionError, InputError, UsageError
from weightsmith.io import PipelineCheckpoint, open_checkpoint
from weightsmith.io.structured import parse_json
from weightsmith.lora.model import Lora, LoraModule, all_finite, fold, name_some
from weightsmith.lora.names import (
    FAMILIES,
    LARGEST_RELEASED,
    MAX_BLOCKS,
    SAT_PREFIX,
    blocks_beyond,
    cogvideox_names,
    diffusers_families,
    layers_needed,
    musubi_to_native,
    unknown_diffusers_modules,
    wan_to_diffusers,
)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what Diffusers' save_lora_weights writes
METADATA_KEY = "lora_adapter_metadata"  # Diffusers' safetensors metadata key for the LoraConfig
FORMATS = ("diffusers", "wan-original", "wan-musubi", "cogvideox-sat")

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
_DORA = (".dora_scale", ".lora_magnitude_vector")
_SAT_KEY = re.compile(r"(?P<module>.+)\.matrix_(?P<ab>[AB])\.(?P<part>[0-9]+)")
_MUSUBI = "lora_unet_"
# Keys of other pipeline components a transformer LoRA file may carry; left out with a note.
_FOREIGN = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")
_NATIVE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_PREFIXES = (*_NATIVE_PREFIXES, "transformer.", "base_model.model.", "")


def read_lora(
    path: str | Path,
    family: str | None = None,
    *,
    sat_alpha: float = 1.0,
    max_blocks: int | None = None,
) -> Lora:
    """Read and check a LoRA file (or a folder holding ``pytorch_lora_weights.safetensors``).

    ``family`` insists on a family (and settles CogVideoX vs Sana when only attention modules are
    named); ``sat_alpha`` is the ``lora_alpha`` a SAT LoRA was trained with; ``max_blocks`` is
    the block count of the base model the LoRA is for (when fusing), else the family's bound.
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
    model's block count) when given, else against the family's bound (``names.MAX_BLOCKS``).
    """
    if family is not None and family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}", hint=f"choose one of {', '.join(FAMILIES)}")
    src = source or "LoRA"
    limits = _Limits(src, max_blocks)
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
    if any(_SAT_KEY.fullmatch(k) for k in own):
        lora = _read_sat(own, family, sat_alpha, src, limits)
    elif any(k.startswith(_MUSUBI) for k in own):
        lora = _read_musubi(own, family, src, limits)
    else:
        lora = _read_dotted(own, metadata or {}, family, src, limits)
    if foreign:
        lora.notes.append(f"left out {len(foreign)} text-encoder keys (e.g. {foreign[0]!r})")
    lora.check()
    lora.modules.sort(key=lambda m: m.module)
    return lora


# --------------------------------------------------------------------------------- block bounds
_FAMILY_NAMES = {"wan": "Wan", "cogvideox": "CogVideoX", "sana": "Sana"}


class _Limits:
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
        fams = [family] if family in MAX_BLOCKS else list(MAX_BLOCKS)
        limit = max(MAX_BLOCKS[f] for f in fams)
        deep = blocks_beyond(names, limit)
        if deep:
            name, index = max(deep, key=lambda d: d[1])
            largest = max(LARGEST_RELEASED[f] for f in fams)
            what = _FAMILY_NAMES[fams[0]] if len(fams) == 1 else "CogVideoX, Wan or Sana"
            raise ConversionError(
                f"{self.src}: LoRA module {name[:200]!r} is in block {index if index < 10**9 else 'beyond 10^9'}, "
                f"but no {what} model has that many (the deepest released has {largest}; "
                f"up to {limit} accepted)",
                hint="the file is corrupt or not a LoRA for these families",
            )


def _refuse_nonfinite(src: str, key: str, t: torch.Tensor) -> None:
    if not all_finite(t):
        raise ConversionError(
            f"{src}: LoRA tensor {key!r} holds NaN or Inf values",
            hint="the LoRA is broken (a diverged training run?); fusing it would turn the model into NaN",
        )


# ------------------------------------------------------------------------------------- grouping
def _split_role(rest: str) -> tuple[str, str] | None:
    for suffix, role in _ROLES:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[: -len(suffix)], role
    return None


def _group(
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
            raise ConversionError(f"{src}: LoRA module {module!r} has two {role} tensors (e.g. {key!r})")
        if role == "alpha":
            t = torch.tensor(_alpha_value(t, key, src), dtype=torch.float64)
        else:
            _refuse_nonfinite(src, key, t)
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


def _entry(
    module: str, parts: Mapping[str, torch.Tensor], alpha: float | None, param: bool = False
) -> LoraModule:
    if "alpha" in parts:
        alpha = float(parts["alpha"].item())
    bias = parts.get("bias")
    down = parts.get("down")
    if "peft_bias" in parts:
        if bias is not None:
            raise ConversionError(f"LoRA module {module!r} has both a diff_b and a lora_B.bias")
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


def _refuse_unknown(src: str, unknown: list[str], what: str) -> None:
    if unknown:
        raise ConversionError(
            f"{src}: {len(unknown)} key(s) are not {what}: {name_some(unknown)}",
            hint="check that this is a LoRA for a CogVideoX, Wan or Sana transformer",
        )


def _wrong_family(src: str, found: str, fmt: str, asked: str) -> ConversionError:
    return ConversionError(
        f"{src} is a {found} LoRA ({fmt} format), not a {asked} one",
        hint=f"use a {asked} LoRA, or drop --family / use a {found} base",
    )


# ----------------------------------------------------------------------------- native Wan names
def _native_wan(
    groups: dict[str, dict[str, torch.Tensor]], fmt: str, family: str | None, src: str, limits: _Limits
) -> Lora:
    if family not in (None, "wan"):
        raise _wrong_family(src, "wan", fmt, family)
    limits.check(groups, "wan")
    modules = []
    for native, parts in groups.items():
        mapped = wan_to_diffusers(native)
        if mapped is None:
            raise ConversionError(
                f"{src}: LoRA module {native!r} is not part of a Wan transformer", hint="check the file"
            )
        modules.append(_entry(mapped[0], parts, None, mapped[1]))
    return Lora("wan", fmt, modules, src)


def _read_musubi(state: Mapping[str, torch.Tensor], family: str | None, src: str, limits: _Limits) -> Lora:
    def name_of(key: str) -> str | None:
        if not key.startswith(_MUSUBI):
            return None
        name, dot, role = key[len(_MUSUBI) :].partition(".")
        native = musubi_to_native(name)
        return None if native is None or not dot else f"{native}.{role}"

    groups, unknown = _group(state, name_of, src)
    _refuse_unknown(src, unknown, "musubi-tuner Wan LoRA keys")
    return _native_wan(groups, "wan-musubi", family, src, limits)


# ------------------------------------------------------------------------ dotted names, any family
def _read_dotted(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    family: str | None,
    src: str,
    limits: _Limits,
) -> Lora:
    prefix = next(p for p in _PREFIXES if all(k.startswith(p) for k in state))
    groups, unknown = _group(state, lambda k: k[len(prefix) :], src)
    _refuse_unknown(src, unknown, "LoRA keys (lora_A/lora_B, lora_down/lora_up, alpha, diff, diff_b)")
    modules = list(groups)
    limits.check(modules, family)  # before any name is looked up
    native_ok = all(wan_to_diffusers(m) is not None for m in modules)
    fams = [] if (native_ok and prefix in _NATIVE_PREFIXES) else diffusers_families(modules)
    if native_ok and (prefix != "transformer." or not fams):
        return _native_wan(groups, "wan-original", family, src, limits)
    if not fams:
        if family is not None:
            bad = unknown_diffusers_modules(family, modules)
            raise ConversionError(
                f"{src}: {len(bad)} LoRA module(s) are not part of a {family} transformer: {name_some(bad)}",
                hint="the LoRA is for another family or model; check it matches the base",
            )
        bad = [m for m in modules if wan_to_diffusers(m) is None and not diffusers_families([m])]
        if bad:
            raise ConversionError(
                f"{src}: {len(bad)} LoRA module(s) belong to no CogVideoX, Wan or Sana transformer: "
                f"{name_some(bad)}",
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
    alpha_of = _peft_alphas(metadata, src)
    entries = []
    for module, parts in groups.items():
        down = parts.get("down")
        rank = int(down.shape[0]) if down is not None and down.ndim >= 1 else None
        entries.append(_entry(module, parts, alpha_of(module, rank)))
    chosen = family or (fams[0] if len(fams) == 1 else None)
    lora = Lora(chosen, "diffusers", entries, src, candidates=tuple(fams))
    if chosen is None:
        lora.notes.append(f"module names fit {' and '.join(fams)}; pass --family to choose")
    return lora


# Characters that make a PEFT pattern key a regular expression rather than a module name.
_REGEX_CHARS = frozenset("\\^$*+?{}[]|()")


def _pattern_keys(patterns: Any, field: str, src: str) -> dict[str, float]:
    """A checked ``alpha_pattern``: module-name keys to finite numbers.

    PEFT matches each key with ``re.match(rf"(.*\\.)?({key})$", module)``: in the files trainers
    write the keys are module names (``blocks.1.ffn.net.2``), so a key matches the module of that
    name or any module whose name ends in ``.`` + key. Keys are matched that way here, as text,
    never compiled: a regular expression in a file (``(.*.*)*X``) could take hours to match, so
    a key using regex syntax beyond ``\\.`` is refused, naming it.
    """
    if not isinstance(patterns, dict):
        raise ConversionError(
            f"{src}: {field} in the {METADATA_KEY} metadata is {type(patterns).__name__}, not an object",
            hint="the file is corrupt",
        )
    out: dict[str, float] = {}
    for key, value in patterns.items():
        if not isinstance(key, str):
            raise ConversionError(
                f"{src}: {field} key {key!r} is not a module name", hint="the file is corrupt"
            )
        name = key.replace("\\.", ".")
        if not name or _REGEX_CHARS.intersection(name):
            raise ConversionError(
                f"{src}: {field} key {key[:80]!r} in the {METADATA_KEY} metadata is a regular expression, "
                "not a module name; weightsmith matches module names only",
                hint="list the modules it stands for by name (e.g. blocks.1.ffn.net.2)",
            )
        number = _number(value, f"{field}[{key[:80]!r}]", src)
        out.setdefault(name, number)  # the first of two spellings of one name wins, as in PEFT
    return out


def _number(value: Any, field: str, src: str) -> float:
    """A finite float from a metadata value; anything else (text, bool, huge int) is refused."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = None
    if number is None or not math.isfinite(number):
        shown = (
            f"an integer of {value.bit_length()} bits" if isinstance(value, int) else repr(str(value)[:40])
        )
        raise ConversionError(
            f"{src}: {field} in the {METADATA_KEY} metadata is {shown}, not a usable number",
            hint="the file is corrupt; fix the metadata or re-export the LoRA",
        )
    return number


def _pattern_lookup(patterns: Mapping[str, float]) -> Callable[[str], float | None]:
    """PEFT's rule for alpha_pattern keys, as a function of the module name: the value of the
    first key (in the file's order) that is the module's name or a dotted suffix of it (keys are
    module names: ``_pattern_keys``).

    Looked up by suffix, not by scanning every key, so a file with many keys and many modules
    costs modules x name depth.
    """
    order = {key: i for i, key in enumerate(patterns)}
    lengths = {len(key) for key in patterns}

    def value_of(module: str) -> float | None:
        hits = [(order[module], module)] if module in order else []
        dot = module.find(".")
        while dot >= 0:
            if len(module) - dot - 1 in lengths:  # only slice suffixes as long as some key
                tail = module[dot + 1 :]
                if tail in order:
                    hits.append((order[tail], tail))
            dot = module.find(".", dot + 1)
        return patterns[min(hits)[1]] if hits else None

    return value_of


def _peft_alphas(metadata: Mapping[str, Any], src: str) -> Callable[[str, int | None], float | None]:
    """Per-module alpha from Diffusers' stored LoraConfig, or a function giving None (scale 1)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return lambda module, rank: None
    what = f"{src}: the {METADATA_KEY} metadata"
    if isinstance(raw, (str, bytes)):
        cfg = parse_json(raw, what, error=ConversionError, hint="the file is corrupt; re-export the LoRA")
    elif isinstance(raw, Mapping):
        cfg = dict(raw)
    else:
        raise ConversionError(f"{what} is a {type(raw).__name__}, not JSON text", hint="the file is corrupt")
    if not isinstance(cfg, dict):
        raise ConversionError(f"{what} is not a JSON object", hint="the file is corrupt")
    if any(isinstance(k, str) and k.startswith("transformer.") for k in cfg):
        cfg = {
            k[len("transformer.") :]: v
            for k, v in cfg.items()
            if isinstance(k, str) and k.startswith("transformer.")
        }
    if cfg.get("use_dora"):
        raise ConversionError(f"{src} is a DoRA (use_dora in its metadata); DoRA is not supported")
    raw_alpha = cfg.get("lora_alpha")
    base_alpha = None if raw_alpha is None else _number(raw_alpha, "lora_alpha", src)
    pattern_alpha = _pattern_lookup(_pattern_keys(cfg.get("alpha_pattern") or {}, "alpha_pattern", src))
    rslora = bool(cfg.get("use_rslora"))

    def alpha_of(module: str, rank: int | None) -> float | None:
        if rank is None:
            return None
        alpha = pattern_alpha(module)
        alpha = base_alpha if alpha is None else alpha
        if alpha is None:
            return None
        # rsLoRA scales by alpha / sqrt(r); as an alpha over r that is alpha * sqrt(r).
        eff = alpha * math.sqrt(rank) if rslora else alpha
        return None if eff == rank else eff

    return alpha_of


# ----------------------------------------------------------------------------------- CogVideoX SAT
def _read_sat(
    state: Mapping[str, torch.Tensor], family: str | None, sat_alpha: float, src: str, limits: _Limits
) -> Lora:
    if family not in (None, "cogvideox"):
        raise _wrong_family(src, "cogvideox", "cogvideox-sat", family)
    if not (sat_alpha > 0 and math.isfinite(sat_alpha)):
        raise UsageError(f"SAT lora_alpha must be a positive number, got {sat_alpha}")
    prefix = SAT_PREFIX
    parts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    ignored = 0
    for key, t in state.items():
        m = _SAT_KEY.fullmatch(key.removeprefix(prefix))
        if m is None:
            ignored += 1  # a LoRA-trained SAT checkpoint keeps every base weight beside the LoRA
            continue
        if len(m["part"]) > 3:  # a SAT module has a handful of partitions (qkv: 3)
            raise ConversionError(
                f"{src}: SAT LoRA key {key[:200]!r} names partition {m['part'][:12]}..., "
                "but a SAT module has at most a few",
                hint="the file is corrupt or not a SAT LoRA",
            )
        _refuse_nonfinite(src, key, t)
        slot = parts.setdefault(m["module"], {}).setdefault(int(m["part"]), {})
        role = "down" if m["ab"] == "A" else "up"
        if role in slot:
            raise ConversionError(
                f"{src}: SAT LoRA module {m['module']!r} has two matrix_{m['ab']}.{int(m['part'])} tensors "
                f"(e.g. {key!r})",
                hint="the file is corrupt",
            )
        slot[role] = t
    limits.check(parts, "cogvideox")  # before a meta model is sized from the layer count
    names = cogvideox_names(max(layers_needed(parts, native=True), 1))
    unknown = sorted(n for n in parts if n not in names.by_native)
    if unknown:
        raise ConversionError(
            f"{src}: {len(unknown)} SAT LoRA module(s) are not part of a CogVideoX transformer: "
            f"{name_some(unknown)}",
            hint="check that this is a CogVideoX SAT LoRA",
        )
    entries: list[LoraModule] = []
    for native in sorted(parts):
        link = names.by_native[native]
        by_part = parts[native]
        k = len(by_part)
        if sorted(by_part) != list(range(k)):
            raise ConversionError(
                f"{src}: SAT LoRA module {native!r} has partitions {sorted(by_part)}, expected 0..{k - 1}"
            )
        for j, p in by_part.items():
            if set(p) != {"down", "up"}:
                lack = "matrix_B" if "up" not in p else "matrix_A"
                raise ConversionError(f"{src}: SAT LoRA module {native!r} partition {j} has no {lack}")
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
                f"{src}: SAT LoRA module {native!r} has {k} partitions but maps to {n} Diffusers modules "
                f"({', '.join(link.diffusers)})",
                hint="expected one partition per module (qkv: 3) or a single partition",
            )
    lora = Lora("cogvideox", "cogvideox-sat", entries, src)
    lora.notes.append(f"SAT scale lora_alpha/r with lora_alpha = {sat_alpha:g}")
    if ignored:
        lora.notes.append(
            f"left out {ignored} non-LoRA tensors (base weights of a LoRA-trained SAT checkpoint)"
        )
    return lora
