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

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weightsmith.convert.ops import Drop, Op, Rename
from weightsmith.errors import ConversionError
from weightsmith.families.base import NO_OPTIONS, Component, Detection, PlanOptions, register
from weightsmith.families.wan.keys import KeyMap, locate
from weightsmith.io.base import TensorInfo

# Original name <-> Diffusers name. Written once; read left to right or right to left.
_PAIRS: list[tuple[str, str]] = [
    ("patch_embedding.{p}", "patch_embedding.{p}"),
    ("vace_patch_embedding.{p}", "vace_patch_embedding.{p}"),
    ("text_embedding.0.{p}", "condition_embedder.text_embedder.linear_1.{p}"),
    ("text_embedding.2.{p}", "condition_embedder.text_embedder.linear_2.{p}"),
    ("time_embedding.0.{p}", "condition_embedder.time_embedder.linear_1.{p}"),
    ("time_embedding.2.{p}", "condition_embedder.time_embedder.linear_2.{p}"),
    ("time_projection.1.{p}", "condition_embedder.time_proj.{p}"),
    ("head.head.{p}", "proj_out.{p}"),
    ("head.modulation", "scale_shift_table"),
    ("img_emb.proj.0.{p}", "condition_embedder.image_embedder.norm1.{p}"),
    ("img_emb.proj.1.{p}", "condition_embedder.image_embedder.ff.net.0.proj.{p}"),
    ("img_emb.proj.3.{p}", "condition_embedder.image_embedder.ff.net.2.{p}"),
    ("img_emb.proj.4.{p}", "condition_embedder.image_embedder.norm2.{p}"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    # Per block; the same names inside the main blocks and the VACE blocks.
    ("{B}.{i}.self_attn.q.{p}", "{B}.{i}.attn1.to_q.{p}"),
    ("{B}.{i}.self_attn.k.{p}", "{B}.{i}.attn1.to_k.{p}"),
    ("{B}.{i}.self_attn.v.{p}", "{B}.{i}.attn1.to_v.{p}"),
    ("{B}.{i}.self_attn.o.{p}", "{B}.{i}.attn1.to_out.0.{p}"),
    ("{B}.{i}.self_attn.norm_q.{p}", "{B}.{i}.attn1.norm_q.{p}"),
    ("{B}.{i}.self_attn.norm_k.{p}", "{B}.{i}.attn1.norm_k.{p}"),
    ("{B}.{i}.cross_attn.q.{p}", "{B}.{i}.attn2.to_q.{p}"),
    ("{B}.{i}.cross_attn.k.{p}", "{B}.{i}.attn2.to_k.{p}"),
    ("{B}.{i}.cross_attn.v.{p}", "{B}.{i}.attn2.to_v.{p}"),
    ("{B}.{i}.cross_attn.o.{p}", "{B}.{i}.attn2.to_out.0.{p}"),
    ("{B}.{i}.cross_attn.norm_q.{p}", "{B}.{i}.attn2.norm_q.{p}"),
    ("{B}.{i}.cross_attn.norm_k.{p}", "{B}.{i}.attn2.norm_k.{p}"),
    ("{B}.{i}.cross_attn.k_img.{p}", "{B}.{i}.attn2.add_k_proj.{p}"),
    ("{B}.{i}.cross_attn.v_img.{p}", "{B}.{i}.attn2.add_v_proj.{p}"),
    ("{B}.{i}.cross_attn.norm_k_img.{p}", "{B}.{i}.attn2.norm_added_k.{p}"),
    # Wan runs norm1 -> self-attn -> norm3 -> cross-attn -> norm2 -> ffn; Diffusers numbers them
    # in execution order. Only the cross-attention norm has parameters, so only it is renamed.
    ("{B}.{i}.norm3.{p}", "{B}.{i}.norm2.{p}"),
    ("{B}.{i}.ffn.0.{p}", "{B}.{i}.ffn.net.0.proj.{p}"),
    ("{B}.{i}.ffn.2.{p}", "{B}.{i}.ffn.net.2.{p}"),
    ("{B}.{i}.modulation", "{B}.{i}.scale_shift_table"),
    ("vace_blocks.{i}.before_proj.{p}", "vace_blocks.{i}.proj_in.{p}"),
    ("vace_blocks.{i}.after_proj.{p}", "vace_blocks.{i}.proj_out.{p}"),
]
KEYMAP = KeyMap(_PAIRS)  # a = original, b = diffusers

# Diffusers-layout keys that carry nothing the model uses: WanTransformer3DModel ignores
# ``norm_added_q`` on load (``_keys_to_ignore_on_load_unexpected``); conversions drop it.
_DIFFUSERS_DROPPABLE = re.compile(r"(?:blocks|vace_blocks)\.\d+\.attn2\.norm_added_q\.(?:weight|bias)")

ORIGINAL_MARKERS = ("head.modulation", "blocks.0.self_attn.norm_q.weight", "text_embedding.2.weight")
DIFFUSERS_MARKERS = (
    "scale_shift_table",
    "condition_embedder.time_embedder.linear_1.weight",
    "blocks.0.attn1.to_q.weight",
)
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


@dataclass(frozen=True)
class Structure:
    """What the weights say about the architecture (original key names, shapes only)."""

    dim: int | None
    in_channels: int | None
    out_channels: int | None
    patch_size: tuple[int, ...] | None
    layers: int
    ffn_dim: int | None
    text_dim: int | None
    freq_dim: int | None
    image_dim: int | None
    added_kv_proj_dim: int | None
    pos_embed_seq_len: int | None
    vace_layers: int
    vace_in_channels: int | None
    cross_attn_norm: bool

    @property
    def has_image(self) -> bool:
        return self.image_dim is not None


def _max_index(names: Any, block: str) -> int:
    """1 + the largest block index in ``names`` (so a gap shows up as missing keys)."""
    rx = re.compile(rf"{block}\.(\d+)\.")
    idx = [int(m.group(1)) for n in names if (m := rx.match(n))]
    return max(idx) + 1 if idx else 0


def structure(shapes: Mapping[str, tuple[int, ...]]) -> Structure:
    """Architecture facts from original-layout names and shapes; None where a key is absent."""

    def dim_of(key: str, axis: int) -> int | None:
        s = shapes.get(key)
        if s is None or not -len(s) <= axis < len(s):
            return None
        return int(s[axis])

    patch = shapes.get("patch_embedding.weight")
    patch_size = tuple(int(x) for x in patch[2:]) if patch is not None and len(patch) == 5 else None
    head_rows = dim_of("head.head.weight", 0)
    out_channels = None
    if head_rows is not None and patch_size:
        n = math.prod(patch_size)
        out_channels = head_rows // n if head_rows % n == 0 else None
    emb_pos = shapes.get("img_emb.emb_pos")
    return Structure(
        dim=dim_of("patch_embedding.weight", 0) or dim_of("head.modulation", -1),
        in_channels=dim_of("patch_embedding.weight", 1),
        out_channels=out_channels,
        patch_size=patch_size,
        layers=_max_index(shapes, "blocks"),
        ffn_dim=dim_of("blocks.0.ffn.0.weight", 0),
        text_dim=dim_of("text_embedding.0.weight", 1),
        freq_dim=dim_of("time_embedding.0.weight", 1),
        image_dim=dim_of("img_emb.proj.0.weight", 0),
        added_kv_proj_dim=dim_of("blocks.0.cross_attn.k_img.weight", 1),
        pos_embed_seq_len=int(emb_pos[1]) if emb_pos is not None and len(emb_pos) == 3 else None,
        vace_layers=_max_index(shapes, "vace_blocks"),
        vace_in_channels=dim_of("vace_patch_embedding.weight", 1),
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
    )


def expected_original_keys(st: Structure) -> list[str]:
    """Every key a complete original-layout checkpoint of this structure holds."""
    wb = ("weight", "bias")
    keys = [f"{m}.{p}" for m in ("patch_embedding", "text_embedding.0", "text_embedding.2") for p in wb]
    keys += [f"{m}.{p}" for m in ("time_embedding.0", "time_embedding.2", "time_projection.1") for p in wb]
    keys += ["head.head.weight", "head.head.bias", "head.modulation"]
    if st.has_image:
        keys += [f"img_emb.proj.{n}.{p}" for n in (0, 1, 3, 4) for p in wb]
    if st.pos_embed_seq_len is not None:
        keys.append("img_emb.emb_pos")
    if st.vace_layers or st.vace_in_channels is not None:
        keys += ["vace_patch_embedding.weight", "vace_patch_embedding.bias"]

    def block(b: str) -> list[str]:
        ks = []
        for attn in ("self_attn", "cross_attn"):
            ks += [f"{b}.{attn}.{m}.{p}" for m in "qkvo" for p in wb]
            ks += [f"{b}.{attn}.norm_q.weight", f"{b}.{attn}.norm_k.weight"]
        if st.added_kv_proj_dim is not None:
            ks += [f"{b}.cross_attn.{m}.{p}" for m in ("k_img", "v_img") for p in wb]
            ks.append(f"{b}.cross_attn.norm_k_img.weight")
        if st.cross_attn_norm:
            ks += [f"{b}.norm3.weight", f"{b}.norm3.bias"]
        ks += [f"{b}.ffn.{n}.{p}" for n in (0, 2) for p in wb]
        ks.append(f"{b}.modulation")
        return ks

    for i in range(st.layers):
        keys += block(f"blocks.{i}")
    for n in range(st.vace_layers):
        keys += block(f"vace_blocks.{n}")
        keys += [f"vace_blocks.{n}.after_proj.{p}" for p in wb]
        if n == 0:
            keys += [f"vace_blocks.0.before_proj.{p}" for p in wb]
    return keys


@dataclass
class _Canon:
    """A checkpoint's keys seen in original names."""

    names: dict[str, str]  # original name -> source key
    shapes: dict[str, tuple[int, ...]]  # original name -> shape
    droppable: list[str]  # source keys that carry nothing (Drop)
    unknown: list[str]  # source keys no rule knows


def _canonical(infos: Mapping[str, TensorInfo], layout: str, prefix: str) -> _Canon:
    canon = _Canon({}, {}, [], [])
    for full, info in infos.items():
        if not full.startswith(prefix):
            canon.unknown.append(full)
            continue
        key = full[len(prefix) :]
        if layout == "original":
            name = key if KEYMAP.a_to_b(key) is not None else None
        else:
            name = KEYMAP.b_to_a(key)
            if name is None and _DIFFUSERS_DROPPABLE.fullmatch(key):
                canon.droppable.append(full)
                continue
        if name is None:
            canon.unknown.append(full)
        else:
            canon.names[name] = full
            canon.shapes[name] = tuple(info.shape)
    return canon


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
    label = "Wan transformer"

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
        canon = _canonical(infos, layout, prefix)
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
    def _checked(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> _Canon:
        canon = _canonical(infos, detection.layout, detection.prefix)
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
                assert dst is not None
            ops.append(Rename(src, dst))
        return ops

    # -- config --------------------------------------------------------------------------
    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """``__init__`` kwargs of the Diffusers class, from shapes plus the heads rule (module doc).

        Values no tensor holds (eps, rope_max_seq_len, VACE layer positions) come from the config
        given to ``detect`` when there was one, else from the released models: eps 1e-6, rope 1024,
        VACE blocks evenly spaced (every num_layers / n_vace-th layer: 0,2,..,28 and 0,5,..,35).
        """
        canon = _canonical(infos, detection.layout, detection.prefix)
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
