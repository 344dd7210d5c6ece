"""Run a GGUF file in its family's diffusers class, dequantizing on the fly.

Quantized Linear weights stay in their ggml blocks (uint8) inside ``GGMLLinear`` modules and are
dequantized with weightsmith's torch kernels at each forward, on the module's device; everything
else is loaded as plain tensors (``weightsmith.load`` builds the model; ``GGUFWeights`` tells it
which weights stay quantized). This serves families diffusers cannot load from GGUF and is the
reference the verifier compares diffusers' own GGUF loader against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weightsmith.errors import ConversionError
from weightsmith.families.ops import Op, Regroup, Rename, Spec
from weightsmith.io.gguf_io import GGUFCheckpoint
from weightsmith.kernels.ggml import dequantize


class GGMLLinear(nn.Module):
    """A Linear layer whose weight is stored as ggml blocks and dequantized per forward."""

    def __init__(
        self, in_features: int, out_features: int, qtype: str, data: torch.Tensor, bias: torch.Tensor | None
    ):
        super().__init__()
        self.in_features, self.out_features, self.qtype = in_features, out_features, qtype
        self.register_buffer("qweight", data)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.compute_dtype: torch.dtype | None = None

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.qtype, (self.out_features, self.in_features))

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the compute dtype. Model code reads it: transformers' T5 FFN
        casts its input to ``wo.weight.dtype`` every forward (one more dequantization there)."""
        return self.dequantized_weight().to(self.compute_dtype or torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or x.dtype
        w = self.dequantized_weight().to(dtype)
        b = self.bias.to(dtype) if self.bias is not None else None
        return F.linear(x.to(dtype), w, b).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"


def _raw_tensor(ck: GGUFCheckpoint, name: str) -> tuple[torch.Tensor, str]:
    """(uint8 rows, qtype) of a quantized tensor."""
    info = ck.info(name)
    # Decode it once here: GGUFCheckpoint.get refuses blocks with NaN or infinite scales, naming
    # the tensor, where a forward would only turn them into NaN outputs.
    ck.get(name)
    qtype, arr = ck.raw(name)
    rows = info.shape[0] if info.shape else 1
    return torch.from_numpy(arr.copy()).reshape(rows, -1), qtype


class GGUFWeights:
    """How ``build_model`` loads a GGUF file: quantized tensors a plan renames (or regroups along
    rows) stay as ggml blocks, in ``GGMLLinear`` layers; plain tensors load as values, cast to
    the model's own dtype. ``compute_dtype``: what quantized layers compute in."""

    label = "GGUF tensors"
    hint = "check that the GGUF file and its config belong together"

    def __init__(self, ck: GGUFCheckpoint, compute_dtype: torch.dtype = torch.float32) -> None:
        self.ck, self.compute_dtype = ck, compute_dtype

    def take(self, op: Op) -> dict[str, tuple[torch.Tensor, str]] | None:
        if not any(self.ck.info(k).quantized for k in op.inputs):
            return None
        raws = [
            _raw_tensor(self.ck, k) if self.ck.info(k).quantized else (self.ck.get(k), None)
            for k in op.inputs
        ]
        qtypes = {q for _, q in raws}
        if len(qtypes) != 1 or not (
            isinstance(op, Rename) or (isinstance(op, Regroup) and op.dim == 0 and not op.reshape)
        ):
            raise ConversionError(
                f"cannot regroup quantized tensors {list(op.inputs)} of mixed types without dequantizing",
                hint="re-quantize the model with weightsmith, which writes such tensors in one type",
            )
        qtype = next(iter(qtypes))
        outs = op.apply([t for t, _ in raws])
        specs = op.out_specs([Spec(k, self.ck.info(k).shape, torch.float32) for k in op.inputs])
        return {spec.name: (t.contiguous(), qtype) for spec, t in zip(specs, outs)}  # type: ignore[misc]

    def module(
        self, name: str, mod: nn.Module, held: tuple[torch.Tensor, str], floats: dict[str, torch.Tensor]
    ) -> nn.Module | None:
        """The ``GGMLLinear`` that replaces Linear ``mod`` (its bias taken from ``floats``), or None."""
        if not (name.endswith(".weight") and isinstance(mod, nn.Linear)):
            return None
        data, qtype = held
        bias = floats.pop(name.removesuffix(".weight") + ".bias", None)
        new = GGMLLinear(mod.in_features, mod.out_features, qtype, data, bias)
        new.compute_dtype = self.compute_dtype
        return new

    def dequantize(self, name: str, held: tuple[torch.Tensor, str], model: nn.Module) -> torch.Tensor:
        """A quantized tensor outside a Linear layer: dequantized once at load."""
        target = dict(model.named_parameters()).get(name)
        if target is None:
            raise ConversionError(
                f"GGUF tensor {name!r} has no place in {type(model).__name__}",
                hint="check that the GGUF file and its config belong together",
            )
        data, qtype = held
        return dequantize(data, qtype, tuple(target.shape))

    def cast(self, v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return v.to(ref.dtype) if ref.is_floating_point() else v
