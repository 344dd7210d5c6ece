"""The Wan 2.1 / 2.2 diffusion transformer in its two layouts: Wan's original names and Diffusers'.

The original layout is what Wan-AI ships (``WanModel``: ``self_attn.q``, ``ffn.0``, ``modulation``,
``head.head``), optionally under ``model.diffusion_model.`` as ComfyUI single files and GGUFs
keep it. The Diffusers layout is ``WanTransformer3DModel`` / ``WanVACETransformer3DModel``.
Between them there are only renames: no tensor changes its shape or data, so every plan is
a list of ``Rename`` ops and a round trip is bit-exact.

Variants are told from structure, never from sizes, so the tiny test models detect like the
released ones:

* ``2.1-vace``: VACE blocks (``vace_blocks.*``, ``vace_patch_embedding``);
* ``2.1-flf2v``: an image embedder with a positional table (``img_emb.emb_pos``);
* ``2.1-i2v``: an image embedder (``img_emb.*``, CLIP features, cross-attn ``k_img``/``v_img``);
* ``2.2-ti2v-5b``: 48 output channels (the Wan2.2 VAE's latent);
* ``2.2-i2v-a14b``: in_channels == 2 * out_channels + 4 (noise + image latent + mask) and no
  image embedder;
* ``2.1-t2v``: in_channels == out_channels. The Wan2.2 T2V-A14B experts have exactly this
  architecture and are reported as ``2.1-t2v`` with a note.

Attention heads are not visible in the weights: Wan's q/k RMSNorm runs over the full width
("rms_norm_across_heads"). The head count comes from the config handed to ``detect``
(``num_attention_heads`` in Diffusers configs, ``num_heads`` in Wan's own), else from the rule
every released Wan model follows: head_dim 128, so heads = dim / 128 when dim is a multiple of
128 and at least 1536. Anything else (tiny test models) needs the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightsmith.errors import ConversionError
from weightsmith.families.base import NO_OPTIONS, Component, Detection, PlanOptions, register
from weightsmith.families.ops import Drop, Op, Rename
from weightsmith.families.wan.config_fields import CONFIG_FIELDS
from weightsmith.families.wan.export import WanTransformerExport
from weightsmith.families.wan.generation import WanGeneration
from weightsmith.families.wan.inputs import WanInputs
from weightsmith.families.wan.keys import locate
from weightsmith.families.wan.lora import WanLora
from weightsmith.families.wan.quant import TRANSFORMER_QUANT
from weightsmith.families.wan.transformer_keys import (
    DIFFUSERS_MARKERS,
    KEYMAP,
    ORIGINAL_MARKERS,
    Canon,
    Structure,
    canonical,
    expected_original_keys,
    structure,
)
from weightsmith.io.base import TensorInfo

# Keys of Wan models this module does not convert (Animate's motion encoder and face adapter,
# S2V's audio encoder, camera control): detection names them instead of guessing.
_UNSUPPORTED = {
    "motion_encoder.": "Wan2.2-Animate (motion encoder)",
    "face_adapter.": "Wan2.2-Animate (face adapter)",
    "face_encoder.": "Wan2.2-Animate (face encoder)",
    "casual_audio_encoder.": "Wan2.2-S2V (audio encoder)",
    "control_adapter.": "Wan camera control",
}
_SIZES = {1536: "1.3B", 5120: "14B", 3072: "5B"}
HEAD_DIM = 128  # every released Wan transformer


def _config_heads(config: Mapping[str, Any] | None, dim: int | None) -> int | None:
    if not config or not dim:
        return None
    heads = config.get("num_attention_heads", config.get("num_heads"))
    if isinstance(heads, int) and heads > 0 and dim % heads == 0:
        return heads
    return None


def heads_for(dim: int | None, config: Mapping[str, Any] | None = None) -> int | None:
    """Attention heads: the config's count, else dim / 128 for released-size widths, else None."""
    heads = _config_heads(config, dim)
    if heads is not None:
        return heads
    if dim and dim % HEAD_DIM == 0 and dim >= 1536:
        return dim // HEAD_DIM
    return None


def _variant(st: Structure) -> tuple[str | None, list[str]]:
    notes: list[str] = []
    if st.vace_layers or st.vace_in_channels is not None:
        if st.dim == 5120:
            notes.append("Wan2.2-VACE-Fun-A14B has the same architecture as Wan2.1-VACE-14B")
        return "2.1-vace", notes
    if st.pos_embed_seq_len is not None:
        return "2.1-flf2v", notes
    if st.has_image or st.added_kv_proj_dim is not None:
        return "2.1-i2v", notes
    if st.in_channels is None or st.out_channels is None:
        return None, ["cannot tell the variant: patch_embedding or head.head is missing"]
    if st.out_channels == 48:
        return "2.2-ti2v-5b", notes
    if st.in_channels == 2 * st.out_channels + 4:
        notes.append(
            "Wan2.2 I2V-A14B has a high-noise and a low-noise expert of this shape; the weights do not say which"
        )
        return "2.2-i2v-a14b", notes
    if st.in_channels == st.out_channels:
        if st.dim != 1536:
            notes.append(
                "Wan2.2 T2V-A14B (high- and low-noise experts) has exactly this architecture; reported as 2.1-t2v"
            )
        return "2.1-t2v", notes
    return None, [
        f"in_channels {st.in_channels} / out_channels {st.out_channels} match no known Wan variant "
        "(t2v: equal, i2v: 2*out+4, ti2v: 48/48)"
    ]


