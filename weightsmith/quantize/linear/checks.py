"""Checks of a Linear quantize run's options against its format, made before any tensor is read,
and the per-layer decisions of a mixed assignment (``--scheme auto:compressed-tensors``)."""

from __future__ import annotations

from collections.abc import Mapping

from weightsmith.convert.engine import Plan
from weightsmith.errors import UsageError
from weightsmith.kernels.linear import LinearScheme, get_linear_scheme
from weightsmith.quantize.linear.calibrated import CALIBRATED_ACTIVATIONS
from weightsmith.quantize.linear.policy import Decision
from weightsmith.quantize.options import LinearOptions


def check_calibration(calibrated: bool, activations: str | None, fmt: str) -> None:
    """Calibrated ranges become ComfyUI ``input_scale``s or nvfp4 W4A4's input global scales;
    elsewhere nothing would use them, so the generations are not run for nothing."""
    if calibrated and fmt != "comfy" and activations not in CALIBRATED_ACTIVATIONS:
        raise UsageError(
            f"--calibrate sets static activation scales, which {fmt} files of this scheme do not hold",
            hint="use it with --format comfy (input_scale) or --scheme nvfp4 --activations nvfp4, or drop it",
        )


def check_comfy_options(lopts: LinearOptions, fmt: str) -> None:
    """Full-precision picks are a ComfyUI-file option (``full_precision_matrix_mult``)."""
    if fmt == "comfy":
        return
    if lopts.sensitivity is not None or lopts.fp_layers is not None:
        raise UsageError(
            f"--sensitivity and --fp-layers pick ComfyUI's full-precision matmuls; {fmt} has none",
            hint="use --format comfy, or drop them",
        )


def per_layer_schemes(
    schemes: Mapping[str, str] | None, fmt: str, activations: str | None
) -> dict[str, LinearScheme] | None:
    """The per-layer schemes, checked: compressed-tensors, weight-only, each one it can hold."""
    if schemes is None:
        return None
    if fmt != "compressed-tensors" or activations:
        raise UsageError(
            "per-layer schemes are written as compressed-tensors folders, weight-only",
            hint="drop --activations and give DST without .safetensors",
        )
    out = {name: get_linear_scheme(s) for name, s in schemes.items()}
    for name, ls in out.items():
        if "compressed-tensors" not in ls.formats:
            raise UsageError(
                f"{name}: --scheme {ls.name} cannot be written as compressed-tensors",
                hint="choose int8, fp8, int4 (g32/g64), nvfp4 or mxfp4 per layer",
            )
    return out


def layer_decision(d: Decision, name: str, plan: Plan, per_layer: Mapping[str, LinearScheme]) -> Decision:
    """A tensor's decision under a per-layer assignment: the family's and the user's keeps stand;
    a Linear the assignment names is quantized with its scheme (which must fit its row); the
    other Linears are kept."""
    if not d.quantize and not d.reason.startswith("row "):
        return d
    if name not in per_layer:
        return Decision(False, "per-layer: kept") if d.quantize or d.reason.startswith("row ") else d
    row = next(s.shape[-1] for s in plan.specs if s.name == name)
    if not per_layer[name].fits(row):
        raise UsageError(
            f"{name}: {per_layer[name].name} does not fit its rows of {row}",
            hint="choose a scheme whose group divides the row",
        )
    return Decision(True, "per-layer")
