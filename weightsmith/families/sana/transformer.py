"""Sana transformer (600M / 1600M, Sana 1.5 1.6B / 4.8B, Sana-Sprint): original <-> Diffusers.

The original layout is NVlabs/Sana's ``SanaMS`` state dict (``blocks.N.attn.qkv`` LiteLA,
``cross_attn.kv_linear``, ``mlp.inverted_conv.conv`` ...); the Diffusers layout is
``SanaTransformer2DModel``. The map between the two is one table of (original name, Diffusers
names) pairs built from the checkpoint's structure (layer count, q/k norms, guidance embedder),
used in both directions, so the reverse is exact name for name, never a string replace.
See ``shared/reference/layouts.md`` section 4.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from weightsmith.errors import ConversionError
from weightsmith.families.base import (
    NO_OPTIONS,
    Component,
    Detection,
    KeyView,
    PlanOptions,
    find_prefix_all,
    register,
)
from weightsmith.families.ops import Derive, Drop, Fuse, Op, Rename, Split
from weightsmith.families.sana._shared import (
    order_by_input,
    stray_keys,
)
from weightsmith.families.sana.config_fields import CONFIG_FIELDS
from weightsmith.families.sana.export import SanaTransformerExport
from weightsmith.families.sana.generation import SanaGeneration
from weightsmith.families.sana.inputs import SanaInputs
from weightsmith.families.sana.lora import SanaLora
from weightsmith.families.sana.quant import TRANSFORMER_QUANT
from weightsmith.io.base import TensorInfo

if TYPE_CHECKING:
    import torch

# All must exist. PixArt originals share t_block/y_embedder/cross_attn names with Sana, so the
# LiteLA ``attn.qkv`` together with the GLUMBConv ``mlp.inverted_conv`` is what makes it Sana.
ORIGINAL_MARKERS = (
    "blocks.0.cross_attn.kv_linear.weight",
    "t_block.1.weight",
    "y_embedder.y_proj.fc1.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.mlp.inverted_conv.conv.weight",
)
DIFFUSERS_MARKERS = (
    "transformer_blocks.0.attn2.to_k.weight",
    "transformer_blocks.0.ff.conv_depth.weight",
    "patch_embed.proj.weight",
)
# Sana ControlNet keys: same blocks, but a different model this component does not convert.
CONTROLNET_MARKERS = ("controlnet_blocks.0.weight", "input_block.weight", "controlnet.0.weight")

# Original-only tensors with no Diffusers counterpart (dropped going to Diffusers).
DROPPED = {
    "pos_embed": "fixed sincos table; Diffusers computes positions itself (or uses none)",
    "y_embedder.y_embedding": "null-caption table used for training-time caption dropout; Diffusers does not store it",
    "logvar_linear.weight": "training-only log-variance head (Sana 1.5 / Sprint); not part of inference, cannot be recovered",
    "logvar_linear.bias": "training-only log-variance head (Sana 1.5 / Sprint); not part of inference, cannot be recovered",
}

# Sana's text encoder sequence length: the null-caption table is [300, caption_channels].
Y_EMBEDDING_TOKENS = 300
# Latent side length the original pos_embed is sized for when no Diffusers config says otherwise:
# 32 = 1024 px / DC-AE f32, the resolution of every released 1024px Sana and the diffusers default.
DEFAULT_SAMPLE_SIZE = 32
# Sizes of released models by (hidden width, depth); 600M-wide models (1152) exist at one depth only.
SIZES = {(1152, None): "600M", (2240, 20): "1600M", (2240, 60): "4.8B"}
# Cross-attention head counts of released models, by hidden width (600M: 16 x 72, 1600M/4.8B: 20 x 112).
CROSS_HEADS = {1152: 16, 2240: 20}

# Config fields the weights cannot tell; taken from a given Diffusers config when there is one.
_CONFIG_ONLY = (
    "num_attention_heads",
    "attention_head_dim",
    "num_cross_attention_heads",
    "cross_attention_head_dim",
    "sample_size",
    "interpolation_scale",
    "norm_eps",
    "dropout",
    "guidance_embeds_scale",
    "timestep_scale",
)


@dataclass(frozen=True)
class _Structure:
    """What the keys say about one checkpoint; enough to list every tensor of both layouts."""

    num_layers: int
    qkv_bias: bool
    self_qk_norm: bool
    cross_qk_norm: bool
    guidance: bool


@dataclass(frozen=True)
class _Pair:
    """One original tensor and the Diffusers tensor(s) it becomes (more than one: a dim-0 split)."""

    orig: str
    diff: tuple[str, ...]


def _structure(view: KeyView, layout: str) -> _Structure:
    if layout == "original":
        n = _max_index(view, r"blocks\.(\d+)\.")
        return _Structure(
            num_layers=n,
            qkv_bias=view.has("blocks.0.attn.qkv.bias"),
            self_qk_norm=view.has("blocks.0.attn.q_norm.weight"),
            cross_qk_norm=view.has("blocks.0.cross_attn.q_norm.weight"),
            guidance=view.has("cfg_embedder.mlp.0.weight"),
        )
    n = _max_index(view, r"transformer_blocks\.(\d+)\.")
    return _Structure(
        num_layers=n,
        qkv_bias=view.has("transformer_blocks.0.attn1.to_q.bias"),
        self_qk_norm=view.has("transformer_blocks.0.attn1.norm_q.weight"),
        cross_qk_norm=view.has("transformer_blocks.0.attn2.norm_q.weight"),
        guidance=view.has("time_embed.guidance_embedder.linear_1.weight"),
    )


def _max_index(view: KeyView, pattern: str) -> int:
    """1 + the largest block index (a gap then shows up as missing keys, not as a shorter model)."""
    rx = re.compile(pattern)
    idx = [int(m.group(1)) for k in view.infos if (m := rx.match(k))]
    return max(idx) + 1 if idx else 0


def _pairs(s: _Structure) -> list[_Pair]:
    """Every tensor of the model in both layouts (layouts.md section 4.2)."""
    out: list[_Pair] = []

    def add(orig: str, *diff: str) -> None:
        out.append(_Pair(orig, tuple(diff)))

    def wb(orig: str, diff: str) -> None:
        add(f"{orig}.weight", f"{diff}.weight")
        add(f"{orig}.bias", f"{diff}.bias")

    wb("x_embedder.proj", "patch_embed.proj")
    # Sprint's combined timestep+guidance embedder has no ``.emb`` level.
    time = "time_embed.timestep_embedder" if s.guidance else "time_embed.emb.timestep_embedder"
    wb("t_embedder.mlp.0", f"{time}.linear_1")
    wb("t_embedder.mlp.2", f"{time}.linear_2")
    if s.guidance:
        wb("cfg_embedder.mlp.0", "time_embed.guidance_embedder.linear_1")
        wb("cfg_embedder.mlp.2", "time_embed.guidance_embedder.linear_2")
    wb("t_block.1", "time_embed.linear")
    wb("y_embedder.y_proj.fc1", "caption_projection.linear_1")
    wb("y_embedder.y_proj.fc2", "caption_projection.linear_2")
    add("attention_y_norm.weight", "caption_norm.weight")
    for i in range(s.num_layers):
        o, d = f"blocks.{i}", f"transformer_blocks.{i}"
        add(f"{o}.scale_shift_table", f"{d}.scale_shift_table")
        # LiteLA self-attention: one fused qkv Linear -> to_q/to_k/to_v (chunk 3 on dim 0).
        add(f"{o}.attn.qkv.weight", *(f"{d}.attn1.to_{x}.weight" for x in "qkv"))
        if s.qkv_bias:
            add(f"{o}.attn.qkv.bias", *(f"{d}.attn1.to_{x}.bias" for x in "qkv"))
        if s.self_qk_norm:
            add(f"{o}.attn.q_norm.weight", f"{d}.attn1.norm_q.weight")
            add(f"{o}.attn.k_norm.weight", f"{d}.attn1.norm_k.weight")
        wb(f"{o}.attn.proj", f"{d}.attn1.to_out.0")
        # Cross-attention: fused kv Linear (weight and bias) -> to_k/to_v (chunk 2 on dim 0).
        wb(f"{o}.cross_attn.q_linear", f"{d}.attn2.to_q")
        add(f"{o}.cross_attn.kv_linear.weight", f"{d}.attn2.to_k.weight", f"{d}.attn2.to_v.weight")
        add(f"{o}.cross_attn.kv_linear.bias", f"{d}.attn2.to_k.bias", f"{d}.attn2.to_v.bias")
        if s.cross_qk_norm:
            add(f"{o}.cross_attn.q_norm.weight", f"{d}.attn2.norm_q.weight")
            add(f"{o}.cross_attn.k_norm.weight", f"{d}.attn2.norm_k.weight")
        wb(f"{o}.cross_attn.proj", f"{d}.attn2.to_out.0")
        wb(f"{o}.mlp.inverted_conv.conv", f"{d}.ff.conv_inverted")
        wb(f"{o}.mlp.depth_conv.conv", f"{d}.ff.conv_depth")
        add(f"{o}.mlp.point_conv.conv.weight", f"{d}.ff.conv_point.weight")
    wb("final_layer.linear", "proj_out")
    add("final_layer.scale_shift_table", "scale_shift_table")
    return out


def _variant(s: _Structure) -> str:
    # Scale-free on purpose: a tiny fixture and a 4.8B file of one variant detect alike.
    if s.guidance:
        return "sprint"
    if s.self_qk_norm or s.cross_qk_norm:
        return "1.5"
    return "1.0"


def _size(hidden: int, layers: int) -> str | None:
    return SIZES.get((hidden, None)) or SIZES.get((hidden, layers))


def sincos_pos_embed(hidden: int, grid: int, interpolation_scale: float) -> torch.Tensor:
    """The original model's fixed ``pos_embed`` buffer, [1, grid*grid, hidden], float32.

    Computed with diffusers' own ``get_2d_sincos_pos_embed`` (base_size = grid), the same call
    diffusers' ``PatchEmbed`` makes, which follows PixArt/Sana's table. The value never matters to
    Diffusers (its single-file loader pops the key); it is there so the file is a complete original.
    """
    import torch
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    if hidden % 4:
        # sincos needs hidden divisible by 4; no released model is otherwise. Zeros keep the shape.
        return torch.zeros(1, grid * grid, hidden)
    table = get_2d_sincos_pos_embed(
        hidden, grid, base_size=grid, interpolation_scale=interpolation_scale, output_type="pt"
    )
    return table.float().unsqueeze(0)


# Tiny test configurations (``SanaTransformer.tiny_config``).
_TINY: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 1,
    "attention_head_dim": 4,
    "num_attention_heads": 2,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 4,
    "cross_attention_dim": 8,
    "caption_channels": 8,
    "sample_size": 32,
}
_WIDE: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 8,
    "num_cross_attention_heads": 8,
    "cross_attention_head_dim": 32,
    "cross_attention_dim": 256,
    "caption_channels": 64,
    "sample_size": 16,
}


def _source_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: config[k] for k in _CONFIG_ONLY if config and k in config}


@register
class SanaTransformer(Component):
    """Sana DiT in NVlabs' original layout and in Diffusers' ``SanaTransformer2DModel`` layout."""

    family: ClassVar[str] = "sana"
    component: ClassVar[str] = "transformer"
    layouts: ClassVar[tuple[str, ...]] = ("original", "diffusers")
    variants: ClassVar[tuple[str, ...]] = ("1.0", "1.5", "sprint")
    diffusers_class: ClassVar[str] = "SanaTransformer2DModel"
    config_fields = CONFIG_FIELDS
    quant = TRANSFORMER_QUANT
    inputs = SanaInputs()
    export = SanaTransformerExport()
    generation = SanaGeneration()
    lora = SanaLora()
    label: ClassVar[str | None] = "Sana transformer"
    # NVlabs' Sana checkpoints (.pth) keep the DiT's weights under "state_dict".
    torch_wrap: ClassVar[Mapping[str, str]] = {"original": "state_dict"}

    # ---------------------------------------------------------------- detection
    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Sana by LiteLA/GLUMBConv keys; layout by naming; variant by structure, never by scale.

        Sprint has a guidance (``cfg_embedder``) embedder, Sana 1.5 has attention q/k norms,
        everything else is 1.0. A given Diffusers ``config`` is kept in ``facts["source_config"]``
        for the fields shapes cannot tell (head counts, sample size).
        """
        keys = infos.keys()
        for layout, markers, patch_key in (
            ("original", ORIGINAL_MARKERS, "x_embedder.proj.weight"),
            ("diffusers", DIFFUSERS_MARKERS, "patch_embed.proj.weight"),
        ):
            prefix = find_prefix_all(keys, markers)
            if prefix is None:
                continue
            view = KeyView(infos, prefix)
            if view.any(*CONTROLNET_MARKERS):
                return None
            if layout == "diffusers" and not view.any(
                "caption_norm.weight", "caption_projection.linear_1.weight"
            ):
                continue
            patch = view.shape(patch_key)
            if patch is not None and len(patch) != 4:
                return None  # Sana-Video / world-model DiTs: 3-D patch conv, another model
            s = _structure(view, layout)
            hidden = patch[0] if patch else 0
            facts: dict[str, Any] = {
                "size": _size(hidden, s.num_layers),
                "hidden_size": hidden,
                "num_layers": s.num_layers,
                "qk_norm": s.self_qk_norm or s.cross_qk_norm,
                "guidance_embeds": s.guidance,
            }
            src = _source_config(config)
            if src:
                facts["source_config"] = src
            notes: list[str] = []
            if layout == "original":
                dropped = [k for k in DROPPED if view.has(k)]
                if dropped:
                    notes.append("kept only in the original layout: " + ", ".join(dropped))
            return Detection(
                family=self.family,
                component=self.component,
                layout=layout,
                variant=_variant(s),
                prefix=prefix,
                notes=tuple(notes),
                facts=facts,
            )
        return None

    # ---------------------------------------------------------------- conversion
    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Original <-> Diffusers, lossless for every tensor Diffusers has (see module docstring).

        To Diffusers: ``attn.qkv`` split in three, ``cross_attn.kv_linear`` split in two, and
        ``pos_embed``, ``y_embedder.y_embedding``, ``logvar_linear.*`` dropped. To original: the
        splits fused back, and ``pos_embed`` / ``y_embedder.y_embedding`` derived, because the
        original layout (and diffusers' single-file loader) expects them. ``options.prefix`` goes
        before every original-layout output key.
        """
        self.check_plan(detection, target_layout, options)
        what = f"{self.title()} ({detection.layout} layout)"
        self.check_keys(what, stray_keys(infos, detection.prefix))
        src = detection.prefix
        view = KeyView(infos, src)
        out_prefix = options.prefix if target_layout == "original" else ""
        if target_layout == detection.layout:
            return [Rename(src + k, out_prefix + k) for k in view.infos]

        s = _structure(view, detection.layout)
        pairs = _pairs(s)
        present = set(view.infos)
        ops: list[Op] = []
        if detection.layout == "original":
            expected = {p.orig for p in pairs}
            dropped = [k for k in view.infos if k in DROPPED]
            self.check_keys(what, present - expected - set(dropped), expected - present)
            for p in pairs:
                if len(p.diff) == 1:
                    ops.append(Rename(src + p.orig, p.diff[0]))
                else:
                    ops.append(Split(src + p.orig, p.diff))
            ops.extend(Drop(src + k, DROPPED[k]) for k in dropped)
            return order_by_input(ops, infos)

        expected = {d for p in pairs for d in p.diff}
        self.check_keys(what, present - expected, expected - present)
        for p in pairs:
            if len(p.diff) == 1:
                ops.append(Rename(src + p.diff[0], out_prefix + p.orig))
            else:
                ops.append(Fuse([src + d for d in p.diff], out_prefix + p.orig))
        ops = order_by_input(ops, infos)
        return self._derived(view, detection, options, out_prefix) + ops

    def _derived(
        self, view: KeyView, detection: Detection, options: PlanOptions, out_prefix: str
    ) -> list[Op]:
        """The two tensors an original file carries that Diffusers does not store."""
        import torch

        cfg = dict(detection.facts.get("source_config") or {})
        cfg.update(options.config or {})
        patch_shape = view.shape("patch_embed.proj.weight")
        cap_shape = view.shape("caption_projection.linear_1.weight")
        if patch_shape is None or cap_shape is None:  # plan() checked them as required keys
            raise ConversionError(
                "patch_embed.proj or caption_projection.linear_1 missing",
                hint="this is a weightsmith bug; please report it with the checkpoint's key list",
            )
        hidden, patch = patch_shape[0], patch_shape[-1]
        dtype = view.infos["patch_embed.proj.weight"].dtype
        sample = int(cfg.get("sample_size") or DEFAULT_SAMPLE_SIZE)
        grid = max(sample // patch, 1)
        interp = float(cfg.get("interpolation_scale") or 1.0)
        caption_channels = cap_shape[1]
        return [
            Derive(
                out_prefix + "pos_embed",
                (1, grid * grid, hidden),
                dtype,
                lambda: sincos_pos_embed(hidden, grid, interp),
                reason=f"fixed sincos table for a {grid}x{grid} latent grid (sample_size {sample}, "
                f"patch {patch}); Diffusers does not store it",
            ),
            Derive(
                out_prefix + "y_embedder.y_embedding",
                (Y_EMBEDDING_TOKENS, caption_channels),
                dtype,
                lambda: torch.zeros(Y_EMBEDDING_TOKENS, caption_channels),
                reason="null-caption table, zeros: Diffusers does not store it and inference never reads it",
            ),
        ]

    # ---------------------------------------------------------------- config
    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """``SanaTransformer2DModel`` kwargs from Diffusers-layout shapes.

        Head counts are not in the shapes (q/k/v are [heads*head_dim, hidden]). They come from the
        detection's source config when there is one; otherwise self-attention uses head_dim 32 when
        hidden is a multiple of 32 (every released Sana) and two heads otherwise (diffusers' tiny
        test models), and cross-attention uses the released head counts by width (1152: 16,
        2240: 20) or two heads otherwise. sample_size defaults to 32 and interpolation_scale to
        None (no positional embedding, as every 512/1024 px Sana).
        """
        if detection.layout != "diffusers":
            raise ConversionError(
                "a Diffusers config is derived from Diffusers-layout keys",
                hint="plan a conversion to the diffusers layout first, then derive the config from its output",
            )
        view = KeyView(infos, detection.prefix)
        s = _structure(view, "diffusers")
        b0 = "transformer_blocks.0"
        need = ["patch_embed.proj.weight", "proj_out.weight", "caption_projection.linear_1.weight"]
        need += [f"{b0}.attn2.to_q.weight", f"{b0}.attn2.to_k.weight", f"{b0}.ff.conv_inverted.weight"]
        self.check_keys(f"{self.title()} config", missing=[k for k in need if not view.has(k)])
        shape = view.shape
        hidden, in_ch, _, patch = shape("patch_embed.proj.weight")  # type: ignore[misc]
        out_ch = shape("proj_out.weight")[0] // (patch * patch)  # type: ignore[index]
        cross_inner = shape(f"{b0}.attn2.to_q.weight")[0]  # type: ignore[index]
        cfg = dict(detection.facts.get("source_config") or {})

        heads, head_dim = cfg.get("num_attention_heads"), cfg.get("attention_head_dim")
        if not heads or not head_dim or heads * head_dim != hidden:
            head_dim = 32 if hidden % 32 == 0 else hidden // 2
            heads = hidden // head_dim
        c_heads, c_dim = cfg.get("num_cross_attention_heads"), cfg.get("cross_attention_head_dim")
        if not c_heads or not c_dim or c_heads * c_dim != cross_inner:
            c_heads = CROSS_HEADS.get(hidden, 2)
            if cross_inner % c_heads:
                c_heads = 1
            c_dim = cross_inner // c_heads

        conv_rows = shape(f"{b0}.ff.conv_inverted.weight")[0]  # type: ignore[index]
        mlp_ratio = conv_rows / 2 / hidden
        return {
            "in_channels": in_ch,
            "out_channels": out_ch,
            "num_attention_heads": heads,
            "attention_head_dim": head_dim,
            "num_layers": s.num_layers,
            "num_cross_attention_heads": c_heads,
            "cross_attention_head_dim": c_dim,
            "cross_attention_dim": shape(f"{b0}.attn2.to_k.weight")[1],  # type: ignore[index]
            "caption_channels": shape("caption_projection.linear_1.weight")[1],  # type: ignore[index]
            "mlp_ratio": float(mlp_ratio),
            "dropout": cfg.get("dropout", 0.0),
            "attention_bias": s.qkv_bias,
            "sample_size": cfg.get("sample_size", DEFAULT_SAMPLE_SIZE),
            "patch_size": patch,
            "norm_elementwise_affine": view.has(f"{b0}.norm2.weight"),
            "norm_eps": cfg.get("norm_eps", 1e-6),
            "interpolation_scale": cfg.get("interpolation_scale"),
            "guidance_embeds": s.guidance,
            "guidance_embeds_scale": cfg.get("guidance_embeds_scale", 0.1),
            "qk_norm": "rms_norm_across_heads" if (s.self_qk_norm or s.cross_qk_norm) else None,
            "timestep_scale": cfg.get("timestep_scale", 1.0),
        }

    # ---------------------------------------------------------------- tiny models
    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """diffusers' own tiny Sana test config (layouts.md section 6), plus the variant's switches.

        ``wide``: eight heads of 32 and a 256-wide cross-attention, so every GGUF K-type applies.
        """
        self.check_variant(variant)
        cfg = dict(_WIDE if wide else _TINY)
        if variant in ("1.5", "sprint"):
            cfg["qk_norm"] = "rms_norm_across_heads"
        if variant == "sprint":
            cfg["guidance_embeds"] = True
        return cfg
