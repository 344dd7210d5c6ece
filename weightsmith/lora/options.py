"""The ``--lora PATH[:SCALE]`` option's parsing: plain text, kept apart from the fusing (which
needs torch) so that building the command line imports nothing heavy."""

from __future__ import annotations

import math
from pathlib import Path

from weightsmith.errors import UsageError


def check_strength(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise UsageError(f"{where} is {value}, not a finite number", hint="give a strength such as 0.8 or -1")
    return value


def parse_lora_option(text: str, default_scale: float = 1.0) -> tuple[str, float]:
    """``PATH`` or ``PATH:SCALE`` -> (path, scale); a path that exists as written is never split.

    The last ``:`` splits when what follows is a number, so Windows drive letters and paths with
    colons still work. What follows that is neither a number nor part of a path (``f:abc``) is a
    scale that is not a number, said as such rather than as a file that does not exist.
    """
    check_strength(default_scale, "--lora-scale")
    if not text:
        raise UsageError("--lora needs a path", hint="e.g. --lora style.safetensors:0.8")
    if _exists(text):
        return text, default_scale
    path, sep, tail = text.rpartition(":")
    if not sep:
        return text, default_scale
    try:
        scale = float(tail)
    except ValueError:
        scale = None
    if scale is None:
        if "/" in tail or "\\" in tail or (tail and not _exists(path) and "." in tail.lstrip(".")):
            return text, default_scale  # a path with a colon in it (which does not exist: said later)
        raise UsageError(
            f"scale {tail!r} in --lora {text} is not a number",
            hint="write --lora PATH:SCALE with a number, e.g. style.safetensors:0.8",
        )
    if not path:
        raise UsageError(f"--lora {text} has a scale but no path", hint="e.g. --lora style.safetensors:0.8")
    return path, check_strength(scale, f"the scale in --lora {text}")


def _exists(text: str) -> bool:
    """Whether a path exists; names the OS cannot even look up (too long, NUL) do not."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False