def _facts(st: Structure, config: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    heads = heads_for(st.dim, config)
    facts: dict[str, Any] = {
        "dim": st.dim,
        "layers": st.layers,
        "heads": heads,
        "head_dim": st.dim // heads if heads and st.dim else None,
        "ffn_dim": st.ffn_dim,
        "in_channels": st.in_channels,
        "out_channels": st.out_channels,
        "patch_size": list(st.patch_size) if st.patch_size else None,
        "text_dim": st.text_dim,
        "freq_dim": st.freq_dim,
        "image_dim": st.image_dim,
        "added_kv_proj_dim": st.added_kv_proj_dim,
        "pos_embed_seq_len": st.pos_embed_seq_len,
        "vace_layers": st.vace_layers or None,
        "vace_in_channels": st.vace_in_channels,
        "size": _SIZES.get(st.dim or 0),
    }
    if heads is None:
        notes.append(
            f"attention heads cannot be read from the weights (dim {st.dim} is not a released width); "
            "pass the model's config to derive a Diffusers config"
        )
    # Values no tensor holds, carried from a config when one was given.
    if config:
        if isinstance(config.get("eps"), float):
            facts["eps"] = config["eps"]
        rope = config.get("rope_max_seq_len")
        if isinstance(rope, int):
            facts["rope_max_seq_len"] = rope
        at = config.get("vace_layers")
        if isinstance(at, (list, tuple)) and len(at) == st.vace_layers:
            facts["vace_layer_indices"] = [int(x) for x in at]
    return {k: v for k, v in facts.items() if v is not None}, notes


# Tiny test configurations (``WanTransformer.tiny_config``).
_TINY: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 256,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
_WIDE: dict[str, Any] = _TINY | {
    "attention_head_dim": 128,
    "text_dim": 64,
    "ffn_dim": 256,
    "rope_max_seq_len": 32,
}


@register
class WanTransformer(Component):
    """Wan 2.1 / 2.2 transformer: original (Wan-AI, ComfyUI, GGUF) and Diffusers layouts."""

    family = "wan"
    component = "transformer"
    layouts = ("original", "diffusers")
    variants = ("2.1-t2v", "2.1-i2v", "2.1-flf2v", "2.1-vace", "2.2-i2v-a14b", "2.2-ti2v-5b")
    diffusers_class = "WanTransformer3DModel"
    config_fields = CONFIG_FIELDS
    quant = TRANSFORMER_QUANT
    inputs = WanInputs()
    export = WanTransformerExport()
    label = "Wan transformer"
    # Wan2.2 A14B pipelines hold two experts (high and low noise) of one architecture; T2V-A14B's
    # experts are shaped like 2.1-t2v.
    expert_pairs = {"2.1-t2v": "2.2-t2v-a14b", "2.2-i2v-a14b": "2.2-i2v-a14b"}
    generation = WanGeneration()
    lora = WanLora(KEYMAP)

    def class_name(self, variant: str | None = None) -> str:
        """VACE checkpoints need the VACE subclass; every other variant is the plain class."""
        return "WanVACETransformer3DModel" if variant == "2.1-vace" else "WanTransformer3DModel"

    # -- detection -----------------------------------------------------------------------
    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Original or Diffusers Wan transformer keys (any dotted prefix), variant from structure."""
        found = locate(infos, {"original": ORIGINAL_MARKERS, "diffusers": DIFFUSERS_MARKERS})
        if found is None:
            return None
        layout, prefix = found
        canon = canonical(infos, layout, prefix)
        st = structure(canon.shapes)
        variant, notes = _variant(st)
        facts, more = _facts(st, config)
        notes += more
        keys = [k[len(prefix) :] for k in infos if k.startswith(prefix)]
        for start, what in _UNSUPPORTED.items():
            if any(k.startswith(start) for k in keys):
                variant = None
                notes.append(f"{what} weights are present; this model is not supported")
                break
        return Detection(
            family=self.family,
            component=self.component,
            layout=layout,
            variant=variant,
            prefix=prefix,
            notes=tuple(notes),
            facts=facts,
        )

    # -- conversion ----------------------------------------------------------------------
    def _checked(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> Canon:
        canon = canonical(infos, detection.layout, detection.prefix)
        st = structure(canon.shapes)
        expected = set(expected_original_keys(st))
        extra = [canon.names[n] for n in canon.names if n not in expected]
        missing = sorted(expected - set(canon.names))
        if detection.layout == "diffusers":
            missing = [KEYMAP.a_to_b(n) or n for n in missing]
        missing = [detection.prefix + n for n in missing]
        self.check_keys(f"{self.title()} ({detection.layout} layout)", canon.unknown + extra, missing)
        return canon

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Renames only; original output gets ``options.prefix`` in front of every key."""
        self.check_plan(detection, target_layout, options)
        canon = self._checked(detection, infos)
        by_source = {src: name for name, src in canon.names.items()}
        dropped = set(canon.droppable)
        ops: list[Op] = []
        for src in infos:
            if src in dropped:
                ops.append(
                    Drop(src, reason="not used by WanTransformer3DModel (diffusers ignores it on load)")
                )
                continue
            name = by_source[src]
            if target_layout == "original":
                dst = options.prefix + name
            else:
                dst = KEYMAP.a_to_b(name)
                if dst is None:  # canonical() kept only names KEYMAP knows
                    raise ConversionError(
                        f"no Diffusers name for {name!r}",
                        hint="this is a weightsmith bug; please report it with the checkpoint's key list",
                    )
            ops.append(Rename(src, dst))
        return ops

    # -- config --------------------------------------------------------------------------
    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """``__init__`` kwargs of the Diffusers class, from shapes plus the heads rule (module doc).

        Values no tensor holds (eps, rope_max_seq_len, VACE layer positions) come from the config
        given to ``detect`` when there was one, else from the released models: eps 1e-6, rope 1024,
        VACE blocks evenly spaced (every num_layers / n_vace-th layer: 0,2,..,28 and 0,5,..,35).
        """
        canon = canonical(infos, detection.layout, detection.prefix)
        st = structure(canon.shapes)
        facts = detection.facts
        need = {"dim": st.dim, "in_channels": st.in_channels, "out_channels": st.out_channels}
        need |= {"patch_size": st.patch_size, "ffn_dim": st.ffn_dim, "text_dim": st.text_dim}
        need |= {"freq_dim": st.freq_dim}
        lacking = [k for k, v in need.items() if not v]
        if lacking:
            raise ConversionError(
                f"cannot derive a Wan transformer config: {', '.join(lacking)} unreadable from the weights",
                hint="the checkpoint is incomplete or not a Wan transformer",
            )
        heads = facts.get("heads") or heads_for(st.dim)
        if not heads or st.dim % heads:
            raise ConversionError(
                f"cannot tell the attention head count of a Wan transformer with width {st.dim}",
                hint="pass the model's config.json (num_attention_heads) along with the weights",
            )
        cfg: dict[str, Any] = {
            "patch_size": list(st.patch_size),
            "num_attention_heads": heads,
            "attention_head_dim": st.dim // heads,
            "in_channels": st.in_channels,
            "out_channels": st.out_channels,
            "text_dim": st.text_dim,
            "freq_dim": st.freq_dim,
            "ffn_dim": st.ffn_dim,
            "num_layers": st.layers,
            "cross_attn_norm": st.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads",
            "eps": facts.get("eps", 1e-6),
            "image_dim": st.image_dim,
            "added_kv_proj_dim": st.added_kv_proj_dim,
            "rope_max_seq_len": facts.get("rope_max_seq_len", 1024),
            "pos_embed_seq_len": st.pos_embed_seq_len,
        }
        if st.vace_layers:
            at = facts.get("vace_layer_indices")
            if not at or len(at) != st.vace_layers:
                step = st.layers // st.vace_layers
                at = [i * step for i in range(st.vace_layers)]
            cfg["vace_layers"] = list(at)
            cfg["vace_in_channels"] = st.vace_in_channels
        return cfg

    # -- tiny models ---------------------------------------------------------------------
    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """Diffusers' own tiny test shape (2 heads of 12, 2 layers) with each variant's real channels.

        ``wide``: two heads of 128 and a 256-wide FFN, so every GGUF K-type applies.
        """
        self.check_variant(variant)
        cfg = dict(_WIDE if wide else _TINY)
        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        if variant in ("2.1-i2v", "2.1-flf2v"):
            cfg |= {"in_channels": 36, "image_dim": 64 if wide else 4, "added_kv_proj_dim": dim}
        if variant == "2.1-flf2v":
            cfg["pos_embed_seq_len"] = 8  # two images of 4 tokens (real: 2 x 257 CLIP tokens)
        if variant == "2.2-i2v-a14b":
            cfg["in_channels"] = 36
        if variant == "2.2-ti2v-5b":
            cfg |= {"in_channels": 48, "out_channels": 48}
        if variant == "2.1-vace":
            cfg |= {"num_layers": 4, "vace_layers": [0, 2], "vace_in_channels": 96}
        return cfg
