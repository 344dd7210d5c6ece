"""GGUF recipes: which ggml type each tensor of a DiT gets, named as users know them (Q4_K_M...).

The rules follow the image-model patch of llama.cpp that ComfyUI-GGUF publishes (reference
gguf.md 1.7), so "Q4_K_M" means what it means on the Hub:

* only exactly-2-D ``.weight`` tensors outside the family's high-precision list are quantized
  (biases, norms, modulation tables, embeddings, patch embedding and head stay in float). That
  list is the component's ``quant.keep``, in Diffusers names: a GGUF tensor is kept when any of
  the Diffusers tensors it is made of (``sources``: renamed, or fused like a qkv) is kept;
* a recipe has a default type and may raise three tensor classes: attention-v, fused qkv and
  FFN-down (Q4_K_M raises v and ffn-down to Q6_K, as llama.cpp does);
* Q3_K_M and Q4_K_S raise only the first few v tensors (in file order, i.e. sorted names);
* a K-type whose row is not a multiple of 256 falls back the way upstream llama.cpp does
  (Q2_K/Q3_K/IQ4_XS -> IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), and to F16 if even
  32 does not divide it (rows of 1920, 1152 or 2240 in released models take this path);
* tensors kept in float are F32 when 1-D, tiny (<= 1024 elements), a modulation table or of more
  than 4 dims, else F16 (never BF16 outside Linear weights: diffusers cannot load BF16 there).
  A component with ``quant.gguf_small_f32`` False (text encoders) follows llama.cpp's converter
  instead: 1-D tensors and ``*_norm.weight`` F32, every other kept tensor F16.
  A tensor too large for F16 (|x| > 65504) is kept in F32.

The tensor classes (attention-v, fused qkv, FFN-down) and the kept tensors stored as F32
(modulation) are the component's ``quant.gguf_*`` globs on GGUF-layout names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from weightsmith.errors import DetectionError, UsageError
from weightsmith.families import Component, PlanOptions, get_component
from weightsmith.families.base import QuantSpec
from weightsmith.io.base import TensorInfo

QK_K = 256


@dataclass(frozen=True)
class Recipe:
    """One named GGUF recipe."""

    name: str
    default: str
    file_type: str  # gguf.LlamaFileType member name
    v: str | None = None  # attention-v tensors
    qkv: str | None = None  # fused qkv tensors
    ffn_down: str | None = None
    v_first: tuple[int, str] | None = None  # (n, type): only the first n v tensors get ``type``
    float_recipe: bool = False
    description: str = ""


RECIPES: dict[str, Recipe] = {}


def _r(*args: object, **kwargs: object) -> None:
    r = Recipe(*args, **kwargs)  # type: ignore[arg-type]
    RECIPES[r.name] = r


_r("F32", "F32", "ALL_F32", float_recipe=True, description="full precision")
_r("F16", "F16", "MOSTLY_F16", float_recipe=True, description="half precision")
_r("BF16", "BF16", "MOSTLY_BF16", float_recipe=True, description="bfloat16 Linear weights")
_r("Q8_0", "Q8_0", "MOSTLY_Q8_0", description="8.5 bpw, near lossless")
_r("Q6_K", "Q6_K", "MOSTLY_Q6_K", description="6.56 bpw")
_r(
    "Q5_K_M",
    "Q5_K",
    "MOSTLY_Q5_K_M",
    v="Q6_K",
    qkv="Q6_K",
    ffn_down="Q6_K",
    description="5.5 bpw + Q6_K v/ffn-down",
)
_r("Q5_K_S", "Q5_K", "MOSTLY_Q5_K_S", description="5.5 bpw")
_r("Q5_1", "Q5_1", "MOSTLY_Q5_1", description="6 bpw legacy")
_r("Q5_0", "Q5_0", "MOSTLY_Q5_0", ffn_down="Q5_1", description="5.5 bpw legacy, Q5_1 ffn-down")
_r(
    "Q4_K_M",
    "Q4_K",
    "MOSTLY_Q4_K_M",
    v="Q6_K",
    qkv="Q5_K",
    ffn_down="Q6_K",
    description="4.5 bpw + Q6_K v/ffn-down",
)
_r("Q4_K_S", "Q4_K", "MOSTLY_Q4_K_S", ffn_down="Q5_K", v_first=(4, "Q5_K"), description="4.5 bpw")
_r("Q4_1", "Q4_1", "MOSTLY_Q4_1", description="5 bpw legacy")
_r("Q4_0", "Q4_0", "MOSTLY_Q4_0", ffn_down="Q4_1", description="4.5 bpw legacy, Q4_1 ffn-down")
_r(
    "Q3_K_L",
    "Q3_K",
    "MOSTLY_Q3_K_L",
    v="Q5_K",
    qkv="Q4_K",
    ffn_down="Q5_K",
    description="3.4 bpw + Q5_K v/ffn-down",
)
_r("Q3_K_M", "Q3_K", "MOSTLY_Q3_K_M", qkv="Q4_K", ffn_down="Q4_K", v_first=(2, "Q5_K"), description="3.4 bpw")
_r("Q3_K_S", "Q3_K", "MOSTLY_Q3_K_S", description="3.4 bpw")
_r("Q2_K", "Q2_K", "MOSTLY_Q2_K", v="Q3_K", description="2.6 bpw, needs an imatrix to be usable")
_r("IQ4_NL", "IQ4_NL", "MOSTLY_IQ4_NL", description="4.5 bpw non-linear")
_r("IQ4_XS", "IQ4_XS", "MOSTLY_IQ4_XS", description="4.25 bpw non-linear")

# Q4_K_S / Q3_K_M raise v only for the first n v tensors; the rest get this type.
_V_REST = {"Q4_K_S": "Q4_K", "Q3_K_M": "Q4_K"}

K_FALLBACK = {
    "Q2_K": "IQ4_NL",
    "Q3_K": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
BLOCK = {"Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "IQ4_NL": 32}


@dataclass
class Assignment:
    """The type chosen for one tensor and why."""

    name: str
    shape: tuple[int, ...]
    qtype: str
    reason: str


@dataclass
class RecipePlan:
    recipe: Recipe
    assignments: list[Assignment] = field(default_factory=list)

    def types(self) -> dict[str, str]:
        return {a.name: a.qtype for a in self.assignments}


def get_recipe(name: str) -> Recipe:
    key = name.upper().removeprefix("GGUF:")
    if key not in RECIPES:
        raise UsageError(f"unknown GGUF recipe {name!r}", hint=f"choose one of {', '.join(RECIPES)}")
    return RECIPES[key]


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _float_type(shape: Sequence[int], name: str, spec: QuantSpec, recipe: Recipe) -> tuple[str, str]:
    if recipe.name == "F32":
        return "F32", "kept"
    n = 1
    for d in shape:
        n *= d
    if len(shape) <= 1:
        return "F32", "1-D"
    if not spec.gguf_small_f32:  # llama.cpp's converter: norms F32, other kept tensors F16
        return ("F32", "norm") if name.endswith("_norm.weight") else ("F16", "kept")
    if n <= 1024:
        return "F32", "small"
    if _matches(name, spec.gguf_f32):
        return "F32", "modulation"
    if len(shape) > 4:
        return "F32", f"{len(shape)}-D"
    return "F16", "kept"


def _fits(qtype: str, row: int) -> bool:
    block = BLOCK.get(qtype, QK_K if qtype not in ("F32", "F16", "BF16") else 1)
    return row % block == 0


def gguf_sources(
    comp: Component, tensors: Iterable[tuple[str, tuple[int, ...]]], config: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """GGUF name -> the Diffusers names its tensor is made of (several for a fused or regrouped
    one), through the component's own plan from its GGUF layout to Diffusers."""
    infos = {n: TensorInfo(n, tuple(shape), "F32", "F32", 0) for n, shape in tensors}
    det = comp.detect(infos, config)
    if det is None or det.layout != comp.quant.gguf_layout:
        raise DetectionError(
            f"these tensors are not a {comp.title()} in its {comp.quant.gguf_layout} layout",
            hint="name the tensors as the GGUF file does (the family's GGUF layout)",
        )
    ops = comp.plan(det, infos, "diffusers", PlanOptions(config=config))
    return {k: list(op.outputs) for op in ops for k in op.inputs}


