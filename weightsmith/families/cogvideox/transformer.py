"""CogVideoX DiT: SAT <-> Diffusers key maps, qkv and adaLN surgery, variant detection, configs.

SAT keeps q, k and v fused in ``query_key_value`` and the twelve adaLN modulation vectors of a
block in one ``Linear(512 -> 12*hidden)`` whose chunk order Diffusers splits across
``norm1.linear`` and ``norm2.linear`` (layouts.md 2.1-2.3). Each piece of the model is one
``_Unit`` naming its keys in both layouts, so both directions come from the same table and
renames are whole-path matches, never the substring replacements of the official converter
(whose reverse would corrupt ``linear_2`` or ``norm2``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weightsmith.convert.ops import Drop, Fuse, Op, Regroup, Rename, Spec, Split
from weightsmith.errors import ConversionError
from weightsmith.families.base import (
    DIFFUSION_PREFIX,
    NO_OPTIONS,
    Component,
    Detection,
    PlanOptions,
    find_prefix,
    register,
)
from weightsmith.families.cogvideox._common import (
    DIFFUSERS,
    FAMILY,
    PARAMS,
    SAT,
    SAT_FOREIGN_PREFIXES,
    local_keys,
)
from weightsmith.families.cogvideox.tiny import COGVIDEOX_INIT, TRANSFORMER_VARIANTS, tiny_transformer_config
from weightsmith.io.base import TensorInfo

# One-to-one module renames, (SAT module path, Diffusers module path); both hold .weight/.bias.
# These restate layouts.md 2.3 rules 1-16 as whole-path pairs.
_GLOBAL_RENAMES: tuple[tuple[str, str, str], ...] = (
    # (SAT, Diffusers, group) - group "core" is required, others are all-or-none.
    ("mixins.patch_embed.proj", "patch_embed.proj", "core"),
    ("mixins.patch_embed.text_proj", "patch_embed.text_proj", "core"),
    ("time_embed.0", "time_embedding.linear_1", "core"),
    ("time_embed.2", "time_embedding.linear_2", "core"),
    ("ofs_embed.0", "ofs_embedding.linear_1", "ofs"),
    ("ofs_embed.2", "ofs_embedding.linear_2", "ofs"),
)
_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("transformer.layers.{i}.input_layernorm", "transformer_blocks.{i}.norm1.norm"),
    ("mixins.adaln_layer.query_layernorm_list.{i}", "transformer_blocks.{i}.attn1.norm_q"),
    ("mixins.adaln_layer.key_layernorm_list.{i}", "transformer_blocks.{i}.attn1.norm_k"),
    ("transformer.layers.{i}.attention.dense", "transformer_blocks.{i}.attn1.to_out.0"),
    ("transformer.layers.{i}.post_attention_layernorm", "transformer_blocks.{i}.norm2.norm"),
    ("transformer.layers.{i}.mlp.dense_h_to_4h", "transformer_blocks.{i}.ff.net.0.proj"),
    ("transformer.layers.{i}.mlp.dense_4h_to_h", "transformer_blocks.{i}.ff.net.2"),
)
_FINAL_RENAMES: tuple[tuple[str, str, str], ...] = (
    ("transformer.final_layernorm", "norm_final", "core"),
    ("mixins.final_layer.norm_final", "norm_out.norm", "core"),
    ("mixins.final_layer.adaLN_modulation.1", "norm_out.linear", "core"),
    ("mixins.final_layer.linear", "proj_out", "core"),
)
_SAT_QKV = "transformer.layers.{i}.attention.query_key_value"
_DIFF_QKV = (
    "transformer_blocks.{i}.attn1.to_q",
    "transformer_blocks.{i}.attn1.to_k",
    "transformer_blocks.{i}.attn1.to_v",
)
_SAT_ADALN = "mixins.adaln_layer.adaLN_modulations.{i}.1"
_DIFF_ADALN = ("transformer_blocks.{i}.norm1.linear", "transformer_blocks.{i}.norm2.linear")
_SAT_POS = "mixins.pos_embed.pos_embedding"
_DIFF_POS = "patch_embed.pos_embedding"
# SAT's Rotary3DPositionEmbeddingMixin registers its RoPE tables as buffers in some versions.
_SAT_ROPE = ("mixins.pos_embed.freqs_sin", "mixins.pos_embed.freqs_cos")
# SAT keys the DiT never uses (layouts.md 2.1/2.3); dropped going to Diffusers.
_SAT_UNUSED = {
    "transformer.position_embeddings.weight": "SAT BaseTransformer's absolute position table, unused",
    "transformer.word_embeddings.weight": "SAT BaseTransformer's token embedding, unused by the DiT",
}

# adaLN chunk order. SAT: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, then the same
# six for the text stream. Diffusers CogVideoXLayerNormZero(norm1/norm2): shift, scale, gate,
# enc_shift, enc_scale, enc_gate. So norm1 = SAT chunks 0-2 + 6-8, norm2 = 3-5 + 9-11.
_ADALN_TO_DIFF = ((0, 1, 2, 6, 7, 8), (3, 4, 5, 9, 10, 11))
# The inverse, with chunks numbered norm1 0-5 then norm2 6-11.
_ADALN_TO_SAT = ((0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11),)

# Released-model values of config-only knobs (layouts.md 2.2), used when no config says otherwise.
_RELEASE_1_0 = {"sample_height": 60, "sample_width": 90, "sample_frames": 49, "max_text_seq_length": 226}
# 1.5: diffusers' converter writes 300/300/81 (CogVideo's tool 96/170); only the RoPE grid reads them.
_RELEASE_1_5 = {"sample_height": 300, "sample_width": 300, "sample_frames": 81, "max_text_seq_length": 226}
_RELEASE_COMMON = {
    "temporal_compression_ratio": 4,
    "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0,
}
_SIZE_LABELS = {(1920, 30): "2B", (3072, 42): "5B"}

# __init__ arguments of CogVideoXTransformer3DModel that only a config.json can tell.
_CONFIG_ONLY = (
    "flip_sin_to_cos",
    "freq_shift",
    "dropout",
    "sample_width",
    "sample_height",
    "sample_frames",
    "patch_size",
    "patch_size_t",
    "temporal_compression_ratio",
    "max_text_seq_length",
    "activation_fn",
    "timestep_activation_fn",
    "norm_eps",
    "spatial_interpolation_scale",
    "temporal_interpolation_scale",
    "use_rotary_positional_embeddings",
    "use_learned_positional_embeddings",
)


@dataclass(frozen=True)
class _Unit:
    """One piece of the model in both layouts: which SAT keys become which Diffusers keys, and how.

    ``kind``: "rename" (1 <-> 1), "qkv" (1 fused <-> 3), "adaln" (1 of 12 chunks <-> 2 of 6),
    "pos" (positional table, handled per variant). ``group``: "core" units must be present; any
    other group (optional patch bias, ofs embedding, ...) is all-or-none.
    """

    kind: str
    sat: tuple[str, ...]
    diff: tuple[str, ...]
    group: str = "core"

    def side(self, layout: str) -> tuple[str, ...]:
        return self.sat if layout == SAT else self.diff


def _transformer_units(num_layers: int) -> list[_Unit]:
    """Every unit of a CogVideoX DiT with ``num_layers`` blocks, in model order."""
    units: list[_Unit] = []
    for sat, diff, group in _GLOBAL_RENAMES:
        for p in PARAMS:
            # A 1.0 model may be built with patch_bias=False; that bias is optional on its own.
            g = "patch_bias" if (diff, p) == ("patch_embed.proj", "bias") else group
            units.append(_Unit("rename", (f"{sat}.{p}",), (f"{diff}.{p}",), g))
    units.append(_Unit("pos", (_SAT_POS,), (_DIFF_POS,), "pos"))
    for i in range(num_layers):
        for sat, diff in _BLOCK_RENAMES[:1]:
            for p in PARAMS:
                units.append(_Unit("rename", (f"{sat.format(i=i)}.{p}",), (f"{diff.format(i=i)}.{p}",)))
        for p in PARAMS:
            units.append(
                _Unit(
                    "adaln",
                    (f"{_SAT_ADALN.format(i=i)}.{p}",),
                    tuple(f"{d.format(i=i)}.{p}" for d in _DIFF_ADALN),
                )
            )
        for p in PARAMS:
            units.append(
                _Unit(
                    "qkv", (f"{_SAT_QKV.format(i=i)}.{p}",), tuple(f"{d.format(i=i)}.{p}" for d in _DIFF_QKV)
                )
            )
        for sat, diff in _BLOCK_RENAMES[1:]:
            for p in PARAMS:
                units.append(_Unit("rename", (f"{sat.format(i=i)}.{p}",), (f"{diff.format(i=i)}.{p}",)))
    for sat, diff, group in _FINAL_RENAMES:
        for p in PARAMS:
            units.append(_Unit("rename", (f"{sat}.{p}",), (f"{diff}.{p}",), group))
    return units


_LAYER_RX = {
    SAT: re.compile(r"(?:transformer\.layers|mixins\.adaln_layer\.\w+)\.(\d+)\."),
    DIFFUSERS: re.compile(r"transformer_blocks\.(\d+)\."),
}


def _num_layers(local_keys: Iterable[str], layout: str) -> int:
    """Blocks in the checkpoint: one more than the highest block index any key carries."""
    rx = _LAYER_RX[layout]
    top = -1
    for k in local_keys:
        m = rx.match(k)
        if m:
            top = max(top, int(m.group(1)))
    return top + 1


def _foreign_reason(key: str) -> str | None:
    """Why a key of another SAT engine component is left out of the DiT, or None."""
    return next((r for p, r in SAT_FOREIGN_PREFIXES.items() if key.startswith(p)), None)


def _sat_drop_reason(local_key: str) -> str | None:
    """Why a SAT key that has no Diffusers counterpart is dropped, or None if it is not such a key."""
    if local_key in _SAT_UNUSED:
        return _SAT_UNUSED[local_key]
    if local_key in _SAT_ROPE:
        return "RoPE table SAT keeps as a buffer; Diffusers recomputes it from the grid"
    if "embed_tokens" in local_key.split("."):
        return "token-embedding table the official converter drops"
    return None


# --------------------------------------------------------------------------------------------
# Variant detection
# --------------------------------------------------------------------------------------------

_T_NAMES = {
    SAT: {
        "proj": "mixins.patch_embed.proj.weight",
        "text_proj": "mixins.patch_embed.text_proj.weight",
        "proj_out": "mixins.final_layer.linear.weight",
        "norm_q": "mixins.adaln_layer.query_layernorm_list.0.weight",
        "time": "time_embed.0.weight",
        "ofs": "ofs_embed.0.weight",
        "pos": _SAT_POS,
    },
    DIFFUSERS: {
        "proj": "patch_embed.proj.weight",
        "text_proj": "patch_embed.text_proj.weight",
        "proj_out": "proj_out.weight",
        "norm_q": "transformer_blocks.0.attn1.norm_q.weight",
        "time": "time_embedding.linear_1.weight",
        "ofs": "ofs_embedding.linear_1.weight",
        "pos": _DIFF_POS,
    },
}
_SAT_MARKERS = (
    "mixins.adaln_layer.adaLN_modulations.0.1.weight",
    "transformer.layers.0.attention.query_key_value.weight",
)
_DIFF_MARKERS = ("transformer_blocks.0.norm1.linear.weight",)
_DIFF_REQUIRED_MARKERS = ("patch_embed.text_proj.weight", "time_embedding.linear_1.weight")


def _config_hints(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config-only knobs of a Diffusers config (the rest is told by the weights)."""
    if not config:
        return {}
    return {k: config[k] for k in _CONFIG_ONLY if k in config}


