"""The Wan video VAE (``AutoencoderKLWan``): Wan's original ``.pth`` names and Diffusers' names.

Two generations share the class:

* ``2.1`` (``Wan2.1_VAE.pth``; all Wan2.1 models and Wan2.2 A14B): the encoder is one flat
  ``downsamples`` list (residual blocks and resamplers in a row, same indices in Diffusers'
  ``down_blocks``); the decoder's flat ``upsamples`` list is cut into ``up_blocks.L.resnets.R``
  and ``up_blocks.L.upsamplers.0``. The cut is read from the keys (a resampler closes a level),
  not hard-coded for the released 2-resnet layout, so any depth converts.
* ``2.2`` (``Wan2.2_VAE.pth``, TI2V-5B only): nested ``downsamples.L.downsamples.R`` /
  ``upsamples.L.upsamples.R`` where the last entry of a level is its resampler; Diffusers
  names those ``down_blocks.L.resnets.R`` + ``down_blocks.L.downsampler`` (``upsampler``).

Inside a block, Wan's ``residual`` Sequential (RMSNorm, SiLU, conv, RMSNorm, SiLU, dropout,
conv) numbers its parameters 0, 2, 3, 6; Diffusers names them norm1, conv1, norm2, conv2.
All conversions are renames, so round trips are bit-exact. The mid-block attention keeps its
fused ``to_qkv`` in both layouts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.base import NO_OPTIONS, Component, Detection, PlanOptions, first_few, register
from weightsmith.families.ops import Op, Rename
from weightsmith.families.wan.config_fields import CONFIG_FIELDS
from weightsmith.families.wan.export import WanVAEExport, vae_geometry
from weightsmith.families.wan.keys import KeyMap, locate
from weightsmith.io.base import TensorInfo

# Leaf names inside one block (a = original, b = diffusers).
_RES = KeyMap(
    [
        ("residual.0.gamma", "norm1.gamma"),
        ("residual.2.{p}", "conv1.{p}"),
        ("residual.3.gamma", "norm2.gamma"),
        ("residual.6.{p}", "conv2.{p}"),
        ("shortcut.{p}", "conv_shortcut.{p}"),
    ]
)
_RESAMPLE = KeyMap([("resample.1.{p}", "resample.1.{p}"), ("time_conv.{p}", "time_conv.{p}")])
_ATTN = KeyMap([("norm.gamma", "norm.gamma"), ("to_qkv.{p}", "to_qkv.{p}"), ("proj.{p}", "proj.{p}")])
_FIXED = KeyMap(
    [
        ("conv1.{p}", "quant_conv.{p}"),
        ("conv2.{p}", "post_quant_conv.{p}"),
        ("{e}.conv1.{p}", "{e}.conv_in.{p}"),
        ("{e}.head.0.gamma", "{e}.norm_out.gamma"),
        ("{e}.head.2.{p}", "{e}.conv_out.{p}"),
    ]
)

ORIGINAL_MARKERS = ("decoder.middle.0.residual.0.gamma", "encoder.middle.0.residual.0.gamma", "conv2.weight")
DIFFUSERS_MARKERS = (
    "decoder.mid_block.resnets.0.norm1.gamma",
    "encoder.mid_block.resnets.0.norm1.gamma",
    "post_quant_conv.weight",
)
_NESTED_ORIGINAL = re.compile(
    r"(?:encoder\.downsamples|decoder\.upsamples)\.\d+\.(?:downsamples|upsamples)\.\d+\."
)
_NESTED_DIFFUSERS = re.compile(r"encoder\.down_blocks\.\d+\.resnets\.|decoder\.up_blocks\.\d+\.upsampler\.")

# Wan2.2 VAE latent statistics (48 channels), the values of the released Diffusers config.
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip


def _leaf_to_diffusers(leaf: str) -> tuple[str, str | None]:
    """('res' | 'resample' | 'attn' | '', diffusers leaf) for an original in-block leaf."""
    for kind, km in (("res", _RES), ("resample", _RESAMPLE), ("attn", _ATTN)):
        out = km.a_to_b(leaf)
        if out is not None:
            return kind, out
    return "", None


def _leaf_to_original(leaf: str) -> tuple[str, str | None]:
    for kind, km in (("res", _RES), ("resample", _RESAMPLE), ("attn", _ATTN)):
        out = km.b_to_a(leaf)
        if out is not None:
            return kind, out
    return "", None


def _mid(key: str, to_diffusers: bool) -> str | None:
    """Mid block: original middle.0/1/2 <-> resnets.0, attentions.0, resnets.1."""
    if to_diffusers:
        m = re.fullmatch(r"(encoder|decoder)\.middle\.([012])\.(.+)", key)
        if not m:
            return None
        e, n, leaf = m.groups()
        kind, out = _leaf_to_diffusers(leaf)
        if n == "1":
            return f"{e}.mid_block.attentions.0.{out}" if kind == "attn" else None
        return f"{e}.mid_block.resnets.{int(n) // 2}.{out}" if kind == "res" else None
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets\.[01]|attentions\.0)\.(.+)", key)
    if not m:
        return None
    e, where, leaf = m.groups()
    kind, out = _leaf_to_original(leaf)
    if where == "attentions.0":
        return f"{e}.middle.1.{out}" if kind == "attn" else None
    return f"{e}.middle.{2 * int(where[-1])}.{out}" if kind == "res" else None


def to_diffusers_names(keys: Iterable[str], variant: str) -> dict[str, str | None]:
    """Original key -> Diffusers key (None where no rule knows the key)."""
    keys = list(keys)
    out: dict[str, str | None] = {}
    # 2.1 decoder: walk the flat list, a resampler closes a level.
    flat: dict[int, set[str]] = {}
    if variant == "2.1":
        for k in keys:
            m = re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", k)
            if m:
                flat.setdefault(int(m.group(1)), set()).add(_leaf_to_diffusers(m.group(2))[0])
    place: dict[int, str] = {}
    level = r = 0
    for n in sorted(flat):
        if flat[n] == {"res"}:
            place[n] = f"decoder.up_blocks.{level}.resnets.{r}"
            r += 1
        elif flat[n] == {"resample"}:
            place[n] = f"decoder.up_blocks.{level}.upsamplers.0"
            level, r = level + 1, 0
    for k in keys:
        new = _FIXED.a_to_b(k) or _mid(k, True)
        if new is None and variant == "2.1":
            m = re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", k)
            if m:
                kind, leaf = _leaf_to_diffusers(m.group(2))
                new = f"encoder.down_blocks.{m.group(1)}.{leaf}" if kind in ("res", "resample") else None
            m = re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", k)
            if m and int(m.group(1)) in place:
                kind, leaf = _leaf_to_diffusers(m.group(2))
                new = f"{place[int(m.group(1))]}.{leaf}" if kind in ("res", "resample") else None
        elif new is None and variant == "2.2":
            m = re.fullmatch(r"(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.\2\.(\d+)\.(.+)", k)
            if m and (m.group(1), m.group(2)) in (("encoder", "downsamples"), ("decoder", "upsamples")):
                e, _, lvl, idx, leaf = m.groups()
                blocks = "down_blocks" if e == "encoder" else "up_blocks"
                sampler = "downsampler" if e == "encoder" else "upsampler"
                kind, leaf = _leaf_to_diffusers(leaf)
                if kind == "res":
                    new = f"{e}.{blocks}.{lvl}.resnets.{idx}.{leaf}"
                elif kind == "resample":
                    new = f"{e}.{blocks}.{lvl}.{sampler}.{leaf}"
        out[k] = new
    return out


def to_original_names(keys: Iterable[str], variant: str) -> dict[str, str | None]:
    """Diffusers key -> original key (None where no rule knows the key)."""
    keys = list(keys)
    out: dict[str, str | None] = {}
    # Resnet counts per level (2.1 decoder flat offsets; 2.2 resampler index = resnet count).
    nres: dict[tuple[str, int], int] = {}
    has_up: set[int] = set()
    for k in keys:
        m = re.match(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.resnets\.(\d+)\.", k)
        if m:
            at = (m.group(1), int(m.group(2)))
            nres[at] = max(nres.get(at, 0), int(m.group(3)) + 1)
        m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", k)
        if m:
            has_up.add(int(m.group(1)))
    levels = 1 + max([lv for (b, lv) in nres if b == "decoder.up_blocks"] + list(has_up) + [-1])
    offset = [0] * (levels + 1)
    for lv in range(levels):
        offset[lv + 1] = offset[lv] + nres.get(("decoder.up_blocks", lv), 0) + (lv in has_up)
    for k in keys:
        new = _FIXED.b_to_a(k) or _mid(k, False)
        if new is None and variant == "2.1":
            m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", k)
            if m:
                kind, leaf = _leaf_to_original(m.group(2))
                new = f"encoder.downsamples.{m.group(1)}.{leaf}" if kind in ("res", "resample") else None
            m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|(upsamplers\.0))\.(.+)", k)
            if m:
                lv = int(m.group(1))
                kind, leaf = _leaf_to_original(m.group(4))
                if m.group(2) is not None and kind == "res":
                    new = f"decoder.upsamples.{offset[lv] + int(m.group(2))}.{leaf}"
                elif m.group(3) is not None and kind == "resample":
                    new = f"decoder.upsamples.{offset[lv] + nres.get(('decoder.up_blocks', lv), 0)}.{leaf}"
        elif new is None and variant == "2.2":
            m = re.fullmatch(
                r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(?:resnets\.(\d+)|(downsampler|upsampler))\.(.+)",
                k,
            )
            if m:
                blocks, lv, idx, sampler, leaf = m.groups()
                e, seq = (
                    ("encoder", "downsamples") if blocks.startswith("encoder") else ("decoder", "upsamples")
                )
                kind, leaf = _leaf_to_original(leaf)
                if idx is not None and kind == "res":
                    new = f"{e}.{seq}.{lv}.{seq}.{idx}.{leaf}"
                elif (
                    sampler is not None
                    and kind == "resample"
                    and (sampler == "downsampler") == (e == "encoder")
                ):
                    new = f"{e}.{seq}.{lv}.{seq}.{nres.get((blocks, int(lv)), 0)}.{leaf}"
        out[k] = new
    return out


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise ConversionError(
            f"cannot derive the Wan VAE config: key {key!r} is missing",
            hint="the checkpoint is incomplete or not a Wan VAE",
        ) from None


def derive_config(shapes: Mapping[str, tuple[int, ...]], variant: str) -> dict[str, Any]:
    """``AutoencoderKLWan`` kwargs from Diffusers-layout names and shapes (latent stats excluded)."""
    base, in_ch = _shape(shapes, "encoder.conv_in.weight")[:2]
    z = _shape(shapes, "post_quant_conv.weight")[0]
    out_ch, dec_last = _shape(shapes, "decoder.conv_out.weight")[:2]
    levels: list[list[int]] = []  # per level: output width of each resnet
    tdown: list[bool] = []
    if variant == "2.1":
        idx = sorted(
            {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
        )
        cur: list[int] = []
        for n in idx:
            if f"encoder.down_blocks.{n}.conv1.weight" in shapes:
                cur.append(shapes[f"encoder.down_blocks.{n}.conv1.weight"][0])
            elif f"encoder.down_blocks.{n}.resample.1.weight" in shapes:
                levels.append(cur)
                cur = []
                tdown.append(f"encoder.down_blocks.{n}.time_conv.weight" in shapes)
            else:
                raise ConversionError(
                    f"Wan VAE encoder block {n} is neither a residual block nor a resampler",
                    hint="attention inside the down blocks (attn_scales) is not supported",
                )
        levels.append(cur)
    else:
        nlev = 1 + max(
            [int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))] + [-1]
        )
        for lv in range(nlev):
            ws = []
            r = 0
            while f"encoder.down_blocks.{lv}.resnets.{r}.conv1.weight" in shapes:
                ws.append(shapes[f"encoder.down_blocks.{lv}.resnets.{r}.conv1.weight"][0])
                r += 1
            levels.append(ws)
            if lv < nlev - 1:
                tdown.append(f"encoder.down_blocks.{lv}.downsampler.time_conv.weight" in shapes)
    counts = {len(lv) for lv in levels}
    if len(counts) != 1 or 0 in counts:
        raise ConversionError(
            f"Wan VAE encoder levels hold {[len(lv) for lv in levels]} residual blocks; expected the same count in each",
            hint="the checkpoint is incomplete or not a Wan VAE",
        )
    if any(lv[-1] % base for lv in levels):
        raise ConversionError(
            f"Wan VAE encoder widths {[lv[-1] for lv in levels]} are not multiples of {base}",
            hint="the checkpoint mixes parts of different VAEs or is not a Wan VAE",
        )
    dim_mult = [lv[-1] // base for lv in levels]
    dec_base = dec_last // dim_mult[0]
    patch = math.isqrt(in_ch // 3) if in_ch % 3 == 0 else 0
    patch_size = patch if patch > 1 and 3 * patch * patch == in_ch else None
    return {
        "base_dim": base,
        "decoder_base_dim": dec_base if dec_base != base else None,
        "z_dim": z,
        "dim_mult": dim_mult,
        "num_res_blocks": counts.pop(),
        "attn_scales": [],
        "temperal_downsample": tdown,
        "dropout": 0.0,
        "is_residual": variant == "2.2",
        "in_channels": in_ch,
        "out_channels": out_ch,
        "patch_size": patch_size,
        "scale_factor_temporal": 2 ** sum(tdown),
        "scale_factor_spatial": 2 ** (len(levels) - 1) * (patch_size or 1),
    }


def expected_shapes(cfg: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the real class built from ``cfg`` on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan(**cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@register
class WanVAE(Component):
    """Wan 2.1 and 2.2 video VAE in Wan's original ``.pth`` names and Diffusers' names."""

    family = "wan"
    component = "vae"
    layouts = ("original", "diffusers")
    variants = ("2.1", "2.2")
    diffusers_class = "AutoencoderKLWan"
    config_fields = CONFIG_FIELDS
    label = "Wan VAE"
    export = WanVAEExport(vae_geometry)

    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Wan VAE keys in either layout (any dotted prefix); 2.2 by its nested block lists."""
        found = locate(infos, {"original": ORIGINAL_MARKERS, "diffusers": DIFFUSERS_MARKERS})
        if found is None:
            return None
        layout, prefix = found
        nested = _NESTED_ORIGINAL if layout == "original" else _NESTED_DIFFUSERS
        keys = [k[len(prefix) :] for k in infos if k.startswith(prefix)]
        variant = "2.2" if any(nested.match(k) for k in keys) else "2.1"
        notes = [
            "Wan2.2 VAE: used by Wan2.2 TI2V-5B only"
            if variant == "2.2"
            else "Wan2.1 VAE: used by every Wan2.1 model and by Wan2.2 A14B"
        ]
        facts: dict[str, Any] = {}
        try:
            names, _, _ = self._diffusers_names(infos, layout, prefix, variant)
            cfg = derive_config({n: tuple(infos[s].shape) for n, s in names.items()}, variant)
            facts = {k: cfg[k] for k in ("z_dim", "base_dim", "dim_mult", "num_res_blocks", "in_channels")}
            facts["decoder_base_dim"] = cfg["decoder_base_dim"] or cfg["base_dim"]
        except ConversionError as e:
            notes.append(f"structure unreadable: {e.message}")
        if config:
            for k in ("latents_mean", "latents_std"):
                v = config.get(k)
                if isinstance(v, (list, tuple)) and len(v) == facts.get("z_dim"):
                    facts[k] = [float(x) for x in v]
        return Detection(self.family, self.component, layout, variant, prefix, tuple(notes), facts)

    @staticmethod
    def _diffusers_names(
        infos: Mapping[str, TensorInfo], layout: str, prefix: str, variant: str
    ) -> tuple[dict[str, str], list[str], dict[str, str | None]]:
        """Diffusers name -> source key, unknown source keys, and the source-side name map."""
        stripped = {k[len(prefix) :]: k for k in infos if k.startswith(prefix)}
        unknown = [k for k in infos if not k.startswith(prefix)]
        if layout == "original":
            table = to_diffusers_names(stripped, variant)
        else:
            back = to_original_names(stripped, variant)
            table = {k: (k if back[k] is not None else None) for k in stripped}
        names: dict[str, str] = {}
        for k, new in table.items():
            if new is None:
                unknown.append(stripped[k])
            else:
                names[new] = stripped[k]
        return names, unknown, table

    def _checked(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> tuple[dict[str, str], dict]:
        if detection.variant not in self.variants:
            raise UsageError(
                f"unknown Wan VAE variant {detection.variant}", hint="detect the checkpoint again: 2.1 or 2.2"
            )
        names, unknown, _ = self._diffusers_names(
            infos, detection.layout, detection.prefix, detection.variant
        )
        what = f"Wan {detection.variant} VAE ({detection.layout} layout)"
        self.check_keys(what, unknown)
        shapes = {n: tuple(infos[s].shape) for n, s in names.items()}
        cfg = derive_config(shapes, detection.variant)
        want = expected_shapes(cfg)
        extra = [names[n] for n in names if n not in want]
        missing = sorted(set(want) - set(names))
        if detection.layout == "original":
            back = to_original_names(want, detection.variant)
            missing = [back[n] or n for n in missing]
        self.check_keys(what, extra, [detection.prefix + n for n in missing])
        wrong = [
            f"{names[n]} {list(shapes[n])} (expected {list(want[n])})" for n in names if shapes[n] != want[n]
        ]
        if wrong:
            raise ConversionError(
                f"{len(wrong)} Wan VAE tensor(s) have unexpected shapes: {first_few(wrong, 3)}",
                hint="the checkpoint mixes parts of different VAEs or is not a Wan VAE",
            )
        return names, cfg

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Renames only, checked against the real class's names and shapes for the derived config."""
        self.check_plan(detection, target_layout, options)
        names, _ = self._checked(detection, infos)
        if target_layout == "original":
            back = to_original_names(names, detection.variant)
            target = {n: options.prefix + str(back[n]) for n in names}
        else:
            target = {n: n for n in names}
        by_source = {src: n for n, src in names.items()}
        return [Rename(src, target[by_source[src]]) for src in infos]

    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """``AutoencoderKLWan`` kwargs from shapes. Latent statistics are not in the weights:
        they come from the config given to ``detect``, else the released 2.1 (16-channel, the class
        default) or 2.2 (48-channel) values, else zeros and ones."""
        names, _, _ = self._diffusers_names(
            infos, detection.layout, detection.prefix, detection.variant or "2.1"
        )
        cfg = derive_config({n: tuple(infos[s].shape) for n, s in names.items()}, detection.variant or "2.1")
        z = cfg["z_dim"]
        facts = detection.facts
        if "latents_mean" in facts and "latents_std" in facts:
            cfg["latents_mean"], cfg["latents_std"] = list(facts["latents_mean"]), list(facts["latents_std"])
        elif z == 48:
            cfg["latents_mean"], cfg["latents_std"] = list(WAN22_LATENTS_MEAN), list(WAN22_LATENTS_STD)
        elif z != 16:
            cfg["latents_mean"], cfg["latents_std"] = [0.0] * z, [1.0] * z
        return cfg

    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """Tiny widths, but the released depth (4 levels of 2 resnets, widths x1,x2,x4,x4).

        The released depth matters: diffusers' own 2.1 single-file converter hard-codes the
        decoder's flat indices of the 2-resnet layout, and the tests load our output with it.
        ``wide`` changes nothing: an autoencoder has no Linear rows to widen.
        """
        self.check_variant(variant)
        common: dict[str, Any] = {
            "base_dim": 2,
            "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2,
            "temperal_downsample": [False, True, True],
        }
        if variant == "2.1":
            return common | {"z_dim": 16}
        return common | {  # 2.2
            "decoder_base_dim": 4,
            "z_dim": 48,
            "in_channels": 12,
            "out_channels": 12,
            "is_residual": True,
            "patch_size": 2,
            "scale_factor_spatial": 16,
            "scale_factor_temporal": 4,
            "latents_mean": [0.0] * 48,
            "latents_std": [1.0] * 48,
        }