def family_kept(spec: QuantSpec, sources: Mapping[str, Iterable[str]]) -> set[str]:
    """The GGUF names the family keeps: those made of any Diffusers tensor ``spec.keep`` names."""
    return {name for name, parts in sources.items() if any(spec.keep_reason(p) for p in parts)}


def assign_types(
    recipe: Recipe,
    component: Component | str,
    tensors: Iterable[tuple[str, tuple[int, ...]]],
    keep: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> RecipePlan:
    """Choose a ggml type for every (GGUF-layout name, torch shape) of a transformer, in sorted-name
    order. ``component``: the Component, or its family's name; ``keep``: the user's --keep globs;
    ``config``: the model's Diffusers config, where its shapes leave the plan something open;
    ``overrides``: GGUF name -> type for quantizable tensors (a per-layer assignment such as
    ``--scheme auto:gguf`` chooses), which must fit the tensor's rows."""
    comp = get_component(component, "transformer") if isinstance(component, str) else component
    spec = comp.quant
    tensors = list(tensors)
    kept = family_kept(spec, gguf_sources(comp, tensors, config))
    plan = RecipePlan(recipe)
    v_seen = 0
    for name, shape in sorted(tensors):
        quantizable = name.endswith(".weight") and len(shape) == 2 and name not in kept
        if not quantizable or _matches(name, keep):
            qt, why = _float_type(shape, name, spec, recipe)
            if quantizable:
                why = "--keep"
            plan.assignments.append(Assignment(name, shape, qt, why))
            continue
        if overrides and name in overrides:
            qt = overrides[name]
            if not _fits(qt, shape[-1]):
                raise UsageError(
                    f"type {qt} does not fit {name}: its rows of {shape[-1]} do not split into its blocks",
                    hint="choose a type whose block divides the row (Q8_0, Q5_0, Q4_0: 32; K-types: 256)",
                )
            plan.assignments.append(Assignment(name, shape, qt, "per-layer"))
            continue
        qt, why = recipe.default, "default"
        if recipe.float_recipe:
            plan.assignments.append(Assignment(name, shape, qt, "Linear weight"))
            continue
        if _matches(name, spec.gguf_v):
            if recipe.v_first is not None:
                n, bumped = recipe.v_first
                qt, why = (
                    (bumped, f"attention-v #{v_seen}")
                    if v_seen < n
                    else (_V_REST[recipe.name], "attention-v")
                )
            elif recipe.v:
                qt, why = recipe.v, "attention-v"
            v_seen += 1
        elif _matches(name, spec.gguf_qkv) and recipe.qkv:
            qt, why = recipe.qkv, "fused qkv"
        elif _matches(name, spec.gguf_ffn_down) and recipe.ffn_down:
            qt, why = recipe.ffn_down, "ffn-down"
        row = shape[-1]
        if not _fits(qt, row):
            fb = K_FALLBACK.get(qt, "F16")
            if not _fits(fb, row):
                fb = "F16"
            qt, why = (
                fb,
                f"{why}; row {row} not a multiple of {256 if qt in K_FALLBACK else 32}: {qt} -> {fb}",
            )
        plan.assignments.append(Assignment(name, shape, qt, why))
    return plan


def recipe_table_markdown() -> str:
    """The recipe table for the README."""
    lines = [
        "| recipe | default | attention-v | fused qkv | ffn-down | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in RECIPES.values():
        v = r.v or (f"{r.v_first[1]} (first {r.v_first[0]}), else {_V_REST[r.name]}" if r.v_first else "-")
        lines.append(
            f"| {r.name} | {r.default} | {v} | {r.qkv or '-'} | {r.ffn_down or '-'} | {r.description} |"
        )
    return "\n".join(lines)
