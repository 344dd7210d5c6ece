"""How LoRA files name a component's modules: the adapter a Component holds as ``lora``.

A LoRA names modules, not tensors. weightsmith holds every LoRA under the names of the family's
Diffusers class (``blocks.0.attn1.to_q``); an adapter says which Diffusers module names its
component has, and, where the family has LoRA formats of its own, how those name the same
modules. ``weightsmith.lora`` reads and writes files and asks the registered adapters; it knows
no family.

Three kinds of native naming are supported, each optional:

* dotted native names (``native_to_diffusers``): one native module per Diffusers module, as in
  ComfyUI's ``diffusion_model.blocks.0.self_attn.q.lora_down.weight``;
* underscore names (``underscore_to_native``): kohya / musubi-tuner's ``lora_unet_`` keys, the
  native names with dots written as underscores;
* partitioned names (``split_partition_key``): a fused native module carrying one LoRA per
  partition (``matrix_A.0``), cut into Diffusers modules by the family's own conversion op
  (``Link``).

Blocks are identical, so names are kept as block-0 templates (``transformer_blocks.{i}.attn1``)
and a name of block i is looked up with its index replaced: any layer count works, nothing
counts keys, and a name's block index never sizes a model (a LoRA naming block 100000 costs
nothing). Block indices past what any real model has are refused by the readers
(``max_blocks``).
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from weightsmith.errors import ConversionError
from weightsmith.families.ops import Op, Regroup, Rename
from weightsmith.io.base import TensorInfo, infos_from_state_dict

if TYPE_CHECKING:
    import torch

WEIGHT = ".weight"
HUGE = 10**9  # stands for a block index too long to be a number worth converting
_SLOT = "{i}"  # where a block index stands in a name template


# --------------------------------------------------------------------------- block templates
def block_regex(stacks: str) -> re.Pattern[str]:
    """A pattern matching a name that starts in one of ``stacks`` (a regex alternation) at block N."""
    return re.compile(rf"(?:{stacks})\.([0-9]+)(?=\.|$)")


def index_of(digits: str) -> int:
    """A block index; absurdly long digit runs (int() refuses over 4300 digits) become HUGE."""
    return int(digits) if len(digits) <= 9 else HUGE


def template(name: str, rx: re.Pattern[str]) -> tuple[str, int | None] | None:
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


def templated(name: str, rx: re.Pattern[str]) -> str:
    """The block template of one of the family's own names (which always has one)."""
    t = template(name, rx)
    if t is None:
        raise ConversionError(
            f"the family's own module name {name!r} has no block template (a weightsmith bug)",
            hint="report this with the family and the model",
        )
    return t[0]


def fill(template_name: str, index: int | None) -> str:
    return template_name if index is None else template_name.replace(_SLOT, str(index))


def layers_in(names: Iterable[str], rx: re.Pattern[str]) -> int:
    """1 + the highest block index ``rx`` finds at the start of the names (0 when none do)."""
    top = -1
    for n in names:
        m = rx.match(n)
        if m:
            top = max(top, index_of(m.group(1)))
    return top + 1


class BlockNames:
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
        t = template(name, self._rx)
        if t is None or (t[1] is not None and t[1] >= self.num_layers):
            return None
        value = self._templates.get(t[0])
        return None if value is None else (value, t[1])

    def __contains__(self, name: object) -> bool:
        return self._find(name) is not None


