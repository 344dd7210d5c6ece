"""LoRA files: read any supported format, write another, or fuse LoRAs into a base while converting.

A LoRA is held as ``LoraModule`` entries named as modules of the family's Diffusers class
(``model.py``); ``read.py`` (with ``keys.py``, ``alphas.py``, ``partitioned.py``) turns each file
format into entries, ``write.py`` turns entries into a format, ``fuse.py`` adds them to base
tensors as a conversion streams, ``convert.py`` and ``cli.py`` are the command. Which family a
name belongs to, and which formats exist, is asked of the families' LoRA adapters (``names.py``).
"""

from weightsmith.lora.convert import convert_lora
from weightsmith.lora.fuse import FusedStream, fuse, fused_stream, parse_lora_option
from weightsmith.lora.model import Lora, LoraModule
from weightsmith.lora.names import formats, targets
from weightsmith.lora.read import LORA_WEIGHT_NAME, lora_from_state_dict, read_lora
from weightsmith.lora.write import peft_state_dict, target_state_dict, write_state

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
