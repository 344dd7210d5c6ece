"""DC-AE, Sana's autoencoder: MIT Han Lab's efficientvit layout <-> Diffusers ``AutoencoderDC``.

The original layout nests every block in efficientvit containers (``stages.i.op_list.j``,
``ResidualBlock.main``, ``ConvLayer.conv``, ``context_module``/``local_module``); Diffusers
flattens them (``down_blocks.i.j``) and turns the 1x1-conv attention projections into Linear
layers. Names are translated by a table of templates applied whole-name in either direction
(never a chain of substring replacements), so the reverse is exact. Where Diffusers names do not
tell which efficientvit container a tensor sat in (the downsample layer type, the project-in/out
shortcuts), the answer comes from the Diffusers config or, failing that, from shapes and the
efficientvit defaults. See ``shared/reference/layouts.md`` section 4.3.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from weightsmith.convert.ops import Op, Regroup, Rename, Reshape
from weightsmith.errors import ConversionError
from weightsmith.families.base import (
    NO_OPTIONS,
    Component,
    Detection,
    KeyView,
    PlanOptions,
    candidate_prefixes,
    register,
)
from weightsmith.families.sana._shared import (
    order_by_input,
    stray_keys,
)
from weightsmith.io.base import TensorInfo

SANA_SCALING_FACTOR = 0.41407  # dc-ae-f32c32-sana-1.x latent scaling (diffusers' Sana VAE config)

# Config fields shapes cannot tell (or tell only sometimes); taken from a given config first.
_CONFIG_ONLY = (
    "attention_head_dim",
    "encoder_block_out_channels",
    "decoder_block_out_channels",
    "downsample_block_type",
    "upsample_block_type",
    "decoder_act_fns",
    "decoder_norm_types",
    "encoder_out_shortcut",
    "decoder_in_shortcut",
    "decoder_conv_act_fn",
    "scaling_factor",
)

_ORIG_BLOCK = re.compile(r"(encoder|decoder)\.stages\.(\d+)\.op_list\.(\d+)\.(.+)")
_DIFF_BLOCK = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(\d+)\.(.+)")
_BLOCKS = {"encoder": "encoder.down_blocks", "decoder": "decoder.up_blocks"}
_SIDES = {v: k for k, v in _BLOCKS.items()}

# Placeholders in the name templates below.
_SLOTS = {
    "p": r"(?P<p>weight|bias)",
    "n": r"(?P<n>weight|bias|running_mean|running_var|num_batches_tracked)",
    "k": r"(?P<k>\d+)",
}


@dataclass(frozen=True)
class _Ctx:
    """The facts about a DC-AE that its Diffusers names leave open (see module docstring)."""

    downsample: str = "conv"  # "conv" (stride-2 ConvLayer) or "pixel_unshuffle"
    out_shortcut: bool = True  # encoder.project_out wrapped in a ResidualBlock (``main.``)
    in_shortcut: bool = True  # decoder.project_in wrapped in a ResidualBlock (``main.``)
    stage0_empty: bool = False  # encoder stage 0 has no blocks: project_in downsamples


Pred = Callable[[_Ctx], bool]


def _always(_: _Ctx) -> bool:
    return True


@dataclass(frozen=True)
class _Rule:
    """One name template in both layouts; ``fwd``/``rev`` say when it applies in each direction."""

    orig: str
    diff: str
    fwd: Pred = _always
    rev: Pred = _always

    def to_diff(self, name: str, ctx: _Ctx) -> str | None:
        m = _template_rx(self.orig).fullmatch(name)
        return self.diff.format(**m.groupdict()) if m and self.fwd(ctx) else None

    def to_orig(self, name: str, ctx: _Ctx) -> str | None:
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
_MULTISCALE_IN = re.compile(r"attn\.to_qkv_multiscale\.(\d+)\.proj_in\.weight")
_QKV_ORIG, _PROJ_ORIG = "context_module.main.qkv.conv.weight", "context_module.main.proj.conv.weight"
_QKV_DIFF, _PROJ_DIFF = ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight"), "attn.to_out.weight"


def _name_to_diff(name: str, ctx: _Ctx) -> str | None:
    """Original name -> Diffusers name (plain renames only), or None when no rule knows it."""
    m = _ORIG_BLOCK.fullmatch(name)
    if m:
        side, i, j, rest = m.groups()
        for rule in _COMMON_BLOCK_RULES + _SIDE_BLOCK_RULES[side]:
            new = rule.to_diff(rest, ctx)
            if new is not None:
                return f"{_BLOCKS[side]}.{i}.{j}.{new}"
        return None
    for rule in _TOP_RULES:
        new = rule.to_diff(name, ctx)
        if new is not None:
            return new
    return None


def _name_to_orig(name: str, ctx: _Ctx) -> str | None:
    """Diffusers name -> original name (plain renames only), or None when no rule knows it."""
    m = _DIFF_BLOCK.fullmatch(name)
    if m:
        blocks, i, j, rest = m.groups()
        side = _SIDES[blocks]
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


def _any_name_to_orig(name: str, ctx: _Ctx) -> str:
    """Diffusers name -> original name, fused q/k/v and reshaped projections included (for messages)."""
    m = _DIFF_BLOCK.fullmatch(name)
    if m and m.group(4) in (*_QKV_DIFF, _PROJ_DIFF):
        base = f"{_SIDES[m.group(1)]}.stages.{m.group(2)}.op_list.{m.group(3)}."
        return base + (_PROJ_ORIG if m.group(4) == _PROJ_DIFF else _QKV_ORIG)
    return _name_to_orig(name, ctx) or name


def _canonical(view: KeyView, ctx: _Ctx) -> dict[str, tuple[str, ...]]:
    """Diffusers name(s) of every original key a rule knows (a fused qkv has three)."""
    out: dict[str, tuple[str, ...]] = {}
    for k in view.infos:
        m = _ORIG_BLOCK.fullmatch(k)
        if m and m.group(4) in (_QKV_ORIG, _PROJ_ORIG):
            base = f"{_BLOCKS[m.group(1)]}.{m.group(2)}.{m.group(3)}."
            out[k] = tuple(base + q for q in _QKV_DIFF) if m.group(4) == _QKV_ORIG else (base + _PROJ_DIFF,)
            continue
        new = _name_to_diff(k, ctx)
        if new is not None:
            out[k] = (new,)
    return out


_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _required(names: set[str]) -> list[str]:
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
        m = _DIFF_BLOCK.fullmatch(n)
        if m:
            blocks.setdefault(f"{m.group(1)}.{m.group(2)}.{m.group(3)}", set()).add(m.group(4))
    for base, rests in blocks.items():
        if any(r.startswith(("conv1.", "conv2.")) for r in rests):  # ResBlock
            conv(f"{base}.conv1")
            conv(f"{base}.conv2", bias=False)
            norm(f"{base}.norm")
        elif any(r.startswith(("attn.", "conv_out.")) for r in rests):  # EfficientViTBlock
            need.update(f"{base}.{r}" for r in (*_QKV_DIFF, _PROJ_DIFF))
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


def _blocks_of(view: KeyView, blocks: str) -> dict[int, dict[int, set[str]]]:
    """stage -> op index -> the Diffusers sub-names under ``blocks.stage.op``."""
    out: dict[int, dict[int, set[str]]] = {}
    for k in view.infos:
        m = _DIFF_BLOCK.fullmatch(k)
        if m and m.group(1) == blocks:
            out.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), set()).add(m.group(4))
    return out


def _is_sampler(rests: set[str]) -> bool:
    return "conv.weight" in rests


def _shape_ctx(view: KeyView, cfg: Mapping[str, Any]) -> _Ctx:
    """Reverse-direction facts from a Diffusers checkpoint: its config first, then shapes, then defaults."""
    down = cfg.get("downsample_block_type") or _guess_downsample(view) or "pixel_unshuffle"
    return _Ctx(
        downsample="conv" if str(down).lower() == "conv" else "pixel_unshuffle",
        out_shortcut=bool(cfg.get("encoder_out_shortcut", True)),
        in_shortcut=bool(cfg.get("decoder_in_shortcut", True)),
    )


def _orig_ctx(view: KeyView) -> _Ctx:
    """Facts an original checkpoint states by its own names."""
    keys = list(view.infos)
    return _Ctx(
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


def _widths(view: KeyView, blocks: str) -> dict[int, int]:
    """Channel width of every stage that has at least one block (sampler layers excluded)."""
    out: dict[int, int] = {}
    for i, ops in _blocks_of(view, blocks).items():
        for j, rests in sorted(ops.items()):
            base = f"{blocks}.{i}.{j}."
            if "conv1.weight" in rests:
                out[i] = view.shape(base + "conv1.weight")[0]  # type: ignore[index]
            elif "attn.to_q.weight" in rests:
                out[i] = view.shape(base + "attn.to_q.weight")[1]  # type: ignore[index]
            else:
                continue
            break
    return out


def _guess_downsample(view: KeyView) -> str | None:
    """A stride-2 conv keeps the next stage's width; a pixel-unshuffle conv has a quarter of it."""
    widths = _widths(view, "encoder.down_blocks")
    for i, ops in sorted(_blocks_of(view, "encoder.down_blocks").items()):
        for j, rests in ops.items():
            if _is_sampler(rests) and i + 1 in widths:
                out = view.shape(f"encoder.down_blocks.{i}.{j}.conv.weight")[0]  # type: ignore[index]
                return "conv" if out == widths[i + 1] else "pixel_unshuffle"
    shape = view.shape("encoder.conv_in.conv.weight")
    if shape is not None and 1 in widths:
        return "conv" if shape[0] == widths[1] else "pixel_unshuffle"
    return None