def _transformer_facts(
    shapes: Mapping[str, tuple[int, ...]], layout: str, num_layers: int, config: Mapping[str, Any] | None
) -> tuple[str | None, dict[str, Any], list[str]]:
    """Variant, facts and notes from shapes alone (plus the config where weights cannot tell)."""
    names = _T_NAMES[layout]
    notes: list[str] = []
    hints = _config_hints(config)
    facts: dict[str, Any] = {"num_layers": num_layers}
    proj = shapes.get(names["proj"])
    text_proj = shapes.get(names["text_proj"])
    proj_out = shapes.get(names["proj_out"])
    norm_q = shapes.get(names["norm_q"])
    if text_proj is not None:
        facts["hidden_size"] = text_proj[0]
        facts["text_embed_dim"] = text_proj[1]
    if norm_q is not None:
        facts["attention_head_dim"] = norm_q[0]
        if "hidden_size" in facts and facts["hidden_size"] % norm_q[0] == 0:
            facts["num_attention_heads"] = facts["hidden_size"] // norm_q[0]
    time = shapes.get(names["time"])
    if time is not None:
        facts["time_embed_dim"] = time[0]
    ofs = shapes.get(names["ofs"])
    if ofs is not None:
        facts["ofs_embed_dim"] = ofs[1]
    pos = shapes.get(names["pos"])
    if pos is not None:
        facts["pos_embedding_rows"] = pos[-2] if len(pos) >= 2 else pos[0]
    has_rope_tables = layout == SAT and any(k in shapes for k in _SAT_ROPE)
    size = _SIZE_LABELS.get((facts.get("hidden_size"), num_layers))
    if size and facts.get("num_attention_heads") in (30, 48):
        facts["size_label"] = size
    if hints:
        facts["config"] = hints

    if proj is None or proj_out is None or text_proj is None:
        notes.append("patch embedding or output projection missing; variant unknown")
        return None, facts, notes
    if len(proj) == 4:
        generation, p, pt = "1.0", proj[2], None
        in_ch = proj[1]
    elif len(proj) == 2:
        generation = "1.5"
        p = int(hints.get("patch_size") or 2)
        pt = int(hints.get("patch_size_t") or 2)
        if "patch_size" not in hints or "patch_size_t" not in hints:
            facts["patch_sizes_assumed"] = True  # the Linear patch weight folds p*p*p_t into one axis
        if proj[1] % (p * p * pt):
            notes.append(f"patch projection input {proj[1]} is not a multiple of {p}*{p}*{pt}")
            return None, facts, notes
        in_ch = proj[1] // (p * p * pt)
    else:
        notes.append(f"patch projection weight has {len(proj)} dims (expected 4 for 1.0, 2 for 1.5)")
        return None, facts, notes
    per_patch = p * p * (pt or 1)
    facts.update(generation=generation, patch_size=p, patch_size_t=pt, in_channels=in_ch)
    if proj_out[0] % per_patch:
        notes.append(
            f"output projection rows {proj_out[0]} are not a multiple of the patch volume {per_patch}"
        )
        return None, facts, notes
    out_ch = proj_out[0] // per_patch
    facts["out_channels"] = out_ch
    i2v = in_ch == 2 * out_ch
    if not i2v and in_ch != out_ch:
        notes.append(
            f"in_channels {in_ch} vs out_channels {out_ch} fits no released variant (T2V: equal; I2V: double)"
        )
        return None, facts, notes
    has_pos = pos is not None
    has_ofs = ofs is not None

    if generation == "1.5":
        if has_pos:
            notes.append("CogVideoX 1.5 has no learned positional table, but this checkpoint has one")
            return None, facts, notes
        if i2v != has_ofs:
            notes.append(
                "CogVideoX1.5-I2V has an ofs embedding and 2x input channels; this has only one of them"
            )
            return None, facts, notes
        facts["positional"] = "rope"
        return ("1.5-5b-i2v" if i2v else "1.5-5b"), facts, notes
    if has_ofs:
        notes.append("an ofs embedding belongs to CogVideoX1.5-I2V, but the patch embedding is 1.0-style")
        return None, facts, notes
    if i2v:
        if not has_pos:
            notes.append("a 1.0 I2V model (2x input channels) should carry the learned positional table")
            return None, facts, notes
        facts["positional"] = "rope+learned"
        return "5b-i2v", facts, notes
    # 1.0 text-to-video: 2B (sincos table) or 5B (RoPE).
    if layout == SAT and has_pos:
        facts["positional"] = "sincos"
        return "2b", facts, notes
    if layout == SAT and has_rope_tables:
        facts["positional"] = "rope"
        return "5b", facts, notes
    if has_pos:
        notes.append("a Diffusers 1.0 T2V checkpoint should not store patch_embed.pos_embedding")
        return None, facts, notes
    rope = hints.get("use_rotary_positional_embeddings")
    if rope is not None:
        facts["positional"] = "rope" if rope else "sincos"
        return ("5b" if rope else "2b"), facts, notes
    hidden = facts["hidden_size"]
    if hidden in (1920, 3072):
        facts["positional"] = "sincos" if hidden == 1920 else "rope"
        notes.append(f"2B vs 5B told from the hidden size {hidden} of the released models")
        return ("2b" if hidden == 1920 else "5b"), facts, notes
    notes.append(
        "the weights cannot tell CogVideoX-2B (sincos positions) from 5B (RoPE) in this layout; "
        "pass the Diffusers config (use_rotary_positional_embeddings)"
    )
    return None, facts, notes


