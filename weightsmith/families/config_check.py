"""Checking a Diffusers config against itself and against the weights it comes with.

A config.json (a component folder's, one embedded in a file's metadata, or one given with
``--config``) is copied into outputs and sizes models built from it, so a config that lies
(``num_layers`` 10^9, 0 heads, ``"abc"`` as a count, an infinite eps, a Sana config for a Wan
model) must be refused before use, naming the key, its value and what the weights say. Types
come from the diffusers class's own ``__init__`` annotations (kept as data per family:
``config_fields.py``); what the weights say comes from
the family's own ``diffusers_config``, derived from shapes.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from weightsmith.errors import CorruptFileError, DetectionError, WeightsmithError
from weightsmith.families.config_fields import Field, fields_of
from weightsmith.io.base import TensorInfo

# Larger than any count, width, length or size of a real model; small enough that a model sized
# from it is never built by accident.
MAX_INT = 2**20
MAX_FLOAT = 1e6
# Fields that count or size something: zero makes no model.
POSITIVE = frozenset(
    {
        "num_layers",
        "num_attention_heads",
        "attention_head_dim",
        "num_cross_attention_heads",
        "cross_attention_head_dim",
        "num_heads",
        "dim",
        "in_dim",
        "out_dim",
        "in_channels",
        "out_channels",
        "latent_channels",
        "z_dim",
        "base_dim",
        "decoder_base_dim",
        "patch_size",
        "patch_size_t",
        "text_dim",
        "freq_dim",
        "ffn_dim",
        "caption_channels",
        "cross_attention_dim",
        "time_embed_dim",
        "text_embed_dim",
        "sample_width",
        "sample_height",
        "sample_frames",
        "sample_size",
        "max_text_seq_length",
        "rope_max_seq_len",
        "temporal_compression_ratio",
        "norm_num_groups",
        "vace_in_channels",
        "block_out_channels",
        "encoder_block_out_channels",
        "decoder_block_out_channels",
        "dim_mult",
    }
)
# Keys of Wan's own (non-Diffusers) config.json that the family code reads.
ALIASES: dict[str, Any] = {"num_heads": int, "dim": int, "in_dim": int, "out_dim": int}
# Keys whose value the weights' shapes decide (where the family can derive them at all).
SHAPE_KEYS = frozenset(
    {
        "num_layers",
        "num_attention_heads",
        "attention_head_dim",
        "num_cross_attention_heads",
        "cross_attention_head_dim",
        "in_channels",
        "out_channels",
        "latent_channels",
        "z_dim",
        "base_dim",
        "patch_size",
        "patch_size_t",
        "text_dim",
        "freq_dim",
        "ffn_dim",
        "caption_channels",
        "cross_attention_dim",
        "time_embed_dim",
        "text_embed_dim",
        "ofs_embed_dim",
        "image_dim",
        "added_kv_proj_dim",
        "pos_embed_seq_len",
        "vace_in_channels",
        "block_out_channels",
        "encoder_block_out_channels",
        "decoder_block_out_channels",
        "dim_mult",
        "num_res_blocks",
        "layers_per_block",
        "encoder_layers_per_block",
        "decoder_layers_per_block",
    }
)
_HINT = "fix the config (or pass --config with the model's own config.json)"


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_finite(config: Mapping[str, Any], where: str) -> None:
    """Every number in ``config`` finite (``1e999`` parses to inf), nested values included."""
    stack: list[tuple[str, Any]] = list(config.items())
    while stack:
        key, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise CorruptFileError(f"{where}: {key} is {v}, not a finite number", hint=_HINT)
        if isinstance(v, Mapping):
            stack.extend((f"{key}.{k}", x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((key, x) for x in v)


def _fits(value: Any, ann: Any, default: Any) -> bool:
    """Whether a JSON value fits a (simple) type annotation; unknown annotations fit anything."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a, default) for a in typing.get_args(ann))
    if ann is type(None):
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        if isinstance(value, bool):
            return isinstance(default, bool)
        return isinstance(value, (int, float))
    if ann is str:
        return isinstance(value, str)
    if origin in (list, tuple) or ann in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return not args or all(any(_fits(x, a, None) for a in args) for x in value)
    return True


def _type_words(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _check_range(key: str, value: Any, where: str) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, (list, tuple)):
            _check_range(key, v, where)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int):
            low = 1 if key in POSITIVE else 0
            if not low <= v <= MAX_INT:
                what = "at least 1" if low else "non-negative"
                raise CorruptFileError(
                    f"{where}: {key} is {_show(value)}; it must be {what} and at most {MAX_INT}", hint=_HINT
                )
        elif key.endswith("eps") and not 0 < v < 1:
            raise CorruptFileError(f"{where}: {key} is {v}; an epsilon is between 0 and 1", hint=_HINT)
        elif key == "dropout" and not 0 <= v <= 1:
            raise CorruptFileError(f"{where}: {key} is {v}; a dropout rate is between 0 and 1", hint=_HINT)
        elif abs(v) > MAX_FLOAT:
            raise CorruptFileError(f"{where}: {key} is {v}, beyond any real setting", hint=_HINT)


