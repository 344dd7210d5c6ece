"""Any artifact weightsmith reads or writes, back as a torch module of the family's diffusers class.

One ``build_model`` serves every kind: it plans the checkpoint into the Diffusers layout (the
same plan the converter runs), builds the class on the meta device and fills it. What stays
quantized is the business of a weights strategy picked by what the reader opened:

* a plain checkpoint (any container or layout): every tensor as stored (``PlainWeights``);
* a GGUF file: quantized Linear weights stay as ggml blocks (``quantize.gguf.loader.GGUFWeights``);
* a compressed-tensors folder or ComfyUI comfy_quant / scaled-fp8 file (opened dequantizing by ``io/quantized.py``):
  quantized Linear weights stay in their stored numbers, run by the reference path or torchao
  (``quantize.linear.runtime.LinearWeights``).

The verifier compares artifacts only through ``load_model``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import init_empty_weights
from torch import nn

from weightsmith.convert.config import output_config
from weightsmith.convert.engine import make_plan, resolve_detection, stream
from weightsmith.errors import ConversionError, UsageError
from weightsmith.families import get_component
from weightsmith.families.ops import Op
from weightsmith.io import Checkpoint, open_checkpoint, open_single
from weightsmith.io.gguf_io import GGUFCheckpoint
from weightsmith.io.quantized import DequantizingView
from weightsmith.quantize.gguf.loader import GGUFWeights
from weightsmith.quantize.linear.runtime import LinearWeights


class Weights(Protocol):
    """Which of a checkpoint's tensors stay quantized in the model, and how (see the module doc)."""

    label: str  # how errors name the checkpoint's tensors
    hint: str

    def take(self, op: Op) -> dict[str, Any] | None:
        """The op's outputs, kept in stored form (name -> payload); None: read them as plain tensors."""

    def module(
        self, name: str, mod: nn.Module, held: Any, floats: dict[str, torch.Tensor]
    ) -> nn.Module | None:
        """The layer that replaces ``mod`` for kept weight ``name``; None: it is dequantized instead."""

    def dequantize(self, name: str, held: Any, model: nn.Module) -> torch.Tensor: ...

    def cast(self, v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """A plain tensor as it is loaded into the model's ``ref`` slot."""


class PlainWeights:
    """Every tensor as stored; ``dtype`` casts the floating-point ones."""

    label = "weights"
    hint = "check that the checkpoint and its config belong together"

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype

    def take(self, op: Op) -> dict[str, Any] | None:
        return None

    def module(
        self, name: str, mod: nn.Module, held: Any, floats: dict[str, torch.Tensor]
    ) -> nn.Module | None:
        return None

    def dequantize(self, name: str, held: Any, model: nn.Module) -> torch.Tensor:
        return held

    def cast(self, v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        # Otherwise the stored precision is kept (the model was built in float32 on meta).
        return v.to(self.dtype) if self.dtype is not None and v.is_floating_point() else v


def weights_for(ck: Checkpoint, device: torch.device, dtype: torch.dtype | None) -> Weights:
    """The strategy for what the reader opened (GGUF, a dequantizing view, or plain)."""
    if isinstance(ck, GGUFCheckpoint):
        return GGUFWeights(ck, dtype or torch.float32)
    if isinstance(ck, DequantizingView):
        return LinearWeights(ck, device, dtype)
    return PlainWeights(dtype)


def build_model(
    ck: Checkpoint,
    weights: Weights,
    *,
    family: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The family's diffusers model filled with ``ck``'s tensors (closes ``ck``)."""
    try:
        det = resolve_detection(ck, family)
        plan = make_plan(ck, "diffusers", detection=det)
        cfg = {k: v for k, v in output_config(plan).items() if not k.startswith("_")}
        comp = get_component(det.family, det.component)
        # Parameters on meta (nothing allocated); buffers such as RoPE tables are built for real.
        with init_empty_weights(include_buffers=False):
            model = comp.instantiate(det.variant, cfg)
        held: dict[str, Any] = {}
        ops, specs, at = [], [], 0
        for op in plan.ops:
            mine = plan.specs[at : at + len(op.outputs)]
            at += len(op.outputs)
            kept = weights.take(op) if op.outputs else None
            if kept is None:
                ops.append(op)
                specs.extend(mine)
            else:
                held.update(kept)
        floats = dict(stream(replace(plan, ops=ops, specs=specs)))
    finally:
        ck.close()
    modules = dict(model.named_modules())
    for name, payload in held.items():
        mod_name = name.rpartition(".")[0]
        new = weights.module(name, modules.get(mod_name), payload, floats)  # type: ignore[arg-type]
        if new is None:
            floats[name] = weights.dequantize(name, payload, model)
            continue
        parent, _, child = mod_name.rpartition(".")
        setattr(modules[parent] if parent else model, child, new)
    expected = comp.checkpoint_state(model, keep_vars=True)
    missing = [k for k, v in expected.items() if k not in floats and v.device.type == "meta"]
    unexpected = [k for k in floats if k not in expected]
    if missing or unexpected:
        raise ConversionError(
            f"{weights.label} do not fit {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}",
            hint=weights.hint,
        )
    state = {k: weights.cast(v, expected[k]) for k, v in floats.items()}
    model.load_state_dict(state, strict=False, assign=True)
    return comp.finish(model).to(device).eval()


def load_model(
    path: str | Path,
    *,
    component: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: dict[str, Any] | None = None,
    family: str | None = None,
) -> nn.Module:
    """The diffusers module for a checkpoint of any container, layout or quantization.

    ``dtype`` casts plain floating-point weights (quantized ones keep their storage and compute
    in it); ``config`` supplies a Diffusers config where the checkpoint has none.
    """
    ck = open_single(path, component)
    if config is not None:
        ck.config = dict(config)
    return build_model(ck, weights_for(ck, torch.device(device), dtype), family=family, device=device)


def load_gguf_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype = torch.float32,
    config: dict[str, Any] | None = None,
    family: str | None = None,
) -> nn.Module:
    """The family's diffusers model with this GGUF's weights (quantized Linear layers kept quantized)."""
    ck = open_checkpoint(path)
    if not isinstance(ck, GGUFCheckpoint):
        ck.close()
        raise UsageError(f"{path} is not a GGUF file", hint="load it with weightsmith.load.load_model")
    if config is not None:
        ck.config = dict(config)
    return build_model(ck, GGUFWeights(ck, compute_dtype), family=family, device=device)


def load_quantized(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: dict[str, Any] | None = None,
    family: str | None = None,
    backend: str = "auto",
    activations: str | None = None,
) -> nn.Module:
    """The family's diffusers model with this INT8/FP8/INT4 artifact's quantized Linear layers kept
    quantized (see ``LinearWeights`` for ``dtype``, ``activations`` and ``backend``)."""
    dev = torch.device(device)
    ck = open_single(path)
    if not isinstance(ck, DequantizingView):
        ck.close()
        raise UsageError(
            f"{path} is not a compressed-tensors folder or a ComfyUI quantized (comfy_quant / scaled fp8) file",
            hint="load it with weightsmith.load.load_model",
        )
    if config is not None:
        ck.config = dict(config)
    try:
        weights = LinearWeights(ck, dev, dtype, backend, activations)
    except BaseException:
        ck.close()
        raise
    return build_model(ck, weights, family=family, device=dev)
