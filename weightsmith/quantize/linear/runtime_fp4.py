"""torchao for fp4 artifacts: where it can run them, and its NVFP4 tensor built from our stored numbers.

Only NVFP4 goes to torchao, and only on CUDA GPUs of compute capability 10.0 (Blackwell) or newer:
its ``NVFP4Tensor`` multiplies with an fp4 ``torch._scaled_mm`` there; elsewhere (CPU, older GPUs)
the reference ``QuantLinear`` dequantizes in torch. MXFP4A16 files always take the reference path:
torchao's ``MXTensor`` linear quantizes its input to MX too (weight-only is not supported), which
would compute something the file does not describe. Importing this module does not import torchao.
"""

from __future__ import annotations

import importlib.util

import torch

from weightsmith.errors import UsageError
from weightsmith.kernels.linear import LinearScheme, QuantizedWeight

_HINT = "re-export the artifact (quantize --scheme nvfp4 [--activations nvfp4 --calibrate])"

# torchao's NVFP4 matmul: fp4 tensor cores (sm100+) and both weight dimensions multiples of 16.
NVFP4_MIN_CAPABILITY = (10, 0)
NVFP4_DIM_MULTIPLE = 16
NVFP4_COMPUTE_DTYPES = (torch.bfloat16, torch.float32)


def fp4_torchao_unsupported(
    scheme: LinearScheme,
    device: torch.device,
    shape: tuple[int, int] | None = None,
    compute_dtype: torch.dtype = torch.bfloat16,
    capability: tuple[int, int] | None = None,
) -> str | None:
    """Why torchao cannot run this fp4 layer here (None when it can). ``capability`` stands in for
    the device's own (tests; None asks CUDA)."""
    if not scheme.nvfp4:
        return "mxfp4 runs on the reference path (torchao's MX linear also quantizes activations)"
    if device.type != "cuda":
        return (
            f"torchao's NVFP4 matmul needs a CUDA GPU of compute capability 10.0 or newer, not {device.type}"
        )
    cap = capability if capability is not None else torch.cuda.get_device_capability(device)
    if tuple(cap) < NVFP4_MIN_CAPABILITY:
        return (
            f"torchao's NVFP4 matmul needs compute capability 10.0 or newer (this GPU is {cap[0]}.{cap[1]})"
        )
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed"
    if not hasattr(torch, "float4_e2m1fn_x2"):
        return "this torch has no float4_e2m1fn_x2 (fp4 matmuls)"
    if shape is not None and any(d % NVFP4_DIM_MULTIPLE for d in shape):
        return f"torchao's NVFP4 matmul needs both weight dimensions multiples of 16, not {list(shape)}"
    if compute_dtype not in NVFP4_COMPUTE_DTYPES:
        return f"torchao's NVFP4 computes in bfloat16 or float32, not {compute_dtype}"
    return None


def nvfp4_torchao_weight(
    qw: QuantizedWeight, compute_dtype: torch.dtype, activations: str | None = None
) -> torch.Tensor:
    """torchao's ``NVFP4Tensor`` holding ``qw``'s packed codes and e4m3 block scales as stored.

    The nibble order is the same (even column low). compressed-tensors stores global scales
    inverted (``2688 / amax``); torchao takes ``amax / 2688``, so both are inverted here. With
    ``activations="nvfp4"`` torchao quantizes each input to NVFP4 under the calibrated scale."""
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, QuantizeTensorToNVFP4Kwargs

    if qw.global_scale is None:
        raise UsageError("nvfp4 weight without its weight_global_scale", hint=_HINT)
    per_tensor = (1.0 / qw.global_scale.to(torch.float32)).reshape(())
    act_scale, act_kwargs = None, None
    if activations == "nvfp4":
        if qw.input_global_scale is None:
            raise UsageError("nvfp4 activations without the layer's input_global_scale", hint=_HINT)
        act_scale = (1.0 / qw.input_global_scale.to(torch.float32)).reshape(())
        act_kwargs = QuantizeTensorToNVFP4Kwargs()
    return NVFP4Tensor(
        qw.data.contiguous(),
        qw.scale.contiguous(),
        16,
        compute_dtype,
        per_tensor_scale=per_tensor,
        act_per_tensor_scale=act_scale,
        is_swizzled_scales=False,
        act_quant_kwargs=act_kwargs,
    )
