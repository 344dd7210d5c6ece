"""CogVideoX 3D causal VAE: SAT ``3d-vae.pt`` <-> Diffusers ``AutoencoderKLCogVideoX``.

Pure renames (layouts.md 2.4), except that SAT numbers the decoder's up-blocks from the
highest resolution (``up.{n-1}`` runs first) while Diffusers numbers them in execution order, so
block ``i`` becomes ``n-1-i``; SAT's training ``loss.*`` weights are dropped going to Diffusers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from weightsmith.errors import ConversionError
from weightsmith.families.base import NO_OPTIONS, Component, Detection, PlanOptions, find_prefix, register
from weightsmith.families.cogvideox._common import (
    DIFFUSERS,
    FAMILY,
    PARAMS,
    SAT,
    local_keys,
)
from weightsmith.families.cogvideox.config_fields import CONFIG_FIELDS
from weightsmith.families.cogvideox.export import CogVideoXVAEExport, vae_geometry
from weightsmith.families.cogvideox.tiny import COGVIDEOX_INIT, tiny_vae_config
from weightsmith.families.ops import Drop, Op, Rename
from weightsmith.io.base import TensorInfo

# What may follow a resnet's path: GroupNorm (encoder) or SpatialNorm3D (decoder) norms, the two
# causal convs, and the channel-changing shortcut (SAT nin_shortcut = Diffusers conv_shortcut).
_V_TAIL = (
    r"(?P<tail>"
    r"norm[12](?:\.norm_layer|\.conv_y\.conv|\.conv_b\.conv)?\.(?:weight|bias)"
    r"|conv[12]\.conv\.(?:weight|bias)"
    r"|(?:nin_shortcut|conv_shortcut)(?:\.conv)?\.(?:weight|bias))"
)
_V_PARAM = r"(?P<param>weight|bias)"

# (regex on a SAT key, regex on a Diffusers key); named groups carry the pieces across.
_VAE_SAT_RX = {
    "top": re.compile(r"(?P<side>encoder|decoder)\.(?P<mod>conv_in\.conv|conv_out\.conv)\." + _V_PARAM),
    "norm_out": re.compile(
        r"(?P<side>encoder|decoder)\.norm_out(?P<sub>\.norm_layer|\.conv_y\.conv|\.conv_b\.conv)?\."
        + _V_PARAM
    ),
    "down_res": re.compile(r"encoder\.down\.(?P<blk>\d+)\.block\.(?P<res>\d+)\." + _V_TAIL),
    "down_smp": re.compile(r"encoder\.down\.(?P<blk>\d+)\.downsample\.conv\." + _V_PARAM),
    "mid": re.compile(r"(?P<side>encoder|decoder)\.mid\.block_(?P<res>[12])\." + _V_TAIL),
    "up_res": re.compile(r"decoder\.up\.(?P<blk>\d+)\.block\.(?P<res>\d+)\." + _V_TAIL),
    "up_smp": re.compile(r"decoder\.up\.(?P<blk>\d+)\.upsample\.conv\." + _V_PARAM),
    "quant": re.compile(r"(?P<mod>quant_conv|post_quant_conv)\." + _V_PARAM),
}
_VAE_DIFF_RX = {
    "top": _VAE_SAT_RX["top"],
    "norm_out": _VAE_SAT_RX["norm_out"],
    "down_res": re.compile(r"encoder\.down_blocks\.(?P<blk>\d+)\.resnets\.(?P<res>\d+)\." + _V_TAIL),
    "down_smp": re.compile(r"encoder\.down_blocks\.(?P<blk>\d+)\.downsamplers\.0\.conv\." + _V_PARAM),
    "mid": re.compile(r"(?P<side>encoder|decoder)\.mid_block\.resnets\.(?P<res>[01])\." + _V_TAIL),
    "up_res": re.compile(r"decoder\.up_blocks\.(?P<blk>\d+)\.resnets\.(?P<res>\d+)\." + _V_TAIL),
    "up_smp": re.compile(r"decoder\.up_blocks\.(?P<blk>\d+)\.upsamplers\.0\.conv\." + _V_PARAM),
    "quant": _VAE_SAT_RX["quant"],
}


def _vae_tail(tail: str, to: str) -> str:
    """The resnet shortcut is ``nin_shortcut`` in SAT and ``conv_shortcut`` in Diffusers; the rest matches."""
    head, _, rest = tail.partition(".")
    if head in ("nin_shortcut", "conv_shortcut"):
        head = "nin_shortcut" if to == SAT else "conv_shortcut"
    return f"{head}.{rest}"


def _vae_rename(key: str, src: str, dst: str, n_up: int) -> str | None:
    """``key`` (no prefix) from layout ``src`` in layout ``dst``, or None if it is no VAE key."""
    table = _VAE_SAT_RX if src == SAT else _VAE_DIFF_RX
    for kind, rx in table.items():
        m = rx.fullmatch(key)
        if not m:
            continue
        g = m.groupdict()
        if src == dst or kind in ("top", "norm_out", "quant"):
            return key
        # SAT's decoder up.{i} runs last-to-first: Diffusers' up_blocks.{n-1-i} (an involution).
        flip = lambda b: n_up - 1 - int(b)  # noqa: E731
        if kind == "down_res":
            blk, res, tail = g["blk"], g["res"], _vae_tail(g["tail"], dst)
            return (
                f"encoder.down.{blk}.block.{res}.{tail}"
                if dst == SAT
                else f"encoder.down_blocks.{blk}.resnets.{res}.{tail}"
            )
        if kind == "down_smp":
            return (
                f"encoder.down.{g['blk']}.downsample.conv.{g['param']}"
                if dst == SAT
                else f"encoder.down_blocks.{g['blk']}.downsamplers.0.conv.{g['param']}"
            )
        if kind == "mid":
            tail = _vae_tail(g["tail"], dst)
            if dst == SAT:
                return f"{g['side']}.mid.block_{int(g['res']) + 1}.{tail}"
            return f"{g['side']}.mid_block.resnets.{int(g['res']) - 1}.{tail}"
        if kind == "up_res":
            blk, tail = flip(g["blk"]), _vae_tail(g["tail"], dst)
            return (
                f"decoder.up.{blk}.block.{g['res']}.{tail}"
                if dst == SAT
                else f"decoder.up_blocks.{blk}.resnets.{g['res']}.{tail}"
            )
        if kind == "up_smp":
            blk = flip(g["blk"])
            return (
                f"decoder.up.{blk}.upsample.conv.{g['param']}"
                if dst == SAT
                else f"decoder.up_blocks.{blk}.upsamplers.0.conv.{g['param']}"
            )
    return None


_VAE_UP_RX = {SAT: re.compile(r"decoder\.up\.(\d+)\."), DIFFUSERS: re.compile(r"decoder\.up_blocks\.(\d+)\.")}
_VAE_DOWN_RX = {
    SAT: re.compile(r"encoder\.down\.(\d+)\."),
    DIFFUSERS: re.compile(r"encoder\.down_blocks\.(\d+)\."),
}
_VAE_SAT_MARKERS = ("encoder.down.0.block.0.conv1.conv.weight", "decoder.mid.block_1.norm1.norm_layer.weight")
_VAE_DIFF_MARKERS = ("encoder.down_blocks.0.resnets.0.conv1.conv.weight",)
_VAE_CONFIG_ONLY = (
    "act_fn",
    "norm_eps",
    "norm_num_groups",
    "temporal_compression_ratio",
    "sample_height",
    "sample_width",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "force_upcast",
    "invert_scale_latents",
)


def _count_blocks(keys: Iterable[str], rx: re.Pattern[str]) -> int:
    top = -1
    for k in keys:
        m = rx.match(k)
        if m:
            top = max(top, int(m.group(1)))
    return top + 1


def _vae_required(n_down: int, n_up: int, layers: int, present: set[str]) -> list[str]:
    """Diffusers-layout keys an AutoencoderKLCogVideoX with this structure must have."""
    req: list[str] = []
    pw = PARAMS

    def enc_res(base: str) -> None:
        for n in ("norm1", "norm2"):
            req.extend(f"{base}.{n}.{p}" for p in pw)
        for c in ("conv1", "conv2"):
            req.extend(f"{base}.{c}.conv.{p}" for p in pw)

    def dec_res(base: str) -> None:
        for n in ("norm1", "norm2"):
            for sub in ("norm_layer", "conv_y.conv", "conv_b.conv"):
                req.extend(f"{base}.{n}.{sub}.{p}" for p in pw)
        for c in ("conv1", "conv2"):
            req.extend(f"{base}.{c}.conv.{p}" for p in pw)

    for side in ("encoder", "decoder"):
        for m in ("conv_in.conv", "conv_out.conv"):
            req.extend(f"{side}.{m}.{p}" for p in pw)
    req.extend(f"encoder.norm_out.{p}" for p in pw)
    for sub in ("norm_layer", "conv_y.conv", "conv_b.conv"):
        req.extend(f"decoder.norm_out.{sub}.{p}" for p in pw)
    for b in range(n_down):
        for r in range(layers):
            enc_res(f"encoder.down_blocks.{b}.resnets.{r}")
        if b != n_down - 1:
            req.extend(f"encoder.down_blocks.{b}.downsamplers.0.conv.{p}" for p in pw)
    for r in range(2):
        enc_res(f"encoder.mid_block.resnets.{r}")
        dec_res(f"decoder.mid_block.resnets.{r}")
    for b in range(n_up):
        for r in range(layers + 1):
            dec_res(f"decoder.up_blocks.{b}.resnets.{r}")
        if b != n_up - 1:
            req.extend(f"decoder.up_blocks.{b}.upsamplers.0.conv.{p}" for p in pw)
    # Shortcuts and quant convs exist only where channels change / when configured: all-or-none pairs.
    for k in sorted(present):
        if k.endswith(".weight") and ("shortcut" in k or "quant_conv" in k):
            req.append(k[: -len("weight")] + "bias")
        if k.endswith(".bias") and ("shortcut" in k or "quant_conv" in k):
            req.append(k[: -len("bias")] + "weight")
    return req


@register
class CogVideoXVAE(Component):
    """CogVideoX 3D causal VAE: SAT ``3d-vae.pt`` (flat dict) and Diffusers ``AutoencoderKLCogVideoX``."""

    family = FAMILY
    component = "vae"
    layouts = (SAT, DIFFUSERS)
    variants = ("default",)
    diffusers_class = "AutoencoderKLCogVideoX"
    config_fields = CONFIG_FIELDS
    label = "CogVideoX VAE"
    export = CogVideoXVAEExport(vae_geometry)
    tiny_init = COGVIDEOX_INIT

    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """SAT vs Diffusers from block names; CogVideoX from its 5-D causal convs and spatial norms."""
        keys = list(infos)
        prefix = find_prefix(keys, _VAE_SAT_MARKERS, ("", "first_stage_model."))
        layout = SAT
        if prefix is None:
            prefix = find_prefix(keys, _VAE_DIFF_MARKERS, ("", "vae."))
            layout = DIFFUSERS
            if prefix is None:
                return None
        local, _ = local_keys(infos, prefix)
        shapes = {k: infos[full].shape for k, full in local.items()}
        conv_in = shapes.get("encoder.conv_in.conv.weight")
        if conv_in is None or len(conv_in) != 5:
            return None  # SD-style 2D VAEs name it encoder.conv_in.weight; CogVideoX's is a 5-D causal conv
        mid = "decoder.mid.block_1" if layout == SAT else "decoder.mid_block.resnets.0"
        if f"{mid}.norm1.norm_layer.weight" not in shapes and f"{mid}.norm1.conv_y.conv.weight" not in shapes:
            return None  # CogVideoX's decoder uses SpatialNorm3D (norm_layer + conv_y/conv_b)
        facts = self._facts(shapes, layout)
        if config:
            hints = {k: config[k] for k in _VAE_CONFIG_ONLY if k in config}
            if hints:
                facts["config"] = hints
        notes = ("scaling_factor is config-only: 1.15258426 for CogVideoX-2B, 0.7 for 5B and 1.5",)
        return Detection(FAMILY, self.component, layout, "default", prefix, notes, facts)

    @staticmethod
    def _facts(shapes: Mapping[str, tuple[int, ...]], layout: str) -> dict[str, Any]:
        n_down = _count_blocks(shapes, _VAE_DOWN_RX[layout])
        n_up = _count_blocks(shapes, _VAE_UP_RX[layout])
        down = "encoder.down.{b}.block.0" if layout == SAT else "encoder.down_blocks.{b}.resnets.0"
        channels = []
        for b in range(n_down):
            s = shapes.get(down.format(b=b) + ".conv1.conv.weight")
            channels.append(s[0] if s else None)
        res_rx = re.compile(
            r"encoder\.down\.0\.block\.(\d+)\."
            if layout == SAT
            else r"encoder\.down_blocks\.0\.resnets\.(\d+)\."
        )
        facts: dict[str, Any] = {
            "num_down_blocks": n_down,
            "num_up_blocks": n_up,
            "block_out_channels": channels,
            "layers_per_block": _count_blocks(shapes, res_rx),
        }
        conv_in = shapes.get("encoder.conv_in.conv.weight")
        if conv_in:
            facts["in_channels"] = conv_in[1]
        dec_in = shapes.get("decoder.conv_in.conv.weight")
        if dec_in:
            facts["latent_channels"] = dec_in[1]
        dec_out = shapes.get("decoder.conv_out.conv.weight")
        if dec_out:
            facts["out_channels"] = dec_out[0]
        facts["use_quant_conv"] = "quant_conv.weight" in shapes
        facts["use_post_quant_conv"] = "post_quant_conv.weight" in shapes
        return facts

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Renames both ways, with SAT's decoder ``up.{i}`` numbered n-1-i; SAT ``loss.*`` keys dropped."""
        self.check_plan(detection, target_layout, options)
        src = detection.layout
        what = f"{self.title()} ({src} layout)"
        local, outside = local_keys(infos, detection.prefix)
        out_prefix = options.prefix
        n_up = _count_blocks(local, _VAE_UP_RX[src])
        n_down = _count_blocks(local, _VAE_DOWN_RX[src])
        unknown: list[str] = list(outside)
        drops: list[str] = []
        canon: dict[str, str] = {}  # diffusers-layout name -> full source key
        for k, full in local.items():
            if src == SAT and k.split(".", 1)[0] == "loss":
                drops.append(full)
                continue
            d = _vae_rename(k, src, DIFFUSERS, n_up)
            if d is None:
                unknown.append(full)
            else:
                canon[d] = full
        self.check_keys(
            what, unknown, hint="check that this is a CogVideoX 3D VAE (3d-vae.pt or AutoencoderKLCogVideoX)"
        )
        layers = _count_blocks(canon, re.compile(r"encoder\.down_blocks\.\d+\.resnets\.(\d+)\."))
        required = _vae_required(n_down, n_up, layers, set(canon))
        missing = [k for k in required if k not in canon]
        if missing or n_down == 0 or n_up == 0:
            names = [detection.prefix + (_vae_rename(k, DIFFUSERS, src, n_up) or k) for k in missing]
            self.check_keys(
                what,
                missing=names or ["encoder.down_blocks.0 / decoder.up_blocks.0"],
                hint="the checkpoint is incomplete or truncated",
            )
        ops: list[Op] = []
        for d, full in canon.items():
            dst = d if target_layout == DIFFUSERS else _vae_rename(d, DIFFUSERS, SAT, n_up)
            if dst is None:  # _vae_rename gave every canonical key a name both ways
                raise ConversionError(
                    f"no {target_layout} name for {d!r}",
                    hint="this is a weightsmith bug; please report it with the checkpoint's key list",
                )
            ops.append(Rename(full, out_prefix + dst))
        for full in drops:
            if target_layout == src:
                ops.append(Rename(full, out_prefix + full[len(detection.prefix) :]))
            else:
                ops.append(Drop(full, "SAT training-loss (LPIPS/discriminator) weights, unused at inference"))
        return ops

    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """AutoencoderKLCogVideoX kwargs from shapes; config-only knobs from the detection's config."""
        own = self.detect(infos)  # the infos may be in another layout than the detection passed in
        if own is None:
            raise ConversionError(
                "the tensors given for the config are not a CogVideoX VAE",
                hint="derive the config from the VAE's own weights (3d-vae.pt or AutoencoderKLCogVideoX)",
            )
        local, _ = local_keys(infos, own.prefix)
        shapes = {k: infos[full].shape for k, full in local.items()}
        facts = self._facts(shapes, own.layout)
        n = facts["num_down_blocks"]
        channels = facts["block_out_channels"]
        if n == 0 or None in channels or "latent_channels" not in facts:
            raise ConversionError(
                "cannot derive a CogVideoX VAE config: encoder blocks or decoder input missing",
                hint="the checkpoint is incomplete or truncated",
            )
        hints = dict(detection.facts.get("config") or {})
        groups = int(hints.get("norm_num_groups", 32))
        if any(c % groups for c in channels):
            # GroupNorm's group count is not stored in the weights; pick the largest that fits all widths.
            g = math.gcd(*channels)
            groups = max(d for d in range(1, min(32, g) + 1) if g % d == 0)
        cfg: dict[str, Any] = {
            "in_channels": facts["in_channels"],
            "out_channels": facts["out_channels"],
            "down_block_types": ["CogVideoXDownBlock3D"] * n,
            "up_block_types": ["CogVideoXUpBlock3D"] * facts["num_up_blocks"],
            "block_out_channels": channels,
            "latent_channels": facts["latent_channels"],
            "layers_per_block": facts["layers_per_block"],
            "act_fn": "silu",
            "norm_eps": 1e-6,
            "norm_num_groups": groups,
            "temporal_compression_ratio": 4,
            "sample_height": 480,
            "sample_width": 720,
            "scaling_factor": 1.15258426,
            "shift_factor": None,
            "latents_mean": None,
            "latents_std": None,
            "force_upcast": True,
            "use_quant_conv": facts["use_quant_conv"],
            "use_post_quant_conv": facts["use_post_quant_conv"],
            "invert_scale_latents": False,
        }
        for k, v in hints.items():
            if k != "norm_num_groups":
                cfg[k] = v
        return cfg

    def tiny_config(self, variant: str = "default", wide: bool = False) -> dict[str, Any]:
        """A tiny AutoencoderKLCogVideoX (4 blocks, widths 8/8/16/16 so resnet shortcuts exist)."""
        self.check_variant(variant)
        return tiny_vae_config()
