"""An exported graph checked against torch: ONNX Runtime and the (unpatched) torch model run the
same inputs at two shapes, and every output must agree within the graph's tolerance.

Errors are measured against the output's scale: ``max_abs`` is the largest absolute difference,
``max_rel`` that divided by the largest absolute reference value (a per-element relative error
explodes where the reference crosses zero). A graph passes when ``max_rel <= rtol`` for every
output; the tolerance depends on what the graph computes in:

* ``fp32``: 1e-3 (the same math, other kernels and summation orders; tiny models land near 1e-7);
* ``fp16``: 5e-2 (half-precision activations over a few blocks);
* ``bf16``: 5e-2 as fp16 (torch in bf16 against the bf16 graph; only where the provider runs
  bf16 at all, see ``runtime.bf16_gap``: onnxruntime's CPU provider does not);
* ``int8``: 0.5 (8-bit weights and, for static QDQ, activations: this only catches a broken graph;
  the verifier measures int8's real fidelity on generations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weightsmith.errors import GateFailed
from weightsmith.families.export import ExportPlan
from weightsmith.families.inputs import example_inputs
from weightsmith.onnx.runtime import session

TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 5e-2, "int8": 0.5}


@dataclass(frozen=True)
class Mismatch:
    name: str
    sizes: Mapping[str, int]
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.name,
            "sizes": dict(self.sizes),
            "shape": list(self.shape),
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
        }


def feed(plan: ExportPlan, x: Mapping[str, torch.Tensor], sess: Any) -> dict[str, np.ndarray]:
    """Inputs as the session wants them (a graph converted to fp16 takes float16)."""
    want = {i.name: i.type for i in sess.get_inputs()}
    out = {}
    for name, t in x.items():
        a = t.detach().cpu().numpy()
        if want.get(name) == "tensor(float16)":
            a = a.astype(np.float16)
        out[name] = a
    return out


def compare(
    ref: Sequence[torch.Tensor], got: Sequence[np.ndarray], names: Sequence[str], sizes: Mapping[str, int]
) -> list[Mismatch]:
    errs = []
    for name, r, g in zip(names, ref, got, strict=True):
        r64 = r.detach().double().cpu().numpy()
        g64 = np.asarray(g, dtype=np.float64)
        if r64.shape != g64.shape:
            errs.append(Mismatch(name, sizes, tuple(g64.shape), float("inf"), float("inf")))
            continue
        diff = np.abs(g64 - r64)
        max_abs = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
        scale = float(np.abs(r64).max()) if r64.size else 0.0
        errs.append(Mismatch(name, sizes, tuple(r64.shape), max_abs, max_abs / max(scale, 1e-12)))
    return errs


def validate(
    graph: Path,
    reference: nn.Module,
    plan: ExportPlan,
    kind: str = "fp32",
    device: str = "cpu",
    shapes: Sequence[Mapping[str, int]] | None = None,
    on_shape: Any = None,
) -> list[Mismatch]:
    """Run ``graph`` and ``reference`` (a plan's ``Forward`` around the unpatched model) at
    ``shapes`` (default: the plan's two); raise GateFailed (exit 1) naming the output and
    its errors when one is over ``TOLERANCE[kind]``. Returns every measured error."""
    sess = session(graph, device)
    names = [o.name for o in plan.outputs]
    rtol = TOLERANCE[kind]
    dtype = next((p.dtype for p in reference.parameters() if p.is_floating_point()), torch.float32)
    dev = next((p.device for p in reference.parameters()), torch.device("cpu"))
    errors: list[Mismatch] = []
    for seed, sizes in enumerate(shapes or (plan.sizes, plan.second), start=1):
        x = example_inputs(plan.inputs, sizes, seed=seed)
        with torch.no_grad():
            out = reference(*((v.to(dtype) if v.is_floating_point() else v).to(dev) for v in x.values()))
        ref = [out] if isinstance(out, torch.Tensor) else list(out)
        try:
            got = sess.run(names, feed(plan, x, sess))
        except Exception as e:  # onnxruntime's own error types: the graph cannot run these shapes
            shown = " ".join(f"{k}={v}" for k, v in sizes.items())
            raise GateFailed(
                f"ONNX Runtime cannot run the {plan.part} graph at {shown}: {str(e).splitlines()[0][:300]}",
                hint="the export is wrong for these shapes; report it with the model's config",
            ) from e
        errors.extend(compare([r.float() for r in ref], got, names, sizes))
        if on_shape is not None:
            on_shape()
    bad = [e for e in errors if not e.max_rel <= rtol]
    if bad:
        e = max(bad, key=lambda b: b.max_rel)
        shown = " ".join(f"{k}={v}" for k, v in e.sizes.items())
        raise GateFailed(
            f"the {plan.part} graph disagrees with torch: output {e.name!r} at {shown}: "
            f"max abs error {e.max_abs:.3g}, max rel error {e.max_rel:.3g} (tolerance {rtol:g}, {kind})",
            hint="the export is wrong for these shapes; report it with the model's config",
        )
    return errors
