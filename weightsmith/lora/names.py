"""Module names of each family's native layout, tied to Diffusers module names, from the families' own maps.

A LoRA names modules, not tensors. Rather than keep a second table per family, the names here
are derived from the family modules:

* Wan: the whole-key template table ``weightsmith.families.wan.transformer.KEYMAP`` is read with
  ``.weight`` appended to a module name (and stripped again); musubi-tuner's
  ``blocks_0_self_attn_q`` names are the same templates with dots written as underscores.
* CogVideoX: the family's own SAT -> Diffusers plan, run on a synthetic checkpoint (a
  meta-device one-block ``CogVideoXTransformer3DModel``, converted to SAT names by the family's
  reverse plan). Each ``.weight`` op of that plan is one ``Link``: a Rename, or a one-input
  Regroup that cuts the SAT rows into Diffusers modules (qkv -> to_q/to_k/to_v, adaLN ->
  norm1/norm2). The same op applied to a LoRA's ``up`` rows maps a LoRA on the fused SAT module.
* Sana has no native LoRA format; its Diffusers module names (for telling families apart) come
  from a meta-device one-block ``SanaTransformer2DModel``.

Blocks are identical, so block 0's names are kept as templates (``transformer_blocks.{i}.attn1``)
and a name of block i is looked up with its index replaced: any layer count works, nothing counts
keys, and a name's block index never sizes a model (a LoRA naming block 100000 costs nothing).
Block indices past what any real model has are refused by the readers (``MAX_BLOCKS``).
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch

from weightsmith.convert.ops import Op, Regroup, Rename, Spec
from weightsmith.errors import ConversionError
from weightsmith.families.base import DIFFUSION_PREFIX
from weightsmith.families.wan.keys import KeyMap
from weightsmith.families.wan.transformer import KEYMAP as WAN_KEYMAP
from weightsmith.io.base import TensorInfo, infos_from_state_dict

FAMILIES = ("wan", "cogvideox", "sana")
_W = ".weight"

# The most blocks a LoRA of each family may address when no base model says how many there are:
# 4x the deepest released model (Wan 40, CogVideoX 42, Sana 4.8B 60 blocks; layouts.md), so a LoRA
# for a deeper future model still reads, while a key naming block 100000 is refused before it can
# size a 100001-block meta model (minutes and gigabytes).
LARGEST_RELEASED = {"wan": 40, "cogvideox": 42, "sana": 60}
MAX_BLOCKS = {family: 4 * n for family, n in LARGEST_RELEASED.items()}
_HUGE = 10**9  # stands for a block index too long to be a number worth converting


# ------------------------------------------------------------------------------------------- Wan
def wan_to_diffusers(native: str) -> tuple[str, bool] | None:
    """Diffusers name of a Wan original module (or parameter, flagged True), or None if Wan has none."""
    key = WAN_KEYMAP.a_to_b(native + _W)
    if key is not None and key.endswith(_W):
        return key[: -len(_W)], False
    key = WAN_KEYMAP.a_to_b(native)
    if key is not None and not key.endswith((_W, ".bias")):
        return key, True
    return None


def wan_from_diffusers(module: str, param: bool = False) -> str | None:
    """Wan original name of a Diffusers module (or parameter), or None."""
    if param:
        return WAN_KEYMAP.b_to_a(module)
    key = WAN_KEYMAP.b_to_a(module + _W)
    return key[: -len(_W)] if key is not None else None


@lru_cache(maxsize=1)
def _musubi_map() -> KeyMap:
    pairs = []
    for native, _ in WAN_KEYMAP.pairs:
        tpl = native[: -len(".{p}")] if native.endswith(".{p}") else native
        pairs.append((tpl.replace(".", "_"), tpl))
    return KeyMap(pairs)


def musubi_to_native(name: str) -> str | None:
    """Wan original module for a musubi-tuner name (``blocks_0_self_attn_q`` -> ``blocks.0.self_attn.q``)."""
    return _musubi_map().a_to_b(name)


# ------------------------------------------------------------------------------------- CogVideoX
@dataclass(frozen=True)
class Link:
    """One native (SAT) module and the Diffusers module(s) its weight becomes, with the family's op."""

    native: str
    diffusers: tuple[str, ...]
    op: Op

    @property
    def partitions_match(self) -> bool:
        """Whether Diffusers module i is exactly row block i of the native weight (qkv), so that a
        native LoRA with one partition per output maps partition i to module i."""
        if isinstance(self.op, Rename):
            return True
        if isinstance(self.op, Regroup) and len(self.op.srcs) == 1:
            n = len(self.diffusers)
            return (
                self.op.chunks == (n,)
                and self.op.assign == tuple((i,) for i in range(n))
                and self.op.dim == 0
            )
        return False

    def rows_to_diffusers(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Cut a tensor whose rows are the native module's output rows into the Diffusers modules' rows."""
        if isinstance(self.op, Rename):
            return [t]
        op = self.op
        if not isinstance(op, Regroup) or len(op.srcs) != 1 or op.reshape:
            raise ConversionError(
                f"a LoRA over the SAT module {self.native!r} cannot be cut into {', '.join(self.diffusers)}",
                hint="convert the LoRA's base model instead, or use a LoRA trained on the Diffusers modules",
            )
        parts = op.chunks[0]
        if t.ndim != 2 or t.shape[op.dim] == 0 or t.shape[op.dim] % parts:
            raise ConversionError(
                f"SAT LoRA module {self.native!r}: matrix_B {list(t.shape)} does not cut into {parts} "
                f"equal row blocks for {', '.join(self.diffusers)}",
                hint="the file is corrupt, or the LoRA is for another model",
            )
        return op.apply([t])


_COG_BLOCK = re.compile(r"(?:transformer\.layers|mixins\.adaln_layer\.\w+)\.([0-9]+)(?=\.|$)")
_DIFF_BLOCK = re.compile(r"(?:transformer_blocks|blocks|vace_blocks)\.([0-9]+)(?=\.|$)")
# A block index in any LoRA naming: SAT ``transformer.layers.N`` / ``adaLN_modulations.N`` /
# ``query_layernorm_list.N``, Diffusers ``transformer_blocks.N`` / ``blocks.N`` / ``vace_blocks.N``,
# musubi ``blocks_N_``.
_ANY_BLOCK = re.compile(r"(?:^|[._])(?:layers|blocks|adaLN_modulations|layernorm_list)[._]([0-9]+)(?=[._]|$)")
_SLOT = "{i}"  # where a block index stands in a name template


def _index(digits: str) -> int:
    """A block index; absurdly long digit runs (int() refuses over 4300 digits) become _HUGE."""
    return int(digits) if len(digits) <= 9 else _HUGE


def _template(name: str, rx: re.Pattern[str]) -> tuple[str, int | None] | None:
    """``name`` with its block index replaced by ``{i}``, and the index (None for a name outside
    the blocks); None for a name no model has (a non-canonical index such as ``007``, braces)."""
    if _SLOT in name:
        return None
    m = rx.match(name)
    if m is None:
        return name, None
    digits = m.group(1)
    if len(digits) > 9 or str(int(digits)) != digits:
        return None
    return name[: m.start(1)] + _SLOT + name[m.end(1) :], int(digits)


def _fill(template: str, index: int | None) -> str:
    return template if index is None else template.replace(_SLOT, str(index))


def layers_needed(names: Iterable[str], native: bool = False) -> int:
    """1 + the highest block index the names mention (0 when none do)."""
    rx = _COG_BLOCK if native else _DIFF_BLOCK
    top = -1
    for n in names:
        m = rx.match(n)
        if m:
            top = max(top, _index(m.group(1)))
    return top + 1


def block_index(name: str) -> int:
    """The highest block index a module or key name mentions, in any LoRA naming (-1 if none)."""
    return max((_index(d) for d in _ANY_BLOCK.findall(name)), default=-1)


def blocks_beyond(names: Iterable[str], limit: int) -> list[tuple[str, int]]:
    """(name, block index) of the names that address a block at or past ``limit``; cheap, so a
    reader can refuse them before looking the names up."""
    return [(n, i) for n in names if (i := block_index(n)) >= limit]


class _BlockNames:
    """Names of a model with ``num_layers`` identical blocks, looked up in the templates of a
    one-block model: block i's names are block 0's with the index replaced. Looking a name up
    costs the same whatever its block index, so no name can make weightsmith build a deep model."""

    def __init__(self, num_layers: int, templates: Mapping[str, object], rx: re.Pattern[str]) -> None:
        self.num_layers = num_layers
        self._templates = templates
        self._rx = rx

    def _find(self, name: object) -> tuple[object, int | None] | None:
        if not isinstance(name, str):
            return None
        t = _template(name, self._rx)
        if t is None or (t[1] is not None and t[1] >= self.num_layers):
            return None
        value = self._templates.get(t[0])
        return None if value is None else (value, t[1])

    def __contains__(self, name: object) -> bool:
        return self._find(name) is not None


class _LinkMap(_BlockNames):
    """``by_native``: SAT module name -> Link, for any block."""

    def get(self, name: str) -> Link | None:
        hit = self._find(name)
        return None if hit is None else _link_at(hit[0], hit[1])  # type: ignore[arg-type]

    def __getitem__(self, name: str) -> Link:
        link = self.get(name)
        if link is None:
            raise KeyError(name)
        return link


class _DiffusersLinkMap(_BlockNames):
    """``by_diffusers``: Diffusers module name -> (Link, which of its Diffusers modules), for any block."""

    def get(self, name: str) -> tuple[Link, int] | None:
        hit = self._find(name)
        if hit is None:
            return None
        (link, i), index = hit  # type: ignore[misc]
        return _link_at(link, index), i


def _link_at(template: Link, index: int | None) -> Link:
    """The template link of block ``{i}`` for block ``index`` (its op, the same for every block)."""
    return Link(
        _fill(template.native, index), tuple(_fill(d, index) for d in template.diffusers), template.op
    )


@dataclass(frozen=True)
class CogVideoXNames:
    """SAT <-> Diffusers module links of a CogVideoX DiT with ``num_layers`` blocks."""

    num_layers: int
    by_native: _LinkMap
    by_diffusers: _DiffusersLinkMap


_COG_VARIANT = "1.5-5b-i2v"  # the variant with every Linear a CogVideoX DiT can have (ofs embedding too)
SAT_PREFIX = DIFFUSION_PREFIX  # SAT keys sit under model.diffusion_model.


def _meta_state(cls: type, config: dict) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = cls(**config)
    return dict(model.state_dict())


def _templated(name: str, rx: re.Pattern[str]) -> str:
    t = _template(name, rx)
    if t is None:
        raise ConversionError(
            f"the family's own module name {name!r} has no block template (a weightsmith bug)"
        )
    return t[0]


@lru_cache(maxsize=1)
def _cogvideox_links() -> tuple[dict[str, Link], dict[str, tuple[Link, int]]]:
    """Template links (block index ``{i}``) read off the CogVideoX family's own plans for a
    one-block model (no table here)."""
    import diffusers

    from weightsmith.families import PlanOptions, get_component
    from weightsmith.families.cogvideox import tiny_transformer_config

    comp = get_component("cogvideox", "transformer")
    config = {**tiny_transformer_config(_COG_VARIANT), "num_layers": 1}
    infos = infos_from_state_dict(_meta_state(diffusers.CogVideoXTransformer3DModel, config))
    det = comp.detect(infos, config)
    if det is None:
        raise ConversionError("the CogVideoX family no longer recognises its own model (a weightsmith bug)")
    options = PlanOptions(config=config)
    sat: dict[str, TensorInfo] = {}
    for op in comp.plan(det, infos, "sat", options):
        ins = [Spec(k, infos[k].shape, infos[k].dtype) for k in op.inputs]
        for s in op.out_specs(ins):
            sat[s.name] = TensorInfo(s.name, s.shape, s.dtype, "F32", 0)
    sat_det = comp.detect(sat, config)
    if sat_det is None or sat_det.layout != "sat":
        raise ConversionError(
            "the CogVideoX family no longer recognises its own SAT layout (a weightsmith bug)"
        )
    by_native: dict[str, Link] = {}
    by_diff: dict[str, tuple[Link, int]] = {}
    for op in comp.plan(sat_det, sat, "diffusers", options):
        if len(op.inputs) != 1 or not op.inputs[0].endswith(_W) or not op.outputs:
            continue
        if not all(o.endswith(_W) for o in op.outputs):
            continue
        native = _templated(op.inputs[0].removeprefix(sat_det.prefix)[: -len(_W)], _COG_BLOCK)
        link = Link(native, tuple(_templated(o[: -len(_W)], _DIFF_BLOCK) for o in op.outputs), op)
        by_native[native] = link
        for i, d in enumerate(link.diffusers):
            by_diff[d] = (link, i)
    return by_native, by_diff


def cogvideox_names(num_layers: int) -> CogVideoXNames:
    """Links for ``num_layers`` blocks, from the family's own plans on a one-block model."""
    by_native, by_diff = _cogvideox_links()
    n = max(1, num_layers)
    return CogVideoXNames(n, _LinkMap(n, by_native, _COG_BLOCK), _DiffusersLinkMap(n, by_diff, _DIFF_BLOCK))


# ------------------------------------------------------------------------------------------ Sana
@lru_cache(maxsize=1)
def _sana_templates() -> dict[str, bool]:
    import diffusers

    from weightsmith.families import get_component

    comp = get_component("sana", "transformer")
    config = {**comp.tiny_config("sprint"), "num_layers": 1}  # type: ignore[attr-defined]
    state = _meta_state(diffusers.SanaTransformer2DModel, config)
    return {_templated(k.rsplit(".", 1)[0], _DIFF_BLOCK): True for k in state if k.endswith((_W, ".bias"))}


def sana_modules(num_layers: int) -> Container[str]:
    """Module names (holders of .weight/.bias) of a Sana transformer with every optional part
    and ``num_layers`` blocks (a container: ``name in sana_modules(n)``)."""
    return _BlockNames(max(1, num_layers), _sana_templates(), _DIFF_BLOCK)


# ----------------------------------------------------------------------------- family of names
def diffusers_families(modules: Iterable[str]) -> list[str]:
    """Families whose Diffusers transformer has every one of these modules (possibly several)."""
    mods = sorted(set(modules))
    if not mods:
        return []
    n = layers_needed(mods)
    found = []
    if all(wan_from_diffusers(m) is not None for m in mods):
        found.append("wan")
    if not found or any(m.startswith("transformer_blocks.") for m in mods):
        cog = cogvideox_names(max(n, 1)).by_diffusers
        if all(m in cog for m in mods):
            found.append("cogvideox")
        sana = sana_modules(max(n, 1))
        if all(m in sana for m in mods):
            found.append("sana")
    return found


def unknown_diffusers_modules(family: str, modules: Iterable[str]) -> list[str]:
    """The modules a family's Diffusers transformer does not have."""
    mods = sorted(set(modules))
    n = max(layers_needed(mods), 1)
    if family == "wan":
        return [m for m in mods if wan_from_diffusers(m) is None]
    if family == "cogvideox":
        cog = cogvideox_names(n).by_diffusers
        return [m for m in mods if m not in cog]
    if family == "sana":
        sana = sana_modules(n)
        return [m for m in mods if m not in sana]
    return mods
