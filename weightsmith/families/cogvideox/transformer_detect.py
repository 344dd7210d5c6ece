"""CogVideoX DiT variant detection: what the shapes (and, where they cannot tell, a config) say.

Scale-free on purpose: a tiny test model and a released checkpoint of one variant detect alike.
Also the config-only grid knobs (sample size, text length) of the released models, and the sample
size a learned positional table's row count implies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from weightsmith.families.cogvideox._common import COMFY, DIFFUSERS, SAT
from weightsmith.families.cogvideox.transformer_keys import DIFF_POS, SAT_POS, SAT_ROPE

# Released-model values of config-only knobs (layouts.md 2.2), used when no config says otherwise.
RELEASE_1_0 = {"sample_height": 60, "sample_width": 90, "sample_frames": 49, "max_text_seq_length": 226}
# 1.5: diffusers' converter writes 300/300/81 (CogVideo's tool 96/170); only the RoPE grid reads them.
RELEASE_1_5 = {"sample_height": 300, "sample_width": 300, "sample_frames": 81, "max_text_seq_length": 226}
RELEASE_COMMON = {
    "temporal_compression_ratio": 4,
    "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0,
}
SIZE_LABELS = {(1920, 30): "2B", (3072, 42): "5B"}

# __init__ arguments of CogVideoXTransformer3DModel that only a config.json can tell.
CONFIG_ONLY = (
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


FACT_KEYS = {
    SAT: {
        "proj": "mixins.patch_embed.proj.weight",
        "text_proj": "mixins.patch_embed.text_proj.weight",
        "proj_out": "mixins.final_layer.linear.weight",
        "norm_q": "mixins.adaln_layer.query_layernorm_list.0.weight",
        "time": "time_embed.0.weight",
        "ofs": "ofs_embed.0.weight",
        "pos": SAT_POS,
    },
    DIFFUSERS: {
        "proj": "patch_embed.proj.weight",
        "text_proj": "patch_embed.text_proj.weight",
        "proj_out": "proj_out.weight",
        "norm_q": "transformer_blocks.0.attn1.norm_q.weight",
        "time": "time_embedding.linear_1.weight",
        "ofs": "ofs_embedding.linear_1.weight",
        "pos": DIFF_POS,
    },
    COMFY: {
        "proj": "patch_embed.proj.weight",
        "text_proj": "patch_embed.text_proj.weight",
        "proj_out": "proj_out.weight",
        "norm_q": "blocks.0.norm_q.weight",
        "time": "time_embedding_linear_1.weight",
        "ofs": "ofs_embedding_linear_1.weight",
        "pos": DIFF_POS,
    },
}


def config_hints(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config-only knobs of a Diffusers config (the rest is told by the weights)."""
    if not config:
        return {}
    return {k: config[k] for k in CONFIG_ONLY if k in config}


def transformer_facts(
    shapes: Mapping[str, tuple[int, ...]], layout: str, num_layers: int, config: Mapping[str, Any] | None
) -> tuple[str | None, dict[str, Any], list[str]]:
    """Variant, facts and notes from shapes alone (plus the config where weights cannot tell)."""
    names = FACT_KEYS[layout]
    notes: list[str] = []
    hints = config_hints(config)
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
    has_rope_tables = layout == SAT and any(k in shapes for k in SAT_ROPE)
    size = SIZE_LABELS.get((facts.get("hidden_size"), num_layers))
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
    if layout == COMFY:  # ComfyUI's own rule: a stored table means absolute positions, none RoPE
        facts["positional"] = "sincos" if has_pos else "rope"
        return ("2b" if has_pos else "5b"), facts, notes
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


def grid_settings(
    generation: str | None, facts: Mapping[str, Any], config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Config-only grid knobs: release values, overridden by the detection's config, then the plan's."""
    out: dict[str, Any] = dict(RELEASE_COMMON)
    out.update(RELEASE_1_5 if generation == "1.5" else RELEASE_1_0)
    out.update({k: v for k, v in dict(facts.get("config") or {}).items() if v is not None})
    out.update({k: v for k, v in config_hints(config).items() if v is not None})
    return out


def grid_from_rows(
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
