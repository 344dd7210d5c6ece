"""Containers: read lazily, write streaming and atomically."""

from weightsmith.io.base import Checkpoint, PipelineCheckpoint, TensorInfo, infos_from_state_dict
from weightsmith.io.open import open_checkpoint, open_single

__all__ = [
    "Checkpoint",
    "PipelineCheckpoint",
    "TensorInfo",
    "infos_from_state_dict",
    "open_checkpoint",
    "open_single",
]
