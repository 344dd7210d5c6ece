"""A component's ``ExportPlan`` traced into an ONNX graph with torch's dynamo exporter.

``torch.onnx.export(..., dynamo=True)`` is chosen explicitly (the TorchScript exporter is
legacy). Free dimensions become ``torch.export.Dim``s named as in the plan; a dimension that must
be a multiple of a patch size is ``k * Dim(name + "_patches")`` (plus an offset where the plan
says, e.g. ``1 + 4k`` video frames), and a dimension named ``<dim>_patches`` in an input (rotary
tables) is that same ``Dim``.

The exporter's onnxscript optimizer is not run: its no-op rule drops ``x + 1e-15`` as if it were
``x + 0`` (onnxscript 0.7), which turns Sana's linear attention ``0 / (0 + eps)`` into NaN.
ONNX Runtime optimizes the graph itself when it loads it.

Fake-tensor dispatch runs without its cache while tracing (``_uncached_fake_dispatch``): with
free dimensions a cache hit rebuilds the output's symbolic sizes and strides, which costs more than
the meta function it saves (reports/onnx_vae_trace.md). The cache only memoizes; the graph is the same.

Graphs are written with their weights as external data (one ``<name>.onnx.data`` file beside the
graph) when they would pass protobuf's 2 GB, streamed from the torch tensors without a second
in-memory copy (onnx_ir's ``TorchTensor`` wraps each parameter).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.export import ExportPlan
from weightsmith.families.inputs import example_inputs

MIN_OPSET = 18
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave room for the graph itself
PATCHES = "_patches"


def dynamic_shapes(plan: ExportPlan) -> tuple[dict[int, Any], ...]:
    """One ``{axis: Dim}`` per input, sharing ``Dim`` objects by name (see the module doc)."""
    from torch.export import Dim

    dims: dict[str, Any] = {}

    def base(name: str) -> Any:
        if name not in dims:
            dims[name] = Dim(name, min=1)
        return dims[name]

    def dim(name: str) -> Any:
        if name.endswith(PATCHES):
            stem = name[: -len(PATCHES)]
            return base(name) if plan.multiples.get(stem, 1) != 1 else base(stem)
        k, off = plan.multiples.get(name, 1), plan.offsets.get(name, 0)
        if k == 1 and off == 0:
            return base(name)
        return k * base(name + PATCHES) + off

    return tuple(
        {i: dim(d) for i, d in enumerate(spec.dims) if isinstance(d, str) and d not in plan.static}
        for spec in plan.inputs
    )


def _summary(e: BaseException) -> str:
    """The exporter's own one-line cause (its messages open with advice, the cause comes later)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1]
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause).strip():
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}"
    return lines[0] if lines else type(e).__name__


def weight_bytes(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress lines and warnings per step; weightsmith shows its own bar."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


@contextlib.contextmanager
def _uncached_fake_dispatch() -> Iterator[None]:
    """torch's fake-tensor dispatch cache off for the block (see the module doc)."""
    import torch._dynamo

    with torch._dynamo.config.patch(fake_tensor_cache_enabled=False):
        yield


def export_graph(
    module: nn.Module,
    plan: ExportPlan,
    path: Path,
    opset: int = MIN_OPSET,
    external: bool | None = None,
) -> Path:
    """Trace ``module`` (a plan's ``Forward``) at ``plan.sizes`` and write the graph to ``path``.

    ``external``: weights beside the graph; None decides by size (protobuf's 2 GB limit).
    """
    if opset < MIN_OPSET:
        raise UsageError(f"opset {opset} is older than {MIN_OPSET}", hint=f"use --opset {MIN_OPSET} or newer")
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    x = example_inputs(plan.inputs, plan.sizes)
    args = tuple((v.to(dtype) if v.is_floating_point() else v).to(device) for v in x.values())
    if external is None:
        external = weight_bytes(module) > PROTOBUF_LIMIT
    try:
        with _quiet(), torch.no_grad(), _uncached_fake_dispatch():
            program = torch.onnx.export(
                module,
                args,
                dynamic_shapes=(dynamic_shapes(plan),),
                input_names=[s.name for s in plan.inputs],
                output_names=[o.name for o in plan.outputs],
                opset_version=opset,
                dynamo=True,
                optimize=False,
                verbose=False,
                report=False,
            )
    except Exception as e:  # the exporter raises many kinds; name the first line
        first = _summary(e)
        raise ConversionError(
            f"torch could not export the {plan.part}: {first[:300]}",
            hint="the model's code does not trace at these sizes; try other --height/--width/--frames",
        ) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        program.save(str(path), external_data=external)
    return path