def _stages(
    view: KeyView, blocks: str, ops: dict[int, dict[int, set[str]]], n: int, given: list[int] | None
) -> dict[str, list[Any]]:
    """Per-stage layers, block type, multiscale kernels, norm type and width of one side.

    A stage without blocks (only the first can be) has no weights to tell its width, type or norm:
    its width comes from the given config, else it copies the next stage's, as do its type and norm.
    """
    widths = _widths(view, blocks)
    layers: list[int] = []
    info: dict[int, tuple[str, list[int], str]] = {}
    for i in range(n):
        body = [(j, r) for j, r in sorted(ops.get(i, {}).items()) if not _is_sampler(r)]
        layers.append(len(body))
        if not body:
            continue
        evit = [(j, r) for j, r in body if "attn.to_q.weight" in r]
        kernels: list[int] = []
        if evit:
            j, r = evit[0]
            scale_ids = sorted(int(m.group(1)) for x in r if (m := _MULTISCALE_IN.fullmatch(x)))
            kernels = [
                view.shape(f"{blocks}.{i}.{j}.attn.to_qkv_multiscale.{q}.proj_in.weight")[-1]  # type: ignore[index]
                for q in scale_ids
            ]
        batch_norm = any(x.endswith("norm.running_mean") for _, r in body for x in r)
        info[i] = (
            "EfficientViTBlock" if evit else "ResBlock",
            kernels,
            "batch_norm" if batch_norm else "rms_norm",
        )
    fallback = ("ResBlock", [], "rms_norm")
    filled = [
        info.get(i) or next((info[k] for k in range(i + 1, n) if k in info), fallback) for i in range(n)
    ]
    chans = []
    for i in range(n):
        if i in widths:
            chans.append(widths[i])
        elif given and len(given) == n:
            chans.append(int(given[i]))
        else:
            chans.append(next((widths[k] for k in range(i + 1, n) if k in widths), widths.get(i - 1, 0)))
    return {
        "layers": layers,
        "types": [t for t, _, _ in filled],
        "scales": [info[i][1] if i in info else [] for i in range(n)],
        "norms": [nm for _, _, nm in filled],
        "chans": chans,
    }


