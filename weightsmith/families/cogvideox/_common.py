"""Names and helpers the CogVideoX transformer and VAE modules share."""

from __future__ import annotations

from collections.abc import Mapping

from weightsmith.io.base import TensorInfo

FAMILY = "cogvideox"
SAT = "sat"
DIFFUSERS = "diffusers"
COMFY = "comfy"  # ComfyUI's native CogVideoX module names (comfy_keys)
PARAMS = ("weight", "bias")

# Keys a full SAT engine checkpoint (SATVideoDiffusionEngine) keeps beside the DiT: the T5 text
# encoder and the VAE (zai-org/CogVideo#633, #276). They belong to other components.
SAT_FOREIGN_PREFIXES = {
    "conditioner.": "T5 text-encoder weights of the SAT engine; the text encoder is converted separately",
    "first_stage_model.": "VAE weights of the SAT engine; convert the VAE component on its own",
}


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