# ------------------------------------------------------------------------------- native links
@dataclass(frozen=True)
class Link:
    """One native module and the Diffusers module(s) its weight becomes, with the family's op.

    ``label`` names the native layout and ``up_name`` the native up matrix in messages.
    """

    native: str
    diffusers: tuple[str, ...]
    op: Op
    label: str = "native"
    up_name: str = "up"

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
                f"a LoRA over the {self.label} module {self.native!r} cannot be cut into "
                f"{', '.join(self.diffusers)}",
                hint="convert the LoRA's base model instead, or use a LoRA trained on the Diffusers modules",
            )
        parts = op.chunks[0]
        if t.ndim != 2 or t.shape[op.dim] == 0 or t.shape[op.dim] % parts:
            raise ConversionError(
                f"{self.label} LoRA module {self.native!r}: {self.up_name} {list(t.shape)} does not cut "
                f"into {parts} equal row blocks for {', '.join(self.diffusers)}",
                hint="the file is corrupt, or the LoRA is for another model",
            )
        return op.apply([t])

    def at(self, index: int | None) -> Link:
        """This template link (block ``{i}``) for block ``index`` (its op, the same for every block)."""
        return Link(
            fill(self.native, index),
            tuple(fill(d, index) for d in self.diffusers),
            self.op,
            self.label,
            self.up_name,
        )


class LinkMap(BlockNames):
    """Native module name -> Link, for any block."""

    def get(self, name: str) -> Link | None:
        hit = self._find(name)
        return None if hit is None else hit[0].at(hit[1])  # type: ignore[attr-defined]

    def __getitem__(self, name: str) -> Link:
        link = self.get(name)
        if link is None:
            raise KeyError(name)
        return link


class DiffusersLinkMap(BlockNames):
    """Diffusers module name -> (Link, which of its Diffusers modules), for any block."""

    def get(self, name: str) -> tuple[Link, int] | None:
        hit = self._find(name)
        if hit is None:
            return None
        (link, i), index = hit  # type: ignore[misc]
        return link.at(index), i


@dataclass(frozen=True)
class LinkNames:
    """Native <-> Diffusers module links of a model with ``num_layers`` blocks."""

    num_layers: int
    by_native: LinkMap
    by_diffusers: DiffusersLinkMap


# ---------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class LoraTarget:
    """A LoRA file format a family writes besides Diffusers PEFT (``weightsmith lora convert --to``).

    ``naming``: which of the adapter's native namings it writes. ``prefix``: put before every key.
    ``torch_files``: also written as a ``.pt`` file or a SAT checkpoint folder, not only safetensors.
    """

    name: str
    naming: Literal["native", "partitioned"]
    label: str  # the format in messages ("original", "SAT")
    summary: str  # the format in the conversion summary
    choice_help: str  # after the name in ``--to``'s help
    dst_help: tuple[str, ...]  # what DST is, for ``lora convert --help``
    example_dst: str
    prefix: str = ""
    torch_files: bool = False


