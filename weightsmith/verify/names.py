"""Diffusers module names to the tensor names a GGUF file of the same model uses.

``weightsmith quantize`` writes GGUF tensors under the names of the family's published layout
(``quant.gguf_layout``: original or SAT), so importance matrices and ``--keep`` patterns must
use those. The family's own conversion plan from Diffusers to that layout says which Diffusers
weights make up each GGUF tensor (renamed, or fused into one qkv). Per-column statistics are carried
through the same ops: a matrix whose every row is the statistic goes through the op, and the
first row of the result is the statistic of the output's columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from weightsmith.families import PlanOptions, get_component
from weightsmith.families.base import DIFFUSION_PREFIX
from weightsmith.io.base import infos_from_state_dict
from weightsmith.verify.family import published_layout


@dataclass(frozen=True)
class GGUFTensor:
    """One GGUF tensor: its name, the Diffusers weights it is made of, and the op that makes it."""

    name: str
    sources: tuple[str, ...]
    op: object


def gguf_layout(family: str) -> str:
    return published_layout(family)


def gguf_tensors(model: nn.Module, family: str) -> dict[str, GGUFTensor]:
    """GGUF tensor name -> where it comes from, for every output of the Diffusers-to-GGUF-layout plan."""
    comp = get_component(family, "transformer")
    state = {k: v for k, v in model.state_dict().items()}
    infos = infos_from_state_dict(
        {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    )
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    det = comp.detect(infos, config)
    if det is None:
        from weightsmith.errors import DetectionError

        raise DetectionError(
            f"{type(model).__name__} is not recognised as a {family} transformer",
            hint="check the baseline with `weightsmith inspect`; if it is a supported model, rerun with --debug and report it",
        )
    ops = comp.plan(det, infos, gguf_layout(family), PlanOptions(config=config))
    out: dict[str, GGUFTensor] = {}
    for op in ops:
        for name in op.outputs:
            out[name.removeprefix(DIFFUSION_PREFIX)] = GGUFTensor(
                name.removeprefix(DIFFUSION_PREFIX), tuple(op.inputs), op
            )
    return out


def gguf_shapes(model: nn.Module, tensors: Mapping[str, GGUFTensor]) -> dict[str, tuple[int, ...]]:
    """The shape each GGUF tensor has (from the ops' own shape rules, no data touched)."""
    from weightsmith.families.ops import Spec

    state = model.state_dict()
    out: dict[str, tuple[int, ...]] = {}
    for t in tensors.values():
        ins = [Spec(n, tuple(state[n].shape), state[n].dtype) for n in t.sources]
        for spec in t.op.out_specs(ins):  # type: ignore[attr-defined]
            out[spec.name.removeprefix(DIFFUSION_PREFIX)] = tuple(spec.shape)
    return {k: v for k, v in out.items() if k in tensors}


def column_stats(
    tensors: Mapping[str, GGUFTensor],
    stats: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, tuple[torch.Tensor, str]]:
    """Per-column statistics of GGUF tensors from those of Diffusers weights (``stats`` keyed by
    ``<module>.weight``); returns name -> (vector, the Diffusers weight it came from). Tensors
    whose sources have no statistics (not Linear weights) are left out."""
    out: dict[str, tuple[torch.Tensor, str]] = {}
    for name, t in tensors.items():
        if not t.sources or not all(s in stats for s in t.sources):
            continue
        ins = [stats[s].reshape(1, -1).expand(shapes[s][0], -1) for s in t.sources]
        if any(len(shapes[s]) != 2 for s in t.sources):
            continue
        outputs = t.op.apply(ins)  # type: ignore[attr-defined]
        idx = [n.removeprefix(DIFFUSION_PREFIX) for n in t.op.outputs].index(name)  # type: ignore[attr-defined]
        res = outputs[idx]
        if res.dim() != 2:
            continue
        out[name] = (res[0].clone(), t.sources[0])
    return out


def diffusers_to_gguf(tensors: Mapping[str, GGUFTensor]) -> dict[str, list[str]]:
    """Diffusers weight name -> the GGUF tensor name(s) it ends up in."""
    out: dict[str, list[str]] = {}
    for name, t in tensors.items():
        for s in t.sources:
            out.setdefault(s, []).append(name)
    return out