def _source_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: config[k] for k in _CONFIG_ONLY if config and k in config}


@register
class DCAE(Component):
    """Sana's DC-AE in the efficientvit (original) layout and Diffusers' ``AutoencoderDC`` layout."""

    family: ClassVar[str] = "sana"
    component: ClassVar[str] = "vae"
    layouts: ClassVar[tuple[str, ...]] = ("original", "diffusers")
    # "f32c32-sana": Sana-style stem (a plain conv project-in with bias, what diffusers' single-file
    # loader calls autoencoder-dc-f32c32-sana); "generic": the other DC-AEs, whose encoder stem
    # is itself a downsample layer (f32c32/f64c128/f128c512 in/mix releases).
    variants: ClassVar[tuple[str, ...]] = ("f32c32-sana", "generic")
    diffusers_class: ClassVar[str] = "AutoencoderDC"
    label: ClassVar[str | None] = "Sana DC-AE"

    # ---------------------------------------------------------------- detection
    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """DC-AE by its container naming; the variant by the encoder stem, which structure shows."""
        # Every DC-AE has a decoder conv_in under one name or another; it anchors the prefix.
        keys_all = list(infos)
        prefixes = [
            p
            for tail in (
                "decoder.project_in.main.conv.weight",
                "decoder.project_in.conv.weight",
                "decoder.conv_in.weight",
            )
            for p in candidate_prefixes(keys_all, tail)
        ]
        for prefix in sorted(set(prefixes), key=lambda p: (len(p), p)):
            view = KeyView(infos, prefix)
            if not len(view):
                continue
            keys = list(view.infos)
            if (
                any(_ORIG_BLOCK.fullmatch(k) and k.startswith("decoder.") for k in keys)
                and any(k.startswith("encoder.project_in.conv.") for k in keys)
                and any(k.startswith("decoder.project_in.") for k in keys)
            ):
                ctx = _orig_ctx(view)
                sana = view.has("encoder.project_in.conv.bias") and not ctx.stage0_empty
                n_stages = 1 + max(int(m.group(2)) for k in keys if (m := _ORIG_BLOCK.fullmatch(k)))
                latent = view.shape("encoder.project_out.main.op_list.0.conv.weight") or view.shape(
                    "encoder.project_out.op_list.0.conv.weight"
                )
                return self._detection("original", prefix, sana, n_stages, latent, config)
            if (
                view.has("decoder.conv_in.weight", "decoder.norm_out.weight")
                and view.any("encoder.conv_in.weight", "encoder.conv_in.conv.weight")
                and any(_DIFF_BLOCK.fullmatch(k) for k in keys)
            ):
                blocks = [m for k in keys if (m := _DIFF_BLOCK.fullmatch(k))]
                n_stages = 1 + max(int(m.group(2)) for m in blocks)
                sana = view.has("encoder.conv_in.weight")
                return self._detection(
                    "diffusers", prefix, sana, n_stages, view.shape("encoder.conv_out.weight"), config
                )
        return None

    def _detection(
        self,
        layout: str,
        prefix: str,
        sana: bool,
        n_stages: int,
        latent_shape: tuple[int, ...] | None,
        config: Mapping[str, Any] | None,
    ) -> Detection:
        factor = 2 ** (n_stages - 1)
        latent = latent_shape[0] if latent_shape else None
        facts: dict[str, Any] = {
            "spatial_compression": factor,
            "latent_channels": latent,
            "name": f"f{factor}c{latent}",
        }
        src = _source_config(config)
        if src:
            facts["source_config"] = src
        return Detection(
            family=self.family,
            component=self.component,
            layout=layout,
            variant="f32c32-sana" if sana else "generic",
            prefix=prefix,
            facts=facts,
        )

    # ---------------------------------------------------------------- conversion
    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Original <-> Diffusers, every tensor kept bit for bit.

        To Diffusers: ``qkv.conv.weight`` [3i, c, 1, 1] is cut in three and each part reshaped to a
        Linear [i, c]; ``proj.conv.weight`` [c, i', 1, 1] becomes [c, i']. To original: the reverse,
        back to 1x1 conv shapes. ``options.prefix`` goes before every original-layout output key.
        """
        self.check_plan(detection, target_layout, options)
        what = f"{self.title()} ({detection.layout} layout)"
        self.check_keys(what, stray_keys(infos, detection.prefix))
        src = detection.prefix
        view = KeyView(infos, src)
        out_prefix = options.prefix if target_layout == "original" else ""
        if target_layout == detection.layout:
            return [Rename(src + k, out_prefix + k) for k in view.infos]

        if detection.layout == "original":
            ctx = _orig_ctx(view)
            canon = _canonical(view, ctx)
            self.check_keys(what, [k for k in view.infos if k not in canon])
            names = {n for v in canon.values() for n in v}
            missing = _required(names)
            self.check_keys(what, missing={_any_name_to_orig(n, ctx) for n in missing})
            return order_by_input(self._to_diffusers(view, src, ctx), infos)

        cfg = dict(detection.facts.get("source_config") or {})
        cfg.update(options.config or {})
        ctx = _shape_ctx(view, cfg)
        self.check_keys(what, missing=_required(set(view.infos)))
        return order_by_input(self._to_original(view, src, ctx, out_prefix, what), infos)

    def _to_diffusers(self, view: KeyView, src: str, ctx: _Ctx) -> list[Op]:
        ops: list[Op] = []
        for k, info in view.infos.items():
            m = _ORIG_BLOCK.fullmatch(k)
            rest = m.group(4) if m else ""
            if m and rest in (_QKV_ORIG, _PROJ_ORIG):
                base = f"{_BLOCKS[m.group(1)]}.{m.group(2)}.{m.group(3)}."
                if len(info.shape) != 4 or info.shape[2:] != (1, 1):
                    raise ConversionError(
                        f"{src + k!r} should be a 1x1 conv weight, has shape {list(info.shape)}"
                    )
                rows, cols = info.shape[0], info.shape[1]
                if rest == _PROJ_ORIG:
                    ops.append(Reshape(src + k, base + _PROJ_DIFF, (rows, cols)))
                    continue
                if rows % 3:
                    raise ConversionError(f"{src + k!r} has {rows} rows, not three equal q/k/v parts")
                ops.append(
                    Regroup(
                        (src + k,),
                        tuple(base + q for q in _QKV_DIFF),
                        (3,),
                        ((0,), (1,), (2,)),
                        dim=0,
                        reshape=((rows // 3, cols),) * 3,
                        label="split",
                    )
                )
                continue
            new = _name_to_diff(k, ctx)
            assert new is not None  # _canonical accepted it
            ops.append(Rename(src + k, new))
        return ops

    def _to_original(self, view: KeyView, src: str, ctx: _Ctx, out_prefix: str, what: str) -> list[Op]:
        ops: list[Op] = []
        unknown: list[str] = []
        for k, info in view.infos.items():
            m = _DIFF_BLOCK.fullmatch(k)
            rest = m.group(4) if m else ""
            if m and rest in (*_QKV_DIFF, _PROJ_DIFF):
                side = _SIDES[m.group(1)]
                base = f"{side}.stages.{m.group(2)}.op_list.{m.group(3)}."
                diff_base = f"{m.group(1)}.{m.group(2)}.{m.group(3)}."
                if len(info.shape) != 2:
                    raise ConversionError(
                        f"{src + k!r} should be a Linear weight, has shape {list(info.shape)}"
                    )
                if rest == _PROJ_DIFF:
                    ops.append(Reshape(src + k, out_prefix + base + _PROJ_ORIG, (*info.shape, 1, 1)))
                elif rest == _QKV_DIFF[0]:
                    rows, cols = info.shape
                    ops.append(
                        Regroup(
                            tuple(src + diff_base + q for q in _QKV_DIFF),
                            (out_prefix + base + _QKV_ORIG,),
                            (1, 1, 1),
                            ((0, 1, 2),),
                            dim=0,
                            reshape=((3 * rows, cols, 1, 1),),
                            label="fused",
                        )
                    )
                continue  # to_k / to_v are inputs of the to_q op
            new = _name_to_orig(k, ctx)
            if new is None:
                unknown.append(src + k)
            else:
                ops.append(Rename(src + k, out_prefix + new))
        self.check_keys(what, unknown)
        return ops

    # ---------------------------------------------------------------- config
    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """``AutoencoderDC`` kwargs from Diffusers-layout shapes.

        Shapes give channels, stage widths, layers and block types per stage, q/k/v multiscale
        kernels, attention head size (from the grouped multiscale projection), the sampler types
        and batch vs RMS norms. They cannot give activations or the parameter-free shortcuts:
        those come from the detection's source config, else the released models' convention
        (ReLU where a decoder stage uses batch norm, SiLU elsewhere; shortcuts on; output ReLU).
        A stage without blocks (only the first can be) gets the next stage's width.
        """
        if detection.layout != "diffusers":
            raise ConversionError(
                "a Diffusers config is derived from Diffusers-layout keys",
                hint="plan a conversion to the diffusers layout first, then derive the config from its output",
            )
        view = KeyView(infos, detection.prefix)
        cfg = dict(detection.facts.get("source_config") or {})
        enc_in = view.shape("encoder.conv_in.weight") or view.shape("encoder.conv_in.conv.weight")
        latent = view.shape("encoder.conv_out.weight")
        if enc_in is None or latent is None:
            self.check_keys(
                f"{self.title()} config", missing=["encoder.conv_in.weight", "encoder.conv_out.weight"]
            )
        enc, dec = _blocks_of(view, "encoder.down_blocks"), _blocks_of(view, "decoder.up_blocks")
        n = 1 + max([*enc, *dec])

        e = _stages(view, "encoder.down_blocks", enc, n, cfg.get("encoder_block_out_channels"))
        d = _stages(view, "decoder.up_blocks", dec, n, cfg.get("decoder_block_out_channels"))

        head_dim = cfg.get("attention_head_dim")
        if head_dim is None:
            po = [k for k in view.infos if re.search(r"\.attn\.to_qkv_multiscale\.\d+\.proj_out\.weight$", k)]
            head_dim = view.shape(po[0])[1] if po else 32  # type: ignore[index]

        down = cfg.get("downsample_block_type") or _guess_downsample(view) or "pixel_unshuffle"
        up = (
            cfg.get("upsample_block_type")
            or self._guess_upsample(view, d["chans"], enc_in[1])
            or "pixel_shuffle"
        )

        def collapse(values: list[Any]) -> Any:
            return values[0] if len(set(map(str, values))) == 1 else values

        norms = cfg.get("decoder_norm_types") or collapse(d["norms"])
        acts = cfg.get("decoder_act_fns") or collapse(
            ["relu" if x == "batch_norm" else "silu" for x in d["norms"]]
        )
        return {
            "in_channels": enc_in[1],
            "latent_channels": latent[0],  # type: ignore[index]
            "attention_head_dim": head_dim,
            "encoder_block_types": e["types"],
            "decoder_block_types": d["types"],
            "encoder_block_out_channels": e["chans"],
            "decoder_block_out_channels": d["chans"],
            "encoder_layers_per_block": e["layers"],
            "decoder_layers_per_block": d["layers"],
            "encoder_qkv_multiscales": e["scales"],
            "decoder_qkv_multiscales": d["scales"],
            "upsample_block_type": "interpolate" if str(up).lower().startswith("interp") else "pixel_shuffle",
            "downsample_block_type": "conv" if str(down).lower() == "conv" else "pixel_unshuffle",
            "decoder_norm_types": norms,
            "decoder_act_fns": acts,
            "encoder_out_shortcut": cfg.get("encoder_out_shortcut", True),
            "decoder_in_shortcut": cfg.get("decoder_in_shortcut", True),
            "decoder_conv_act_fn": cfg.get("decoder_conv_act_fn", "relu"),
            "scaling_factor": cfg.get(
                "scaling_factor", SANA_SCALING_FACTOR if detection.variant == "f32c32-sana" else 1.0
            ),
        }

    @staticmethod
    def _guess_upsample(view: KeyView, widths: list[int], image_channels: int) -> str | None:
        """An interpolate-then-conv upsampler outputs the stage width; a pixel-shuffle one four times it."""
        for i, ops in sorted(_blocks_of(view, "decoder.up_blocks").items()):
            for j, rests in ops.items():
                if _is_sampler(rests):
                    out = view.shape(f"decoder.up_blocks.{i}.{j}.conv.weight")[0]  # type: ignore[index]
                    return "interpolate" if out == widths[i] else "pixel_shuffle"
        shape = view.shape("decoder.conv_out.conv.weight")
        if shape is not None:
            return "interpolate" if shape[0] == image_channels else "pixel_shuffle"
        return None

    # ---------------------------------------------------------------- tiny models
    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """``f32c32-sana``: diffusers' tiny DC-AE test config (layouts.md section 6). ``generic``: a
        three-stage one shaped like the in/mix releases (empty first stage, pixel (un)shuffle
        samplers, batch-norm/ReLU decoder stages before RMS-norm/SiLU ones). ``wide`` changes
        nothing: an autoencoder has no Linear rows to widen."""
        self.check_variant(variant)
        if variant == "f32c32-sana":
            return {
                "in_channels": 3,
                "latent_channels": 4,
                "attention_head_dim": 2,
                "encoder_block_types": ("ResBlock", "EfficientViTBlock"),
                "decoder_block_types": ("ResBlock", "EfficientViTBlock"),
                "encoder_block_out_channels": (8, 8),
                "decoder_block_out_channels": (8, 8),
                "encoder_qkv_multiscales": ((), (5,)),
                "decoder_qkv_multiscales": ((), (5,)),
                "encoder_layers_per_block": (1, 1),
                "decoder_layers_per_block": [1, 1],
                "downsample_block_type": "conv",
                "upsample_block_type": "interpolate",
                "decoder_norm_types": "rms_norm",
                "decoder_act_fns": "silu",
                "scaling_factor": SANA_SCALING_FACTOR,
            }
        return {  # generic
            "in_channels": 3,
            "latent_channels": 4,
            "attention_head_dim": 2,
            "encoder_block_types": ("ResBlock", "ResBlock", "EfficientViTBlock"),
            "decoder_block_types": ("ResBlock", "ResBlock", "EfficientViTBlock"),
            "encoder_block_out_channels": (8, 8, 16),
            "decoder_block_out_channels": (8, 8, 16),
            "encoder_qkv_multiscales": ((), (), (5,)),
            "decoder_qkv_multiscales": ((), (), (5,)),
            "encoder_layers_per_block": (0, 1, 1),
            "decoder_layers_per_block": (0, 1, 1),
            "downsample_block_type": "pixel_unshuffle",
            "upsample_block_type": "pixel_shuffle",
            "decoder_norm_types": ("batch_norm", "batch_norm", "rms_norm"),
            "decoder_act_fns": ("relu", "relu", "silu"),
            "scaling_factor": 1.0,
        }
