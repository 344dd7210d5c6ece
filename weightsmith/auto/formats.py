"""What ``auto:FORMAT`` may choose per layer, what each choice costs in bytes, and how a chosen mix
is written.

A *unit* is one tensor as the output file stores it (a GGUF tensor, or a Diffusers Linear weight
in a compressed-tensors folder) that the format may quantize: the family's keep policy and the
user's ``--keep`` remove tensors before any search. Each unit lists the Diffusers parameters it is
made of (a fused qkv is three) so the cost model can quantize them in the baseline transformer; a
ggml type quantizes each row on its own, so quantizing the parts is quantizing the fused tensor.
Adding a format family is one more ``AutoFormat`` in ``AUTO_FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightsmith.errors import UsageError
from weightsmith.families import get_component

KEEP = "keep"


@dataclass(frozen=True)
class Unit:
    """One quantizable tensor of the output and its candidate types, cheapest first."""

    name: str
    params: tuple[str, ...]
    shape: tuple[int, ...]
    sizes: dict[str, int]

    @property
    def candidates(self) -> list[str]:
        return sorted(self.sizes, key=lambda t: (self.sizes[t], t))


@dataclass
class Layout:
    """A model's units under one format, the bytes of everything else, and the uniform recipes
    (label -> type per unit) the frontier compares against."""

    units: list[Unit]
    fixed_bytes: int
    uniform: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class AutoFormat:
    """One format family ``auto:NAME`` can choose types in."""

    name = ""
    suffix_hint = ""
    folder = False

    def layout(self, model: nn.Module, family: str, keep: Sequence[str]) -> Layout:
        raise NotImplementedError

    def fake(self, w: torch.Tensor, unit: str, qtype: str) -> torch.Tensor:
        """``w`` quantized to ``qtype`` and back, in ``w``'s dtype."""
        raise NotImplementedError

    def check_dst(self, dst: Path) -> None:
        raise NotImplementedError

    def write(self, src: str, dst: Path, choice: Mapping[str, str], **kw: Any) -> Any:
        """Write ``src`` with the unit -> type ``choice`` to ``dst``; returns the QuantizeResult."""
        raise NotImplementedError


def _meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def ggml_bytes(qtype: str, shape: Sequence[int]) -> int:
    """Bytes a tensor of ``shape`` takes in GGUF as ``qtype``."""
    import gguf

    n = 1
    for d in shape:
        n *= int(d)
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return n // block * size


class GGUFAuto(AutoFormat):
    """Per-tensor ggml types in one GGUF file. Candidates: Q2_K..Q6_K and IQ4_XS where the row
    splits into 256, IQ4_NL and Q8_0 where 32 does (Q4_0/Q5_0 too where no K-type fits), and F16:
    types both diffusers' GGUF loader and ComfyUI-GGUF read (no imatrix-only IQ types)."""

    name = "gguf"
    suffix_hint = "name DST like model-auto.gguf"
    TYPES = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "IQ4_NL", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "F16")

    def layout(self, model: nn.Module, family: str, keep: Sequence[str]) -> Layout:
        from weightsmith.quantize.gguf.recipes import RECIPES, _fits, assign_types
        from weightsmith.verify.names import gguf_shapes, gguf_tensors

        tensors = gguf_tensors(model, family)
        shapes = gguf_shapes(model, tensors)
        state = _meta_state(model)
        config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        comp = get_component(family, "transformer")
        items = sorted(shapes.items())
        base = assign_types(RECIPES["Q8_0"], comp, items, tuple(keep), config)
        units: list[Unit] = []
        fixed = 0
        notes: list[str] = []
        for a in base.assignments:
            srcs = tensors[a.name].sources
            searchable = a.reason == "default" and all(
                len(state[s].shape) == 2 and state[s].shape[-1] == a.shape[-1] for s in srcs
            )
            if not searchable:
                fixed += ggml_bytes(a.qtype, a.shape)
                continue
            types = [t for t in self.TYPES if _fits(t, a.shape[-1])]
            if any(t.endswith("_K") for t in types):
                types = [t for t in types if t not in ("Q4_0", "Q5_0")]
            units.append(Unit(a.name, tuple(srcs), a.shape, {t: ggml_bytes(t, a.shape) for t in types}))
        uniform = {}
        for r in RECIPES.values():
            if r.float_recipe and r.name != "F16":
                continue
            types = assign_types(r, comp, items, tuple(keep), config).types()
            uniform[f"gguf:{r.name}"] = {u.name: types[u.name] for u in units}
        return Layout(units, fixed, uniform, notes)

    def fake(self, w: torch.Tensor, unit: str, qtype: str) -> torch.Tensor:
        from weightsmith.verify.fakequant import weight_quantizer

        return weight_quantizer("gguf:Q8_0")(w, unit, qtype)[0]

    def check_dst(self, dst: Path) -> None:
        if dst.suffix != ".gguf":
            raise UsageError(f"GGUF output {dst} should end in .gguf", hint=self.suffix_hint)

    def write(self, src: str, dst: Path, choice: Mapping[str, str], **kw: Any) -> Any:
        from weightsmith.quantize.gguf.recipes import RECIPES
        from weightsmith.quantize.gguf.run import quantize_gguf

        return quantize_gguf(
            src,
            dst,
            "gguf:" + _base_recipe(choice, RECIPES),
            overrides=dict(choice),
            label="auto:gguf",
            progress=False,
            **kw,
        )


