"""Load a GGUF file into its family's diffusers class, dequantizing on the fly.

Quantized Linear weights stay in their ggml blocks (uint8) inside ``GGMLLinear`` modules and are
dequantized with weightsmith's torch kernels at each forward, on the module's device; everything
else is loaded as plain tensors. This serves CogVideoX (which diffusers cannot load from GGUF)
and is the reference the verifier compares diffusers' own GGUF loader against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weightsmith.convert.engine import make_plan, resolve_detection
from weightsmith.convert.ops import Regroup, Rename, Spec
from weightsmith.errors import ConversionError, UsageError
from weightsmith.io.gguf_io import GGUFCheckpoint


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
        from weightsmith.quantize.ggml import dequantize

        return dequantize(self.qweight, self.qtype, (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or x.dtype
        w = self.dequantized_weight().to(dtype)
        b = self.bias.to(dtype) if self.bias is not None else None
        return F.linear(x.to(dtype), w, b).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"


def _raw_tensor(ck: GGUFCheckpoint, name: str) -> tuple[torch.Tensor, str | None]:
    """(tensor, qtype): plain types as values, quantized ones as their uint8 rows."""
    info = ck.info(name)
    if not info.quantized:
        return ck.get(name), None
    # Decode it once here: GGUFCheckpoint.get refuses blocks with NaN or infinite scales, naming
    # the tensor, where a forward would only turn them into NaN outputs.
    ck.get(name)
    qtype, arr = ck.raw(name)
    rows = info.shape[0] if info.shape else 1
    return torch.from_numpy(arr.copy()).reshape(rows, -1), qtype


def load_gguf_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype = torch.float32,
    config: dict[str, Any] | None = None,
    family: str | None = None,
) -> nn.Module:
    """The family's diffusers model with this GGUF's weights (quantized Linear layers kept quantized)."""
    from weightsmith.convert.run import output_config
    from weightsmith.io import open_checkpoint

    ck = open_checkpoint(path)
    if not isinstance(ck, GGUFCheckpoint):
        raise UsageError(f"{path} is not a GGUF file")
    if config is not None:
        ck.config = dict(config)
    det = resolve_detection(ck, family)
    plan = make_plan(ck, "diffusers", detection=det)
    cfg = {k: v for k, v in output_config(plan).items() if not k.startswith("_")}
    from weightsmith.families import get_component

    cls = get_component(det.family, det.component).model_class(det.variant)
    from accelerate import init_empty_weights

    # Parameters on meta (nothing allocated); buffers such as RoPE tables are built for real.
    with init_empty_weights(include_buffers=False):
        model = cls(**cfg)
    floats: dict[str, torch.Tensor] = {}
    quantized: dict[str, tuple[torch.Tensor, str]] = {}
    for op in plan.ops:
        if not op.outputs:
            continue
        raws = [_raw_tensor(ck, k) for k in op.inputs]
        qtypes = {q for _, q in raws}
        if qtypes == {None}:
            for name, t in zip(op.outputs, op.apply([t for t, _ in raws])):
                floats[name] = t
            continue
        if len(qtypes) != 1 or not (
            isinstance(op, Rename) or (isinstance(op, Regroup) and op.dim == 0 and not op.reshape)
        ):
            raise ConversionError(
                f"cannot regroup quantized tensors {list(op.inputs)} of mixed types without dequantizing"
            )
        qtype = next(iter(qtypes))
        outs = op.apply([t for t, _ in raws])
        specs = op.out_specs([Spec(k, ck.info(k).shape, torch.float32) for k in op.inputs])
        for spec, t in zip(specs, outs):
            quantized[spec.name] = (t.contiguous(), qtype)  # type: ignore[assignment]
    ck.close()
    _install(model, floats, quantized, compute_dtype)
    return model.to(device).eval()


def _install(
    model: nn.Module,
    floats: dict[str, torch.Tensor],
    quantized: dict[str, tuple[torch.Tensor, str]],
    dtype: torch.dtype,
) -> None:
    from weightsmith.quantize.ggml import dequantize

    modules = dict(model.named_modules())
    for name, (data, qtype) in quantized.items():
        mod_name, _, leaf = name.rpartition(".")
        mod = modules.get(mod_name)
        if isinstance(mod, nn.Linear) and leaf == "weight":
            bias = floats.pop(f"{mod_name}.bias", None)
            new = GGMLLinear(mod.in_features, mod.out_features, qtype, data, bias)
            new.compute_dtype = dtype
            parent_name, _, child = mod_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, new)
        else:
            # A quantized tensor outside a Linear layer: dequantize it once at load.
            target = dict(model.named_parameters()).get(name)
            shape = tuple(target.shape) if target is not None else None
            if shape is None:
                raise ConversionError(f"GGUF tensor {name!r} has no place in {type(model).__name__}")
            floats[name] = dequantize(data, qtype, shape)
    expected = dict(model.state_dict(keep_vars=True))
    missing = [k for k, v in expected.items() if k not in floats and v.device.type == "meta"]
    unexpected = [k for k in floats if k not in expected]
    if missing or unexpected:
        raise ConversionError(
            f"GGUF tensors do not fit {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for k, v in floats.items():
        ref = expected[k]
        floats[k] = v.to(ref.dtype) if ref.is_floating_point() else v
    model.load_state_dict(floats, strict=False, assign=True)


def _register() -> None:
    from weightsmith.load import ArtifactLoader, register_loader

    def load(
        path: Path, *, device: Any, dtype: torch.dtype | None, config: Any, family: str | None
    ) -> nn.Module:
        return load_gguf_model(
            path, device=device, compute_dtype=dtype or torch.float32, config=config, family=family
        )

    register_loader(ArtifactLoader("gguf", lambda ck: isinstance(ck, GGUFCheckpoint), load))


_register()
