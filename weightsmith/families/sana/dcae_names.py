"""DC-AE name translator: efficientvit (original) names <-> Diffusers ``AutoencoderDC`` names.

The original layout nests every block in efficientvit containers (``stages.i.op_list.j``,
``ResidualBlock.main``, ``ConvLayer.conv``, ``context_module``/``local_module``); Diffusers
flattens them (``down_blocks.i.j``). Names are translated by a table of templates applied
whole-name in either direction (never a chain of substring replacements), so the reverse is
exact. Where Diffusers names do not tell which container a tensor sat in, a ``Ctx`` says
(see ``dcae_shapes.shape_ctx``). The fused q/k/v and the 1x1-conv projections are not renames;
the component's plan handles them (``QKV_*``, ``PROJ_*``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from weightsmith.families.base import KeyView

ORIG_BLOCK = re.compile(r"(encoder|decoder)\.stages\.(\d+)\.op_list\.(\d+)\.(.+)")
DIFF_BLOCK = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(\d+)\.(.+)")
BLOCKS = {"encoder": "encoder.down_blocks", "decoder": "decoder.up_blocks"}
SIDES = {v: k for k, v in BLOCKS.items()}

# Placeholders in the name templates below.
_SLOTS = {
    "p": r"(?P<p>weight|bias)",
    "n": r"(?P<n>weight|bias|running_mean|running_var|num_batches_tracked)",
    "k": r"(?P<k>\d+)",
}


@dataclass(frozen=True)
class Ctx:
    """The facts about a DC-AE that its Diffusers names leave open (see module docstring)."""

    downsample: str = "conv"  # "conv" (stride-2 ConvLayer) or "pixel_unshuffle"
    out_shortcut: bool = True  # encoder.project_out wrapped in a ResidualBlock (``main.``)
    in_shortcut: bool = True  # decoder.project_in wrapped in a ResidualBlock (``main.``)
    stage0_empty: bool = False  # encoder stage 0 has no blocks: project_in downsamples


Pred = Callable[[Ctx], bool]


def _always(_: Ctx) -> bool:
    return True


@dataclass(frozen=True)
class _Rule:
    """One name template in both layouts; ``fwd``/``rev`` say when it applies in each direction."""

    orig: str
    diff: str
    fwd: Pred = _always
    rev: Pred = _always

    def to_diff(self, name: str, ctx: Ctx) -> str | None:
        m = _template_rx(self.orig).fullmatch(name)
        return self.diff.format(**m.groupdict()) if m and self.fwd(ctx) else None

    def to_orig(self, name: str, ctx: Ctx) -> str | None:
        m = _template_rx(self.diff).fullmatch(name)
        return self.orig.format(**m.groupdict()) if m and self.rev(ctx) else None


@functools.cache
def _template_rx(tpl: str) -> re.Pattern[str]:
    """A name template (``main.conv1.conv.{p}``) as a regex with one named group per slot."""
    pattern = re.escape(tpl)
    for slot, rx in _SLOTS.items():
        pattern = pattern.replace(re.escape("{" + slot + "}"), rx)
    return re.compile(pattern)


# Whole-model names outside the stages.
_TOP_RULES = (
    _Rule("encoder.project_in.conv.{p}", "encoder.conv_in.{p}", fwd=lambda c: not c.stage0_empty),
    # Stage 0 empty: project_in is a downsample layer (Diffusers' DCDownBlock2d ``conv_in.conv``).
    _Rule(
        "encoder.project_in.conv.conv.{p}", "encoder.conv_in.conv.{p}", rev=lambda c: c.downsample != "conv"
    ),
    _Rule(
        "encoder.project_in.conv.{p}",
        "encoder.conv_in.conv.{p}",
        fwd=lambda c: c.stage0_empty,
        rev=lambda c: c.downsample == "conv",
    ),
    _Rule(
        "encoder.project_out.main.op_list.0.conv.{p}", "encoder.conv_out.{p}", rev=lambda c: c.out_shortcut
    ),
    _Rule("encoder.project_out.op_list.0.conv.{p}", "encoder.conv_out.{p}", rev=lambda c: not c.out_shortcut),
    _Rule("decoder.project_in.main.conv.{p}", "decoder.conv_in.{p}", rev=lambda c: c.in_shortcut),
    _Rule("decoder.project_in.conv.{p}", "decoder.conv_in.{p}", rev=lambda c: not c.in_shortcut),
    _Rule("decoder.project_out.op_list.0.{n}", "decoder.norm_out.{n}"),
    _Rule("decoder.project_out.op_list.2.conv.{p}", "decoder.conv_out.{p}"),
    _Rule("decoder.project_out.op_list.2.conv.conv.{p}", "decoder.conv_out.conv.{p}"),
)

# Names inside one block, relative to ``stages.i.op_list.j.`` / ``down_blocks.i.j.``.
_COMMON_BLOCK_RULES = (
    # ResBlock
    _Rule("main.conv1.conv.{p}", "conv1.{p}"),
    _Rule("main.conv2.conv.{p}", "conv2.{p}"),
    _Rule("main.conv2.norm.{n}", "norm.{n}"),
    # EfficientViTBlock: LiteMLA context module (qkv and proj are special ops, see _special_*)
    _Rule("context_module.main.aggreg.{k}.0.{p}", "attn.to_qkv_multiscale.{k}.proj_in.{p}"),
    _Rule("context_module.main.aggreg.{k}.1.{p}", "attn.to_qkv_multiscale.{k}.proj_out.{p}"),
    _Rule("context_module.main.proj.norm.{n}", "attn.norm_out.{n}"),
    # EfficientViTBlock: GLUMBConv local module
    _Rule("local_module.main.inverted_conv.conv.{p}", "conv_out.conv_inverted.{p}"),
    _Rule("local_module.main.depth_conv.conv.{p}", "conv_out.conv_depth.{p}"),
    _Rule("local_module.main.point_conv.conv.{p}", "conv_out.conv_point.{p}"),
    _Rule("local_module.main.point_conv.norm.{n}", "conv_out.norm.{n}"),
)
_SIDE_BLOCK_RULES = {
    # Downsample: ResidualBlock(ConvLayer stride 2) or ResidualBlock(ConvPixelUnshuffle(ConvLayer)).
    "encoder": (
        _Rule("main.conv.{p}", "conv.{p}", rev=lambda c: c.downsample == "conv"),
        _Rule("main.conv.conv.{p}", "conv.{p}", rev=lambda c: c.downsample != "conv"),
    ),
    # Upsample: ResidualBlock(InterpolateConv(ConvLayer)) or ResidualBlock(ConvPixelShuffle(ConvLayer)).
    "decoder": (_Rule("main.conv.conv.{p}", "conv.{p}"),),
}
MULTISCALE_IN = re.compile(r"attn\.to_qkv_multiscale\.(\d+)\.proj_in\.weight")
QKV_ORIG, PROJ_ORIG = "context_module.main.qkv.conv.weight", "context_module.main.proj.conv.weight"
QKV_DIFF, PROJ_DIFF = ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight"), "attn.to_out.weight"


def name_to_diff(name: str, ctx: Ctx) -> str | None:
    """Original name -> Diffusers name (plain renames only), or None when no rule knows it."""
    m = ORIG_BLOCK.fullmatch(name)
    if m:
        side, i, j, rest = m.groups()
        for rule in _COMMON_BLOCK_RULES + _SIDE_BLOCK_RULES[side]:
            new = rule.to_diff(rest, ctx)
            if new is not None:
                return f"{BLOCKS[side]}.{i}.{j}.{new}"
        return None
    for rule in _TOP_RULES:
        new = rule.to_diff(name, ctx)
        if new is not None:
            return new
    return None


def name_to_orig(name: str, ctx: Ctx) -> str | None:
    """Diffusers name -> original name (plain renames only), or None when no rule knows it."""
    m = DIFF_BLOCK.fullmatch(name)
    if m:
        blocks, i, j, rest = m.groups()
        side = SIDES[blocks]
        for rule in _COMMON_BLOCK_RULES + _SIDE_BLOCK_RULES[side]:
            new = rule.to_orig(rest, ctx)
            if new is not None:
                return f"{side}.stages.{i}.op_list.{j}.{new}"
        return None
    for rule in _TOP_RULES:
        new = rule.to_orig(name, ctx)
        if new is not None:
            return new
    return None


def any_name_to_orig(name: str, ctx: Ctx) -> str:
    """Diffusers name -> original name, fused q/k/v and reshaped projections included (for messages)."""
    m = DIFF_BLOCK.fullmatch(name)
    if m and m.group(4) in (*QKV_DIFF, PROJ_DIFF):
        base = f"{SIDES[m.group(1)]}.stages.{m.group(2)}.op_list.{m.group(3)}."
        return base + (PROJ_ORIG if m.group(4) == PROJ_DIFF else QKV_ORIG)
    return name_to_orig(name, ctx) or name


def canonical(view: KeyView, ctx: Ctx) -> dict[str, tuple[str, ...]]:
    """Diffusers name(s) of every original key a rule knows (a fused qkv has three)."""
    out: dict[str, tuple[str, ...]] = {}
    for k in view.infos:
        m = ORIG_BLOCK.fullmatch(k)
        if m and m.group(4) in (QKV_ORIG, PROJ_ORIG):
            base = f"{BLOCKS[m.group(1)]}.{m.group(2)}.{m.group(3)}."
            out[k] = tuple(base + q for q in QKV_DIFF) if m.group(4) == QKV_ORIG else (base + PROJ_DIFF,)
            continue
        new = name_to_diff(k, ctx)
        if new is not None:
            out[k] = (new,)
    return out


_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def required_keys(names: set[str]) -> list[str]:
    """Diffusers keys a DC-AE with these blocks cannot do without (a block is typed by any key of it).

    Every DC-AE norm (RMS or batch) has a weight and a bias; a batch norm that shows one running
    statistic must have all three.
    """
    need: set[str] = set()

    def norm(base: str) -> None:
        need.update((f"{base}.weight", f"{base}.bias"))
        if any(f"{base}.{s}" in names for s in _BN_STATS):
            need.update(f"{base}.{s}" for s in _BN_STATS)

    def conv(base: str, bias: bool = True) -> None:
        need.update((f"{base}.weight", f"{base}.bias") if bias else (f"{base}.weight",))

    stem = any(n.startswith("encoder.conv_in.conv.") for n in names)
    conv("encoder.conv_in.conv" if stem else "encoder.conv_in")
    conv("encoder.conv_out")
    conv("decoder.conv_in")
    norm("decoder.norm_out")
    conv(
        "decoder.conv_out.conv"
        if any(n.startswith("decoder.conv_out.conv.") for n in names)
        else "decoder.conv_out"
    )
    blocks: dict[str, set[str]] = {}
    for n in names:
        m = DIFF_BLOCK.fullmatch(n)
        if m:
            blocks.setdefault(f"{m.group(1)}.{m.group(2)}.{m.group(3)}", set()).add(m.group(4))
    for base, rests in blocks.items():
        if any(r.startswith(("conv1.", "conv2.")) for r in rests):  # ResBlock
            conv(f"{base}.conv1")
            conv(f"{base}.conv2", bias=False)
            norm(f"{base}.norm")
        elif any(r.startswith(("attn.", "conv_out.")) for r in rests):  # EfficientViTBlock
            need.update(f"{base}.{r}" for r in (*QKV_DIFF, PROJ_DIFF))
            norm(f"{base}.attn.norm_out")
            conv(f"{base}.conv_out.conv_inverted")
            conv(f"{base}.conv_out.conv_depth")
            conv(f"{base}.conv_out.conv_point", bias=False)
            norm(f"{base}.conv_out.norm")
            for r in rests:
                ms = re.fullmatch(r"attn\.to_qkv_multiscale\.(\d+)\.proj_(?:in|out)\.weight", r)
                if ms:
                    ms_base = f"{base}.attn.to_qkv_multiscale.{ms.group(1)}"
                    need.update((f"{ms_base}.proj_in.weight", f"{ms_base}.proj_out.weight"))
        elif any(r.startswith("conv.") for r in rests):  # down/upsample layer
            conv(f"{base}.conv")
    return sorted(need - names)


def orig_ctx(view: KeyView) -> Ctx:
    """Facts an original checkpoint states by its own names."""
    keys = list(view.infos)
    return Ctx(
        downsample="pixel_unshuffle"
        if any(
            re.fullmatch(r"encoder\.stages\.\d+\.op_list\.\d+\.main\.conv\.conv\.(weight|bias)", k)
            for k in keys
        )
        or view.has("encoder.project_in.conv.conv.weight")
        else "conv",
        out_shortcut=any(k.startswith("encoder.project_out.main.") for k in keys),
        in_shortcut=any(k.startswith("decoder.project_in.main.") for k in keys),
        stage0_empty=not any(k.startswith("encoder.stages.0.") for k in keys),
    )
