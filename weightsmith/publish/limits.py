"""The Hub's per-file limits (hub-docs storage-limits: under 200 GB recommended, 500 GB hard).

A file over the hard limit is refused, never split: ComfyUI-GGUF does not read split GGUFs, and
a split safetensors file is not what single-file loaders expect. Older cards cite 50 GB, the
limit before the Hub moved to Xet storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from weightsmith.errors import InputError

GB = 1000**3
HARD_LIMIT = 500 * GB
RECOMMENDED = 200 * GB


def check_file_size(path: Path) -> int:
    """The file's size; refused (exit 2) over the hard limit. Only the size is asked (a sparse or
    huge file is never read)."""
    size = os.stat(path).st_size
    if size > HARD_LIMIT:
        raise InputError(
            f"{path} is {size / GB:.1f} GB; the Hub refuses files over {HARD_LIMIT // GB} GB and "
            "split GGUFs are not read by ComfyUI-GGUF, so it is not split",
            hint="quantize to a smaller type (e.g. Q8_0 -> Q6_K) or publish that model's experts separately",
        )
    return size


def size_warnings(sizes: dict[str, int]) -> list[str]:
    """Lines for files above the Hub's recommended size."""
    return [
        f"{name} is {n / GB:.1f} GB, above the {RECOMMENDED // GB} GB the Hub recommends per file; "
        "it uploads, but downloads and resumes of such files are slow"
        for name, n in sizes.items()
        if n > RECOMMENDED
    ]
