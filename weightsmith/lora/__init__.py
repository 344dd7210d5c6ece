"""LoRA files: read any supported format, write another, or fuse LoRAs into a base while converting.

A LoRA is held as ``LoraModule`` entries named as modules of the family's Diffusers class
(``model.py``); ``read.py`` (with ``keys.py``, ``alphas.py``, ``partitioned.py``) turns each file
format into entries, ``write.py`` turns entries into a format, ``fuse.py`` adds them to base
tensors as a conversion streams, ``convert.py`` and ``cli.py`` are the command. Which family a
name belongs to, and which formats exist, is asked of the families' LoRA adapters (``names.py``).
"""

from __future__ import annotations

from weightsmith._lazy import lazy_getattr

# Where each public name lives. Imported on first use (PEP 562): the command line builds its
# `lora` group from ``lora.cli`` and ``lora.names`` alone, without the torch-using readers.
_WHERE = {
    "convert_lora": "convert",
    "FusedStream": "fuse",
    "fuse": "fuse",
    "fused_stream": "fuse",
    "parse_lora_option": "options",
    "Lora": "model",
    "LoraModule": "model",
    "formats": "names",
    "targets": "names",
    "LORA_WEIGHT_NAME": "read",
    "lora_from_state_dict": "read",
    "read_lora": "read",
    "peft_state_dict": "write",
    "target_state_dict": "write",
    "write_state": "write",
}

__all__ = [
    "LORA_WEIGHT_NAME",
    "FusedStream",
    "Lora",
    "LoraModule",
    "convert_lora",
    "formats",
    "fuse",
    "fused_stream",
    "lora_from_state_dict",
    "parse_lora_option",
    "peft_state_dict",
    "read_lora",
    "target_state_dict",
    "targets",
    "write_state",
]


__getattr__ = lazy_getattr(__name__, _WHERE)
