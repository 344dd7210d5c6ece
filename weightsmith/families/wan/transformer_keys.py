"""Wan transformer keys: the original <-> Diffusers name table and the structure the keys show.

Between the two layouts there are only renames, so one table of whole-key template pairs serves
both directions (``KEYMAP``). ``structure`` reads the architecture from original-layout names and
shapes; ``expected_original_keys`` lists what a complete checkpoint of that structure holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weightsmith.families.wan.keys import KeyMap
from weightsmith.io.base import TensorInfo

# Original name <-> Diffusers name. Written once; read left to right or right to left.
PAIRS: list[tuple[str, str]] = [
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
KEYMAP = KeyMap(PAIRS)  # a = original, b = diffusers

# Diffusers-layout keys that carry nothing the model uses: WanTransformer3DModel ignores
# ``norm_added_q`` on load (``_keys_to_ignore_on_load_unexpected``); conversions drop it.
DIFFUSERS_DROPPABLE = re.compile(r"(?:blocks|vace_blocks)\.\d+\.attn2\.norm_added_q\.(?:weight|bias)")

ORIGINAL_MARKERS = ("head.modulation", "blocks.0.self_attn.norm_q.weight", "text_embedding.2.weight")
DIFFUSERS_MARKERS = (
    "scale_shift_table",
    "condition_embedder.time_embedder.linear_1.weight",
    "blocks.0.attn1.to_q.weight",
)


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
class Canon:
    """A checkpoint's keys seen in original names."""

    names: dict[str, str]  # original name -> source key
    shapes: dict[str, tuple[int, ...]]  # original name -> shape
    droppable: list[str]  # source keys that carry nothing (Drop)
    unknown: list[str]  # source keys no rule knows


def canonical(infos: Mapping[str, TensorInfo], layout: str, prefix: str) -> Canon:
    canon = Canon({}, {}, [], [])
    for full, info in infos.items():
        if not full.startswith(prefix):
            canon.unknown.append(full)
            continue
        key = full[len(prefix) :]
        if layout == "original":
            name = key if KEYMAP.a_to_b(key) is not None else None
        else:
            name = KEYMAP.b_to_a(key)
            if name is None and DIFFUSERS_DROPPABLE.fullmatch(key):
                canon.droppable.append(full)
                continue
        if name is None:
            canon.unknown.append(full)
        else:
            canon.names[name] = full
            canon.shapes[name] = tuple(info.shape)
    return canon
