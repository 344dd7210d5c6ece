"""Names and helpers the CogVideoX transformer and VAE modules share."""

from __future__ import annotations

from collections.abc import Mapping

from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.base import Component, Detection, PlanOptions
from weightsmith.io.base import TensorInfo

FAMILY = "cogvideox"
SAT = "sat"
DIFFUSERS = "diffusers"
PARAMS = ("weight", "bias")
SHOW = 5  # how many offending keys an error message names
NO_OPTIONS = PlanOptions()

# Keys a full SAT engine checkpoint (SATVideoDiffusionEngine) keeps beside the DiT: the T5 text
# encoder and the VAE (zai-org/CogVideo#633, #276). They belong to other components.
SAT_FOREIGN_PREFIXES = {
    "conditioner.": "T5 text-encoder weights of the SAT engine; the text encoder is converted separately",
    "first_stage_model.": "VAE weights of the SAT engine; convert the VAE component on its own",
}


def bad_keys(message: str, keys: list[str], hint: str) -> ConversionError:
    """A ConversionError naming the first few offending keys, so the user can find them."""
    shown = ", ".join(repr(k) for k in keys[:SHOW])
    more = f" (and {len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return ConversionError(f"{message}: {shown}{more}", hint=hint)


def check_target(comp: Component, detection: Detection, target_layout: str) -> None:
    """Refuse a plan for a layout or detection this component does not own (a usage mistake)."""
    if target_layout not in comp.layouts:
        raise UsageError(
            f"{comp.family} {comp.component} has no layout {target_layout!r}",
            hint=f"choose one of: {', '.join(comp.layouts)}",
        )
    if (detection.family, detection.component) != (comp.family, comp.component):
        raise UsageError(
            f"detection is {detection.family}/{detection.component}, not {comp.family}/{comp.component}",
            hint="plan with the component that detected the checkpoint",
        )
    if detection.layout not in comp.layouts:
        raise UsageError(f"{comp.family} {comp.component} has no layout {detection.layout!r}")


def local_keys(infos: Mapping[str, TensorInfo], prefix: str) -> tuple[dict[str, str], list[str]]:
    """Map of key-without-prefix -> full key, and the full keys outside the prefix."""
    local: dict[str, str] = {}
    outside: list[str] = []
    for k in infos:
        if k.startswith(prefix):
            local[k[len(prefix) :]] = k
        else:
            outside.append(k)
    return local, outside
