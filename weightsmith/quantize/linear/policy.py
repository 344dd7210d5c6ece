"""Which tensors an INT8/FP8/INT4 run quantizes, by their Diffusers names.

Only Linear weights are ever quantized (2-D ``.weight`` of an ``nn.Linear`` in the family's
diffusers class: convolutions, norms, tables and biases stay as they are). Of those, the
family's ``Component.quant.keep`` keeps in high precision what hurts most to quantize and costs
little to keep (embeddings, modulation, the output head). Users add ``--keep GLOB`` and
``--keep-blocks first:N,last:M``; a Linear whose row does not split into whole groups of an int4
scheme, or into whole blocks of an fp4 scheme (nvfp4: 16, mxfp4: 32), is kept too (recorded
with the reason), never padded; only ComfyUI's nvfp4/mxfp8 layout pads (``padded``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from weightsmith.families.base import QuantSpec
from weightsmith.kernels.linear import LinearScheme
from weightsmith.quantize.keep import BlockStack, KeepBlocks


@dataclass(frozen=True)
class Decision:
    quantize: bool
    reason: str


class LinearPolicy:
    """Decides, per tensor, whether a scheme quantizes it and why (or why not)."""

    def __init__(
        self,
        spec: QuantSpec,
        scheme: LinearScheme,
        linear_weights: Iterable[str],
        all_names: Iterable[str],
        keep: Sequence[str] = (),
        keep_blocks: KeepBlocks = KeepBlocks(),
        padded: bool = False,
    ) -> None:
        """``padded``: the output layout pads rows to whole blocks (ComfyUI's nvfp4/mxfp8)."""
        self.spec, self.scheme, self.keep, self.padded = spec, scheme, tuple(keep), padded
        self.linear = set(linear_weights)
        self.blocks = BlockStack(spec.blocks)
        self.kept_blocks = self.blocks.kept(all_names, keep_blocks)

    def decide(self, name: str, shape: tuple[int, ...], *aliases: str) -> Decision:
        """``name`` is the Diffusers name; ``aliases`` other names --keep may use (the output's)."""
        if name not in self.linear:
            return Decision(False, "1-D" if len(shape) <= 1 else "not a Linear weight")
        reason = self.spec.keep_reason(name)
        if reason is not None:
            return Decision(False, reason)
        if any(fnmatch.fnmatchcase(n, g) for g in self.keep for n in (name, *aliases)):
            return Decision(False, "--keep")
        b = self.blocks.index(name)
        if b is not None and b in self.kept_blocks:
            return Decision(False, f"--keep-blocks (block {b})")
        if not self.padded and not self.scheme.fits(shape[-1]):
            g = self.scheme.group_size or 0
            if self.scheme.kind == "fp4":
                alt = " (nvfp4 would fit)" if shape[-1] % 16 == 0 else ""
                return Decision(
                    False, f"row {shape[-1]} not a multiple of {self.scheme.name} block {g}: kept{alt}"
                )
            alt = next((f"int4-g{s}" for s in (64, 32) if s < g and shape[-1] % s == 0), None)
            why = f"row {shape[-1]} not a multiple of group {g}: kept"
            return Decision(False, why + (f" ({alt} would fit)" if alt else ""))
        return Decision(True, "Linear weight")
