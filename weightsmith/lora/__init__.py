"""LoRA files: read any supported format, write another, or fuse LoRAs into a base while converting.

A LoRA is held as ``LoraModule`` entries named as modules of the family's Diffusers class
(``model.py``); ``read.py`` turns each file format into entries (module names from the families'
own key maps, ``names.py``), ``write.py`` turns entries into a format, ``fuse.py`` adds them to
base tensors as a conversion streams, ``convert.py`` and ``cli.py`` are the command.
"""

from weightsmith.lora.convert import convert_lora
from weightsmith.lora.fuse import FusedStream, fuse, fused_stream, parse_lora_option
from weightsmith.lora.model import Lora, LoraModule
from weightsmith.lora.read import FORMATS, LORA_WEIGHT_NAME, lora_from_state_dict, read_lora
from weightsmith.lora.write import original_state_dict, peft_state_dict, sat_state_dict, write_state

__all__ = [
    "FORMATS",
    "LORA_WEIGHT_NAME",
    "FusedStream",
    "Lora",
    "LoraModule",
    "convert_lora",
    "fuse",
    "fused_stream",
    "lora_from_state_dict",
    "original_state_dict",
    "parse_lora_option",
    "peft_state_dict",
    "read_lora",
    "sat_state_dict",
    "write_state",
]