# ---------------------------------------------------------------------------------- adapter
class ComponentLora:
    """How LoRA files name one component's modules. Defaults: Diffusers (PEFT) names only,
    read off the component's tiny model; a family overrides what its own formats need."""

    title: str = ""  # the family in messages ("CogVideoX"); default: the family name
    largest_released: int = 100  # blocks of the deepest released model
    headroom: int = 4  # LoRAs may address up to headroom x that many blocks (deeper future models)
    # Words written before a block index in any of this family's LoRA namings (``layers`` in
    # ``transformer.layers.3``); readers find block indices with them before knowing the family.
    block_words: tuple[str, ...] = ("blocks",)
    diffusers_blocks: str = r"transformer_blocks|blocks"  # block stacks in Diffusers names
    # Whether a LoRA whose Diffusers names all fit this family is taken as this family's without
    # asking the others (names distinctive enough that sharing a few, e.g. proj_out, is chance).
    exclusive: bool = False
    names_variant: str | None = None  # tiny variant with every optional module; None: the first
    format_help: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (format, help lines) per native format

    native_format: str | None = None  # dotted native names, e.g. "wan-original"
    underscore_format: str | None = None  # kohya-style underscore names
    underscore_prefix: str = "lora_unet_"
    underscore_label: str = ""  # the tool that writes them, in messages
    partition_format: str | None = None  # partitioned native modules
    partition_label: str = ""  # the native layout in messages ("SAT")
    partition_prefix: str = ""
    partition_roles: tuple[str, str] = ("A", "B")  # native names of down and up
    targets: tuple[LoraTarget, ...] = ()

    _owner: type | None = None
    _component: Any = None
    _templates: dict[str, bool] | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self._owner = owner

    # ----------------------------------------------------------------- the component
    @property
    def component(self) -> Any:
        """The Component this adapter belongs to (an instance of the class that declares it)."""
        if self._component is None:
            if self._owner is None:
                raise ConversionError(
                    "a LoRA adapter used outside a Component class (a weightsmith bug)",
                    hint="declare it as `lora = ...` in the Component's class body",
                )
            self._component = self._owner()
        return self._component

    @property
    def family(self) -> str:
        return str(self.component.family)

    @property
    def display(self) -> str:
        return self.title or self.family

    @property
    def max_blocks(self) -> int:
        return self.headroom * self.largest_released

    @property
    def formats(self) -> tuple[str, ...]:
        """The native formats this family reads, besides Diffusers PEFT."""
        named = (self.native_format, self.underscore_format, self.partition_format)
        return tuple(f for f in named if f is not None)

    # ------------------------------------------------------------ Diffusers names
    def layers_needed(self, names: Iterable[str]) -> int:
        """1 + the highest block index these Diffusers names mention (0 when none do)."""
        return layers_in(names, block_regex(self.diffusers_blocks))

    def diffusers_modules(self, num_layers: int) -> Container[str]:
        """Module names (holders of .weight/.bias) of the component with every optional part and
        ``num_layers`` blocks (a container: ``name in adapter.diffusers_modules(n)``)."""
        return BlockNames(max(1, num_layers), self._diffusers_templates(), block_regex(self.diffusers_blocks))

    def unknown_diffusers(self, modules: Iterable[str]) -> list[str]:
        """The modules (sorted) the component's Diffusers class does not have."""
        mods = sorted(set(modules))
        known = self.diffusers_modules(max(self.layers_needed(mods), 1))
        return [m for m in mods if m not in known]

    def fits_diffusers(self, modules: Iterable[str]) -> bool:
        return not self.unknown_diffusers(modules)

    def _diffusers_templates(self) -> dict[str, bool]:
        if self._templates is None:
            rx = block_regex(self.diffusers_blocks)
            state = self.tiny_state()[0]
            self._templates = {
                templated(k.rsplit(".", 1)[0], rx): True for k in state if k.endswith((WEIGHT, ".bias"))
            }
        return self._templates

    def tiny_state(self) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
        """Infos and config of the component's tiny model of ``names_variant`` (every optional part)."""
        comp = self.component
        variant = self.names_variant or comp.variants[0]
        model = comp.tiny_model(variant)
        config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        return infos_from_state_dict(dict(model.state_dict())), config

    # ------------------------------------------------------------ native namings
    def native_to_diffusers(self, native: str) -> tuple[str, bool] | None:
        """Diffusers name of a dotted native module (or parameter, flagged True), or None."""
        return None

    def diffusers_to_native(self, module: str, param: bool = False) -> str | None:
        """Dotted native name of a Diffusers module (or parameter), or None."""
        return None

    def underscore_to_native(self, name: str) -> str | None:
        """Dotted native module of an underscore name (without ``underscore_prefix``), or None."""
        return None

    def split_partition_key(self, key: str) -> tuple[str, str, str] | None:
        """(native module, "down"/"up", partition digits) of a partitioned key, or None."""
        return None

    def partition_key(self, native: str, role: str, part: int) -> str:
        """The key of partition ``part`` of ``native``'s down or up matrix."""
        raise NotImplementedError(f"{self.family} has no partitioned LoRA names")

    def native_layers_needed(self, names: Iterable[str]) -> int:
        """1 + the highest block index these partitioned native module names mention."""
        return 0

    def links(self, num_layers: int) -> LinkNames:
        """Native <-> Diffusers links of a model with ``num_layers`` blocks (partitioned naming)."""
        raise NotImplementedError(f"{self.family} has no partitioned LoRA names")

    def target(self, naming: str) -> LoraTarget | None:
        """The format this adapter writes with ``naming`` ("native" or "partitioned"), if any."""
        return next((t for t in self.targets if t.naming == naming), None)
