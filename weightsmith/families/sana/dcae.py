"""DC-AE, Sana's autoencoder: MIT Han Lab's efficientvit layout <-> Diffusers ``AutoencoderDC``.

The registered component: detection, the conversion plan and configs. The name translator lives
in ``dcae_names`` and the structure-from-shapes rules in ``dcae_shapes``.

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

import re
from collections.abc import Mapping
from typing import Any, ClassVar

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
from weightsmith.families.export import VAEExport
from weightsmith.families.ops import Op, Regroup, Rename, Reshape
from weightsmith.families.sana._shared import (
    order_by_input,
    stray_keys,
)
from weightsmith.families.sana.config_fields import CONFIG_FIELDS
from weightsmith.families.sana.dcae_names import (
    BLOCKS,
    DIFF_BLOCK,
    ORIG_BLOCK,
    PROJ_DIFF,
    PROJ_ORIG,
    QKV_DIFF,
    QKV_ORIG,
    SIDES,
    Ctx,
    any_name_to_orig,
    canonical,
    name_to_diff,
    name_to_orig,
    orig_ctx,
    required_keys,
)
from weightsmith.families.sana.dcae_shapes import blocks_of, guess_downsample, is_sampler, shape_ctx, stages
from weightsmith.families.sana.export import dcae_geometry
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
    config_fields = CONFIG_FIELDS
    label: ClassVar[str | None] = "Sana DC-AE"
    export = VAEExport(dcae_geometry)

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
                any(ORIG_BLOCK.fullmatch(k) and k.startswith("decoder.") for k in keys)
                and any(k.startswith("encoder.project_in.conv.") for k in keys)
                and any(k.startswith("decoder.project_in.") for k in keys)
            ):
                ctx = orig_ctx(view)
                sana = view.has("encoder.project_in.conv.bias") and not ctx.stage0_empty
                n_stages = 1 + max(int(m.group(2)) for k in keys if (m := ORIG_BLOCK.fullmatch(k)))
                latent = view.shape("encoder.project_out.main.op_list.0.conv.weight") or view.shape(
                    "encoder.project_out.op_list.0.conv.weight"
                )
                return self._detection("original", prefix, sana, n_stages, latent, config)
            if (
                view.has("decoder.conv_in.weight", "decoder.norm_out.weight")
                and view.any("encoder.conv_in.weight", "encoder.conv_in.conv.weight")
                and any(DIFF_BLOCK.fullmatch(k) for k in keys)
            ):
                blocks = [m for k in keys if (m := DIFF_BLOCK.fullmatch(k))]
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
            ctx = orig_ctx(view)
            canon = canonical(view, ctx)
            self.check_keys(what, [k for k in view.infos if k not in canon])
            names = {n for v in canon.values() for n in v}
            missing = required_keys(names)
            self.check_keys(what, missing={any_name_to_orig(n, ctx) for n in missing})
            return order_by_input(self._to_diffusers(view, src, ctx), infos)

        cfg = dict(detection.facts.get("source_config") or {})
        cfg.update(options.config or {})
        ctx = shape_ctx(view, cfg)
        self.check_keys(what, missing=required_keys(set(view.infos)))
        return order_by_input(self._to_original(view, src, ctx, out_prefix, what), infos)

    def _to_diffusers(self, view: KeyView, src: str, ctx: Ctx) -> list[Op]:
        ops: list[Op] = []
        for k, info in view.infos.items():
            m = ORIG_BLOCK.fullmatch(k)
            rest = m.group(4) if m else ""
            if m and rest in (QKV_ORIG, PROJ_ORIG):
                base = f"{BLOCKS[m.group(1)]}.{m.group(2)}.{m.group(3)}."
                if len(info.shape) != 4 or info.shape[2:] != (1, 1):
                    raise ConversionError(
                        f"{src + k!r} should be a 1x1 conv weight, has shape {list(info.shape)}",
                        hint="the checkpoint is not an efficientvit DC-AE or is corrupt",
                    )
                rows, cols = info.shape[0], info.shape[1]
                if rest == PROJ_ORIG:
                    ops.append(Reshape(src + k, base + PROJ_DIFF, (rows, cols)))
                    continue
                if rows % 3:
                    raise ConversionError(
                        f"{src + k!r} has {rows} rows, not three equal q/k/v parts",
                        hint="the checkpoint is not an efficientvit DC-AE or is corrupt",
                    )
                ops.append(
                    Regroup(
                        (src + k,),
                        tuple(base + q for q in QKV_DIFF),
                        (3,),
                        ((0,), (1,), (2,)),
                        dim=0,
                        reshape=((rows // 3, cols),) * 3,
                        label="split",
                    )
                )
                continue
            new = name_to_diff(k, ctx)
            if new is None:  # canonical() accepted every key, so each has a Diffusers name
                raise ConversionError(
                    f"no Diffusers name for {src + k!r}",
                    hint="this is a weightsmith bug; please report it with the checkpoint's key list",
                )
            ops.append(Rename(src + k, new))
        return ops

    def _to_original(self, view: KeyView, src: str, ctx: Ctx, out_prefix: str, what: str) -> list[Op]:
        ops: list[Op] = []
        unknown: list[str] = []
        for k, info in view.infos.items():
            m = DIFF_BLOCK.fullmatch(k)
            rest = m.group(4) if m else ""
            if m and rest in (*QKV_DIFF, PROJ_DIFF):
                side = SIDES[m.group(1)]
                base = f"{side}.stages.{m.group(2)}.op_list.{m.group(3)}."
                diff_base = f"{m.group(1)}.{m.group(2)}.{m.group(3)}."
                if len(info.shape) != 2:
                    raise ConversionError(
                        f"{src + k!r} should be a Linear weight, has shape {list(info.shape)}",
                        hint="the checkpoint is not a Diffusers AutoencoderDC or is corrupt",
                    )
                if rest == PROJ_DIFF:
                    ops.append(Reshape(src + k, out_prefix + base + PROJ_ORIG, (*info.shape, 1, 1)))
                elif rest == QKV_DIFF[0]:
                    rows, cols = info.shape
                    ops.append(
                        Regroup(
                            tuple(src + diff_base + q for q in QKV_DIFF),
                            (out_prefix + base + QKV_ORIG,),
                            (1, 1, 1),
                            ((0, 1, 2),),
                            dim=0,
                            reshape=((3 * rows, cols, 1, 1),),
                            label="fused",
                        )
                    )
                continue  # to_k / to_v are inputs of the to_q op
            new = name_to_orig(k, ctx)
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
        enc, dec = blocks_of(view, "encoder.down_blocks"), blocks_of(view, "decoder.up_blocks")
        n = 1 + max([*enc, *dec])

        e = stages(view, "encoder.down_blocks", enc, n, cfg.get("encoder_block_out_channels"))
        d = stages(view, "decoder.up_blocks", dec, n, cfg.get("decoder_block_out_channels"))

        head_dim = cfg.get("attention_head_dim")
        if head_dim is None:
            po = [k for k in view.infos if re.search(r"\.attn\.to_qkv_multiscale\.\d+\.proj_out\.weight$", k)]
            head_dim = view.shape(po[0])[1] if po else 32  # type: ignore[index]

        down = cfg.get("downsample_block_type") or guess_downsample(view) or "pixel_unshuffle"
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
        for i, ops in sorted(blocks_of(view, "decoder.up_blocks").items()):
            for j, rests in ops.items():
                if is_sampler(rests):
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