def _base_recipe(choice: Mapping[str, str], recipes: Mapping[str, Any]) -> str:
    """The recipe whose default type is the commonest chosen type (its file type goes in the header)."""
    counts: dict[str, int] = {}
    for t in choice.values():
        counts[t] = counts.get(t, 0) + 1
    for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        for r in recipes.values():
            if r.default == t:
                return r.name
    return "Q8_0"


class CompressedTensorsAuto(AutoFormat):
    """One Linear scheme per layer in a compressed-tensors folder (one config group per scheme,
    targets = its layers), or the layer kept in the source dtype."""

    name = "compressed-tensors"
    suffix_hint = "give DST as a folder name (without .safetensors)"
    folder = True
    SCHEMES = ("int4-g32", "int4-g64", "int4", "mxfp4", "nvfp4", "int8", "fp8")

    def layout(self, model: nn.Module, family: str, keep: Sequence[str]) -> Layout:
        import fnmatch

        import weightsmith.kernels.linear as ls
        from weightsmith.quantize.linear.formats import ct_format, ct_specs

        spec = get_component(family, "transformer").quant
        state = _meta_state(model)
        linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        units: list[Unit] = []
        fixed = 0
        for name, t in sorted(state.items()):
            keep_it = (
                name not in linear
                or spec.keep_reason(name) is not None
                or any(fnmatch.fnmatchcase(name, g) for g in keep)
            )
            own = t.numel() * t.element_size()
            if keep_it:
                fixed += own
                continue
            sizes = {KEEP: own}
            for s in self.SCHEMES:
                sch = ls.get_linear_scheme(s)
                if sch.fits(t.shape[-1]):
                    specs = ct_specs(name.removesuffix(".weight"), tuple(t.shape), sch, ct_format(sch, None))
                    sizes[s] = sum(_nbytes(sh, dt) for _, sh, dt in specs)
            units.append(Unit(name, (name,), tuple(t.shape), sizes))
        uniform = {s: {u.name: (s if s in u.sizes else KEEP) for u in units} for s in self.SCHEMES}
        return Layout(units, fixed, uniform, [])

    def fake(self, w: torch.Tensor, unit: str, qtype: str) -> torch.Tensor:
        if qtype == KEEP:
            return w
        from weightsmith.verify.fakequant import weight_quantizer

        return weight_quantizer(qtype)(w, unit, None)[0]

    def check_dst(self, dst: Path) -> None:
        if dst.suffix == ".safetensors":
            raise UsageError(f"compressed-tensors output {dst} is a component folder", hint=self.suffix_hint)

    def write(self, src: str, dst: Path, choice: Mapping[str, str], **kw: Any) -> Any:
        from weightsmith.quantize.linear.run import quantize_linear

        schemes = {n: t for n, t in choice.items() if t != KEEP}
        if not schemes:
            raise UsageError("every layer is kept at this target", hint="use the source model as it is")
        counts: dict[str, int] = {}
        for t in schemes.values():
            counts[t] = counts.get(t, 0) + 1
        base = min(counts, key=lambda t: (-counts[t], t))
        return quantize_linear(
            src,
            dst,
            base,
            format="compressed-tensors",
            schemes=schemes,
            label="auto:compressed-tensors",
            progress=False,
            **kw,
        )


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


AUTO_FORMATS: dict[str, Callable[[], AutoFormat]] = {
    GGUFAuto.name: GGUFAuto,
    CompressedTensorsAuto.name: CompressedTensorsAuto,
}


# Output formats quantize writes that auto: cannot choose per-layer types in yet, and why.
NOT_SEARCHABLE = {
    "comfy": "auto cannot write a ComfyUI comfy_quant file with a type per layer yet",
    "comfy-legacy": "a legacy scaled-fp8 ComfyUI file holds one type (fp8) only",
}


def get_auto_format(scheme: str) -> AutoFormat:
    """``auto:gguf`` / ``auto:compressed-tensors`` to its AutoFormat."""
    name = scheme.split(":", 1)[1].lower() if ":" in scheme else ""
    if name in NOT_SEARCHABLE:
        raise UsageError(
            f"{scheme} is not available: {NOT_SEARCHABLE[name]}",
            hint=f"use {' or '.join('auto:' + n for n in AUTO_FORMATS)}, or one scheme with --format {name}",
        )
    if name not in AUTO_FORMATS:
        raise UsageError(
            f"unknown auto scheme {scheme!r}",
            hint=f"choose one of {', '.join('auto:' + n for n in AUTO_FORMATS)}",
        )
    return AUTO_FORMATS[name]()


def auto_schemes() -> list[str]:
    return [f"auto:{n}" for n in AUTO_FORMATS]
