"""Which tensors an INT8/FP8/INT4 run quantizes, by their Diffusers names.

Only Linear weights are ever quantized (2-D ``.weight`` of an ``nn.Linear`` in the family's
diffusers class: Sana's convolutions, norms, tables and biases stay as they are). Of those, each
family keeps in high precision what hurts most to quantize and costs little to keep: the patch,
time, text and image embeddings, the modulation (adaLN) layers and tables, and the output head.
Users add ``--keep GLOB`` and ``--keep-blocks first:N,last:M``; a Linear whose row does not split
into whole groups of an int4 scheme is kept too (recorded with the reason), never padded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from weightsmith.errors import UsageError
from weightsmith.quantize.linear_schemes import LinearScheme

# (glob on the Diffusers tensor name, reason) per family.
FAMILY_KEEP: dict[str, tuple[tuple[str, str], ...]] = {
    "wan": (
        ("patch_embedding.*", "patch embedding"),
        ("vace_patch_embedding.*", "patch embedding"),
        ("condition_embedder.time_*", "time embedding"),
        ("condition_embedder.text_embedder.*", "text embedding"),
        ("condition_embedder.image_embedder.*", "image embedding"),
        ("vace_blocks.*.proj_in.*", "VACE hint projection"),
        ("vace_blocks.*.proj_out.*", "VACE hint projection"),
        ("*scale_shift_table", "modulation table"),
        ("proj_out.*", "head"),
    ),
    "cogvideox": (
        ("patch_embed.*", "patch/text embedding"),
        ("time_embedding.*", "time embedding"),
        ("ofs_embedding.*", "ofs embedding"),
        ("*.norm1.linear.*", "modulation"),
        ("*.norm2.linear.*", "modulation"),
        ("norm_out.*", "modulation"),
        ("proj_out.*", "head"),
    ),
    "sana": (
        ("patch_embed.*", "patch embedding"),
        ("time_embed.*", "time embedding/modulation"),
        ("caption_projection.*", "text embedding"),
        ("*scale_shift_table", "modulation table"),
        ("proj_out.*", "head"),
    ),
}

# The main stack of transformer blocks (what --keep-blocks counts), by Diffusers name.
BLOCKS = re.compile(r"^(?:blocks|transformer_blocks)\.([0-9]{1,9})\.")


@dataclass(frozen=True)
class KeepBlocks:
    first: int = 0
    last: int = 0


def parse_keep_blocks(text: str | None) -> KeepBlocks:
    """``"first:2,last:2"`` (either part optional) -> KeepBlocks(2, 2); None -> keep none.

    An empty or malformed value is refused: a typo must not silently keep nothing."""
    if text is None:
        return KeepBlocks()
    if len(text) > 100:
        raise UsageError(
            f"--keep-blocks value of {len(text)} characters", hint="write it like first:2,last:2"
        )
    first = last = 0
    seen: set[str] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(first|last)\s*[:=]\s*([0-9]{1,6})\s*", part)
        if not m or m.group(1) in seen:
            raise UsageError(
                f"cannot read --keep-blocks {text!r}",
                hint="write it like first:2,last:2 (or first:1, last:3)",
            )
        seen.add(m.group(1))
        if m.group(1) == "first":
            first = int(m.group(2))
        else:
            last = int(m.group(2))
    return KeepBlocks(first, last)


def block_index(name: str) -> int | None:
    m = BLOCKS.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Decision:
    quantize: bool
    reason: str


class LinearPolicy:
    """Decides, per tensor, whether a scheme quantizes it and why (or why not)."""

    def __init__(
        self,
        family: str,
        scheme: LinearScheme,
        linear_weights: Iterable[str],
        all_names: Iterable[str],
        keep: Sequence[str] = (),
        keep_blocks: KeepBlocks = KeepBlocks(),
    ) -> None:
        self.family, self.scheme, self.keep = family, scheme, tuple(keep)
        self.rules = FAMILY_KEEP.get(family, ())
        self.linear = set(linear_weights)
        idx = sorted({i for n in all_names if (i := block_index(n)) is not None})
        n_blocks = idx[-1] + 1 if idx else 0
        for part, count in (("first", keep_blocks.first), ("last", keep_blocks.last)):
            if count > n_blocks:
                raise UsageError(
                    f"--keep-blocks {part}:{count}, but the model has {n_blocks} transformer blocks",
                    hint=f"give at most {part}:{n_blocks}",
                )
        self.kept_blocks = set(range(min(keep_blocks.first, n_blocks))) | set(
            range(max(n_blocks - keep_blocks.last, 0), n_blocks)
        )

    def decide(self, name: str, shape: tuple[int, ...], *aliases: str) -> Decision:
        """``name`` is the Diffusers name; ``aliases`` other names --keep may use (the output's)."""
        if name not in self.linear:
            return Decision(False, "1-D" if len(shape) <= 1 else "not a Linear weight")
        for pattern, reason in self.rules:
            if fnmatch.fnmatchcase(name, pattern):
                return Decision(False, reason)
        if any(fnmatch.fnmatchcase(n, g) for g in self.keep for n in (name, *aliases)):
            return Decision(False, "--keep")
        b = block_index(name)
        if b is not None and b in self.kept_blocks:
            return Decision(False, f"--keep-blocks (block {b})")
        if not self.scheme.fits(shape[-1]):
            g = self.scheme.group_size or 0
            alt = next((f"int4-g{s}" for s in (64, 32) if s < g and shape[-1] % s == 0), None)
            why = f"row {shape[-1]} not a multiple of group {g}: kept"
            return Decision(False, why + (f" ({alt} would fit)" if alt else ""))
        return Decision(True, "Linear weight")