# --------------------------------------------------------------------------------------------
# The 2B's sincos positional table, as SAT computes it
def _grid_settings(
    generation: str | None, facts: Mapping[str, Any], config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Config-only grid knobs: release values, overridden by the detection's config, then the plan's."""
    out: dict[str, Any] = dict(_RELEASE_COMMON)
    out.update(_RELEASE_1_5 if generation == "1.5" else _RELEASE_1_0)
    out.update({k: v for k, v in dict(facts.get("config") or {}).items() if v is not None})
    out.update({k: v for k, v in _config_hints(config).items() if v is not None})
    return out


def _grid_from_rows(
    rows: int, patch: int, compression: int, hints: Mapping[str, Any]
) -> dict[str, int] | None:
    """Sample size whose learned/sincos table has ``rows`` rows, or None if no released shape fits.

    rows = text_length + latent_frames * (H/p) * (W/p). Text length and frames come from the
    config when known, else the released 226 tokens / 49 frames; the spatial grid is then the
    factor pair closest to the released 2:3 (30 x 45 patches) aspect.
    """
    text = int(hints.get("max_text_seq_length", 226))
    frames = int(hints.get("sample_frames", 49))
    t = (frames - 1) // compression + 1
    spatial = rows - text
    if spatial <= 0 or spatial % t:
        return None
    hw = spatial // t
    if "sample_height" in hints and "sample_width" in hints:
        h, w = int(hints["sample_height"]) // patch, int(hints["sample_width"]) // patch
        if h * w == hw:
            return {
                "sample_height": h * patch,
                "sample_width": w * patch,
                "sample_frames": frames,
                "max_text_seq_length": text,
            }
    pairs = [(h, hw // h) for h in range(1, hw + 1) if hw % h == 0]
    h, w = min(pairs, key=lambda hw_: (abs(math.log(hw_[1] / hw_[0] / 1.5)), hw_[0]))
    return {
        "sample_height": h * patch,
        "sample_width": w * patch,
        "sample_frames": frames,
        "max_text_seq_length": text,
    }


@register
class CogVideoXTransformer(Component):
    """CogVideoX DiT (2B, 5B, 5B-I2V, 1.5-5B, 1.5-5B-I2V) in SAT and Diffusers layouts."""

    family = FAMILY
    component = "transformer"
    layouts = (SAT, DIFFUSERS)
    variants = TRANSFORMER_VARIANTS
    diffusers_class = "CogVideoXTransformer3DModel"
    label = "CogVideoX transformer"
    tiny_init = COGVIDEOX_INIT

    # ---------------------------------------------------------------- detection
    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Layout from marker keys, variant from shapes (scale-free), never from the file name."""
        keys = list(infos)
        prefix = find_prefix(keys, _SAT_MARKERS, (DIFFUSION_PREFIX, ""))
        layout = SAT
        if prefix is None:
            prefix = find_prefix(keys, _DIFF_MARKERS, ("", DIFFUSION_PREFIX))
            layout = DIFFUSERS
            if prefix is None:
                return None
        local, _ = local_keys(infos, prefix)
        shapes = {k: infos[full].shape for k, full in local.items()}
        if layout == DIFFUSERS:
            # CogView3/4 share the names; CogVideoX's norm1.linear is 6*hidden and it has a time_embedding.
            if not all(m in shapes for m in _DIFF_REQUIRED_MARKERS):
                return None
            if (
                shapes["transformer_blocks.0.norm1.linear.weight"][0]
                != 6 * shapes["patch_embed.text_proj.weight"][0]
            ):
                return None
        else:
            adaln = shapes.get("mixins.adaln_layer.adaLN_modulations.0.1.weight")
            text_proj = shapes.get("mixins.patch_embed.text_proj.weight")
            if adaln is not None and text_proj is not None and adaln[0] != 12 * text_proj[0]:
                return None
        num_layers = _num_layers(local, layout)
        variant, facts, notes = _transformer_facts(shapes, layout, num_layers, config)
        return Detection(FAMILY, self.component, layout, variant, prefix, tuple(notes), facts)

    # ---------------------------------------------------------------- planning
    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Ops from ``detection.layout`` to ``target_layout``; every input key is consumed or refused."""
        self.check_plan(detection, target_layout, options)
        src = detection.layout
        what = f"{self.title()} ({src} layout)"
        local, outside = local_keys(infos, detection.prefix)
        out_prefix = options.prefix or (DIFFUSION_PREFIX if target_layout == SAT else "")
        num_layers = _num_layers(local, src)
        units = _transformer_units(num_layers)
        known: set[str] = set()
        for u in units:
            known.update(u.side(src))

        # Keys that are not DiT weights: T5/VAE parts of a SAT engine checkpoint, and SAT-only tables.
        extra: list[tuple[str, str, str]] = []  # (full key, name to keep it under, reason to drop it)
        unknown: list[str] = []
        for full in outside:
            reason = _foreign_reason(full) if src == SAT else None
            if reason is None:
                unknown.append(full)
            else:
                extra.append((full, full, reason))
        for k, full in local.items():
            if k in known:
                continue
            reason = None
            keep_as = out_prefix + k
            if src == SAT:
                reason = _foreign_reason(k)
                keep_as = k if reason else keep_as
                reason = reason or _sat_drop_reason(k)
            if reason is None:
                unknown.append(full)
            else:
                extra.append((full, keep_as, reason))
        self.check_keys(
            what,
            unknown,
            hint="check that this is a CogVideoX DiT checkpoint (LoRAs and other families differ)",
        )

        # Missing keys: core units must be complete; optional groups (ofs embedding) all-or-none;
        # the patch bias is optional on its own; the positional table is required for 5B-I2V.
        present_groups = {u.group for u in units if any(k in local for k in u.side(src))}
        missing: list[str] = []
        for u in units:
            if u.group == "pos":
                needed = detection.variant == "5b-i2v"
            elif u.group == "patch_bias":
                needed = False
            else:
                needed = u.group == "core" or u.group in present_groups
            missing.extend(detection.prefix + k for k in u.side(src) if needed and k not in local)
        if num_layers == 0:
            missing.append(detection.prefix + (_SAT_MARKERS[0] if src == SAT else _DIFF_MARKERS[0]))
        self.check_keys(
            what,
            missing=missing,
            hint="the checkpoint is incomplete or truncated (a LoRA-trained SAT file stores qkv under "
            "LoRA names: merge or export the LoRA first)",
        )

        variant = self._variant_for_plan(detection, options)
        ops: list[Op] = []
        for u in units:
            srcs = [k for k in u.side(src) if k in local]
            if not srcs and u.kind != "pos":
                continue
            ins = tuple(local[k] for k in srcs)
            outs = tuple(out_prefix + k for k in u.side(target_layout))
            if u.kind == "pos":
                ops.extend(self._pos_ops(detection, variant, infos, ins, outs, target_layout, options))
            elif src == target_layout or u.kind == "rename":
                ops.extend(Rename(i, o) for i, o in zip(ins, outs))
            elif u.kind == "qkv":
                # SAT's fused query_key_value rows are [q; k; v] (torch.chunk(3, dim=0) in the official map).
                ops.append(Split(ins[0], outs) if src == SAT else Fuse(ins, outs[0]))
            elif u.kind == "adaln":
                if src == SAT:
                    ops.append(Regroup(ins, outs, (12,), _ADALN_TO_DIFF, 0, label="regrouped"))
                else:
                    ops.append(Regroup(ins, outs, (6, 6), _ADALN_TO_SAT, 0, label="regrouped"))
        for full, keep_as, reason in extra:
            ops.append(Rename(full, keep_as) if src == target_layout else Drop(full, reason))
        return ops

    def _variant_for_plan(self, detection: Detection, options: PlanOptions) -> str | None:
        """The detection's variant, or the one the plan's config settles (2B vs 5B by RoPE)."""
        if detection.variant is not None or not options.config:
            return detection.variant
        rope = options.config.get("use_rotary_positional_embeddings")
        if (
            detection.facts.get("generation") == "1.0"
            and detection.facts.get("in_channels") == detection.facts.get("out_channels")
            and rope is not None
        ):
            return "5b" if rope else "2b"
        return None

    def _pos_ops(
        self,
        detection: Detection,
        variant: str | None,
        infos: Mapping[str, TensorInfo],
        ins: tuple[str, ...],
        outs: tuple[str, ...],
        target: str,
        options: PlanOptions,
    ) -> list[Op]:
        """The positional table: kept, dropped (2B's sincos table to Diffusers) or derived (2B to SAT)."""
        if ins:
            if target == SAT or detection.layout == target or variant != "2b":
                return [Rename(ins[0], outs[0])]
            return [
                Drop(
                    ins[0],
                    "CogVideoX-2B's fixed sincos table; Diffusers recomputes it as a non-persistent buffer",
                )
            ]
        # Diffusers -> SAT: nothing is derived. SAT's 2B builds its sincos table in reinit() and
        # loads with strict=False, while the official SAT -> Diffusers converter keeps any table it
        # finds (rule 17 renames it to patch_embed.pos_embedding) and then loads strictly, which a
        # 2B model refuses. Leaving it out is what makes our SAT output convert back exactly.
        return []

    # ---------------------------------------------------------------- config
    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """CogVideoXTransformer3DModel kwargs.

        Shapes decide everything they can; config-only knobs come from the config the detection
        carried, else from the released models; a learned table's length fixes the sample size.
        """
        shapes = self._diffusers_shapes(detection, infos)
        num_layers = _num_layers(shapes, DIFFUSERS)
        hints = dict(detection.facts.get("config") or {})
        variant, facts, notes = _transformer_facts(shapes, DIFFUSERS, num_layers, hints or None)
        if variant is None and detection.variant is not None:
            variant = detection.variant
        if "patch_size" not in facts or "hidden_size" not in facts or "attention_head_dim" not in facts:
            raise ConversionError(
                "cannot derive a CogVideoX config: " + ("; ".join(notes) or "key shapes missing"),
                hint="check the checkpoint is a complete CogVideoX transformer",
            )
        gen = facts.get("generation")
        learned = variant == "5b-i2v" or (variant is None and _DIFF_POS in shapes)
        if variant is not None:
            rope = variant != "2b"
        else:  # diffusers refuses a learned table without RoPE
            rope = learned or bool(hints.get("use_rotary_positional_embeddings", False))
        cfg: dict[str, Any] = {
            "num_attention_heads": facts["hidden_size"] // facts["attention_head_dim"],
            "attention_head_dim": facts["attention_head_dim"],
            "in_channels": facts["in_channels"],
            "out_channels": facts["out_channels"],
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "time_embed_dim": facts["time_embed_dim"],
            "ofs_embed_dim": facts.get("ofs_embed_dim"),
            "text_embed_dim": facts["text_embed_dim"],
            "num_layers": num_layers,
            "dropout": 0.0,
            "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in shapes,
            "patch_size": facts["patch_size"],
            "patch_size_t": facts["patch_size_t"],
            "activation_fn": "gelu-approximate",
            "timestep_activation_fn": "silu",
            "norm_elementwise_affine": "norm_final.weight" in shapes,
            "norm_eps": 1e-5,
            "use_rotary_positional_embeddings": rope,
            "use_learned_positional_embeddings": learned,
            # 1.5's Linear patch embedding always has a bias; patch_bias only shapes the 1.0 Conv2d.
            "patch_bias": ("patch_embed.proj.bias" in shapes) if gen == "1.0" else False,
        }
        settings = _grid_settings(gen, facts, None)
        for k in _CONFIG_ONLY:
            if k in settings and k not in ("patch_size", "patch_size_t"):
                cfg[k] = settings[k]
        rows = facts.get("pos_embedding_rows") or detection.facts.get("pos_embedding_rows")
        if rows:
            grid = _grid_from_rows(
                int(rows), cfg["patch_size"], int(cfg["temporal_compression_ratio"]), settings
            )
            if grid is None and learned:
                raise ConversionError(
                    f"the learned positional table has {rows} rows, which fits no sample size with "
                    f"{settings['max_text_seq_length']} text tokens and {settings['sample_frames']} frames",
                    hint="pass the Diffusers config.json (sample_height/width/frames, max_text_seq_length)",
                )
            if grid is not None:
                cfg.update(grid)
        return cfg

    def _diffusers_shapes(
        self, detection: Detection, infos: Mapping[str, TensorInfo]
    ) -> dict[str, tuple[int, ...]]:
        """Diffusers-layout shapes (no prefix) of ``infos``; SAT shapes go through the plan's out_specs."""
        own = self.detect(infos)  # the infos may be in another layout than the detection passed in
        if own is None:
            raise ConversionError("the tensors given for the config are not a CogVideoX transformer")
        if own.layout == DIFFUSERS:
            local, _ = local_keys(infos, own.prefix)
            return {k: infos[full].shape for k, full in local.items()}
        if detection.layout == SAT and detection.variant is not None:
            own = detection
        shapes: dict[str, tuple[int, ...]] = {}
        for op in self.plan(own, infos, DIFFUSERS):
            ins = [Spec(k, infos[k].shape, infos[k].dtype) for k in op.inputs]
            for spec in op.out_specs(ins):
                shapes[spec.name] = spec.shape
        return shapes

    # ---------------------------------------------------------------- tiny models
    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """The tiny (or wide) CogVideoXTransformer3DModel kwargs of ``variant`` (see cogvideox/tiny.py)."""
        return tiny_transformer_config(variant, wide)
