"""Static activation scales from calibration (``LinearOptions.activation_absmax``): checking what a
caller hands in, and nvfp4 W4A4's per-layer ``input_global_scale``.

The numbers come from ``weightsmith.verify.calibrate`` (the largest |input| each Linear saw in the
reference generations, keyed by Diffusers module name); quantize cannot run generations itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from weightsmith.errors import UsageError
from weightsmith.kernels.microscale import nvfp4_global_scale

# Activations whose scales are static, so they cannot be written without calibration.
CALIBRATED_ACTIVATIONS = ("nvfp4",)


def check_absmax(activations: str | None, absmax: Mapping[str, float] | None) -> dict[str, float] | None:
    """The calibration as a plain dict, refused when unusable: missing where static activation
    scales need it, or holding a value that is no finite, non-negative number."""
    if activations in CALIBRATED_ACTIVATIONS and absmax is None:
        raise UsageError(
            f"--activations {activations} needs calibrated activation ranges (its input global scales are static)",
            hint="add --calibrate (it runs a few reference generations), or drop --activations",
        )
    if absmax is None:
        return None
    out: dict[str, float] = {}
    for name, v in absmax.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        if not isinstance(name, str) or not ok:
            raise UsageError(
                f"activation range of {name!r} is {v!r}; calibration gives a finite number >= 0 per Linear",
                hint="calibrate again (quantize --calibrate), or check the model: its activations overflow",
            )
        out[name] = float(v)
    return out


def input_global_scale(absmax: Mapping[str, float], module: str) -> tuple[torch.Tensor, bool]:
    """nvfp4's ``input_global_scale`` of ``module`` (float32 [1], ``2688 / absmax``) and whether
    calibration saw the layer; unseen or all-zero input takes 1.0, compressed-tensors' own
    fallback for an uncalibrated layer."""
    seen = module in absmax
    amax = torch.tensor(absmax.get(module, 0.0), dtype=torch.float32)
    return nvfp4_global_scale(amax).reshape(1), seen and absmax[module] > 0


def unseen_note(unseen: list[str]) -> str:
    shown = ", ".join(unseen[:3]) + (f" and {len(unseen) - 3} more" if len(unseen) > 3 else "")
    return (
        f"{len(unseen)} quantized Linear(s) saw no input in calibration ({shown}): "
        "input_global_scale 1.0 (compressed-tensors' fallback)"
    )