def check_types(config: Mapping[str, Any], tables: list[dict[str, Field]], where: str) -> None:
    """Each key a diffusers ``__init__`` takes (``tables``: its parameters, one table per class,
    from ``config_fields.fields_of``) has a value of its type, in range."""
    fields: dict[str, Field] = {}
    for table in tables:
        for k, v in table.items():
            fields.setdefault(k, v)
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in fields:
            ann, default = fields[key]
        elif key in ALIASES:
            ann, default = ALIASES[key], None
        else:
            continue
        if ann is not None and not _fits(value, ann, default):
            raise CorruptFileError(
                f"{where}: {key} is {_show(value)}, not {_type_words(ann)}",
                hint=_HINT,
            )
        _check_range(key, value, where)


def _class_owners() -> dict[str, Any]:
    from weightsmith.families.base import components

    owners: dict[str, Any] = {}
    for comp in components():
        for variant in (None, *comp.variants):
            owners.setdefault(comp.class_name(variant), comp)
    return owners


def _derived(comp: Any, config: Mapping[str, Any], infos: Mapping[str, TensorInfo]) -> dict[str, Any] | None:
    """The Diffusers config the family derives from the weights (and ``config``), or None."""
    from weightsmith.families.base import Detection, PlanOptions
    from weightsmith.families.ops import Spec

    det = comp.detect(infos, config)
    if det is None:
        return None
    try:
        if det.layout == "diffusers" and not det.prefix:
            out_infos: Mapping[str, TensorInfo] = infos
        else:
            out: dict[str, TensorInfo] = {}
            for op in comp.plan(det, infos, "diffusers", PlanOptions(config=dict(config))):
                ins = [Spec(k, infos[k].shape, infos[k].dtype_name) for k in op.inputs]
                for s in op.out_specs(ins):
                    out[s.name] = TensorInfo(s.name, tuple(s.shape), s.dtype, "", 0)
            out_infos = out
        diff_det = Detection(det.family, det.component, "diffusers", det.variant, "", det.notes, det.facts)
        return dict(comp.diffusers_config(diff_det, out_infos), _facts=dict(det.facts))
    except WeightsmithError:
        return None  # the weights alone cannot tell; nothing to compare against


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def check_against_weights(
    config: Mapping[str, Any], comp: Any, infos: Mapping[str, TensorInfo], where: str
) -> None:
    """The config's shape-decided values agree with what ``comp`` derives from the weights."""
    derived = _derived(comp, config, infos)
    if derived is None:
        facts = dict((comp.detect(infos, None) or _NoDet).facts)
    else:
        facts = derived.pop("_facts")
    label = f"{comp.family} {comp.component}"
    inner = None
    if derived is not None and derived.get("num_attention_heads") and derived.get("attention_head_dim"):
        inner = derived["num_attention_heads"] * derived["attention_head_dim"]
    inner = inner or facts.get("dim") or facts.get("hidden_size")
    heads = config.get("num_attention_heads", config.get("num_heads"))
    head_dim = config.get("attention_head_dim")
    if isinstance(inner, int) and isinstance(heads, int) and heads > 0:
        if isinstance(head_dim, int) and heads * head_dim != inner:
            raise CorruptFileError(
                f"{where}: {heads} heads x attention_head_dim {head_dim} = {heads * head_dim}, "
                f"but the weights ({label}) have an attention width of {inner}",
                hint=_HINT,
            )
        if inner % heads:
            raise CorruptFileError(
                f"{where}: num_attention_heads {heads} does not divide the weights' attention width {inner}",
                hint=_HINT,
            )
    if derived is not None:
        for key in sorted(SHAPE_KEYS & set(config) & set(derived)):
            given, says = config[key], derived[key]
            if given is None or says is None or _same(given, says):
                continue
            raise CorruptFileError(
                f"{where}: {key} is {_show(given)} but the weights ({label}) say {_show(says)}",
                hint=_HINT,
            )


class _NoDet:
    facts: Mapping[str, Any] = {}


def validate_config(config: Mapping[str, Any], infos: Mapping[str, TensorInfo] | None, where: str) -> None:
    """Refuse a config that contradicts itself or the weights (exit 2 naming key, value, weights).

    ``infos``: the weights' tensor infos, or None to check the config on its own (types, ranges
    and finiteness, by the class its ``_class_name`` names).
    """
    from weightsmith.families.base import detect

    check_finite(config, where)
    cls_name = config.get("_class_name")
    owners = _class_owners()
    named = owners.get(cls_name) if isinstance(cls_name, str) else None
    det = detect(infos, None) if infos else None
    comp = named
    if det is not None:
        from weightsmith.families.base import get_component

        actual = get_component(det.family, det.component)
        if named is not None and named is not actual:
            raise DetectionError(
                f"{where}: _class_name {cls_name} is a {named.family} {named.component} class, "
                f"but the weights are a {det.family} {det.component}",
                hint="use the config.json that came with these weights",
            )
        comp = actual
    if comp is None:
        return
    check_types(config, fields_of(comp), where)
    if infos:
        check_against_weights(config, comp, infos, where)
