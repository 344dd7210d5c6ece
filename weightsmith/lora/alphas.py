"""Per-module alphas of a Diffusers PEFT LoRA, from the LoraConfig Diffusers stores in the
safetensors header (``lora_adapter_metadata``: ``lora_alpha``, ``alpha_pattern``, ``use_rslora``).
Without it the scale is 1, as Diffusers assumes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from weightsmith.errors import ConversionError
from weightsmith.io.structured import parse_json

METADATA_KEY = "lora_adapter_metadata"  # Diffusers' safetensors metadata key for the LoraConfig

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


def pattern_lookup(patterns: Mapping[str, float]) -> Callable[[str], float | None]:
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


def peft_alphas(metadata: Mapping[str, Any], src: str) -> Callable[[str, int | None], float | None]:
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
        raise ConversionError(
            f"{src} is a DoRA (use_dora in its metadata); DoRA is not supported",
            hint="use a plain LoRA, or merge the DoRA into the base with the tool that trained it",
        )
    raw_alpha = cfg.get("lora_alpha")
    base_alpha = None if raw_alpha is None else _number(raw_alpha, "lora_alpha", src)
    pattern_alpha = pattern_lookup(_pattern_keys(cfg.get("alpha_pattern") or {}, "alpha_pattern", src))
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
