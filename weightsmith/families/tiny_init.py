"""Seeded random weights for tiny test models: one walk over the tensors, one rule per tensor kind.

Diffusers leaves some parameters at exact zeros or ones (norm scales, zero-initialised
projections), which would let a conversion bug that swaps them go unnoticed, so every tiny model
is overwritten with seeded noise. The walk is always the same: tensors in name order, from one
``torch.Generator`` (persistent float buffers among them, after them, or left alone). What differs
between uses is only the scale of each kind of tensor, which a ``TinyInit`` states as data:

* ``FIXTURE`` (the default): ``0.02 * N(0, 1)`` everywhere; batch-norm statistics ``U(0.5, 1.5)``
  so they stay valid variances;
* ``SIGNAL``: weights that carry a signal through every layer as a trained network does
  (``N / sqrt(fan_in)``), for verification and quantization, where the blocks must matter.

A family may declare its own ``TinyInit`` (CogVideoX keeps norm scales near one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightsmith.errors import UsageError

if TYPE_CHECKING:
    import torch

_BUFFER_RULES = ("keep", "noise", "positive")


@dataclass(frozen=True)
class TinyInit:
    """How large the noise of each kind of tensor is.

    ``matrix``: std of tensors with two or more dims (None: ``1 / sqrt(fan_in)``); ``bias``: std
    of tensors named ``*bias``; other vectors (norm scales) get ``scale_center + scale_std * N``.
    ``buffers``: what persistent float buffers get: "keep" (their built values), "noise" (the
    same rules as parameters, drawn in the same name-ordered walk) or "positive" (``U(0.5, 1.5)``,
    drawn after the parameters). ``noise_dtype``: of the drawn noise.
    """

    matrix: float | None = 0.02
    bias: float = 0.02
    scale_center: float = 0.0
    scale_std: float = 0.02
    buffers: str = "positive"
    noise_dtype: str = "float32"  # torch dtype by name: declaring an init needs no torch

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.noise_dtype)

    def __post_init__(self) -> None:
        if self.buffers not in _BUFFER_RULES:
            raise UsageError(
                f"TinyInit.buffers must be one of {_BUFFER_RULES}, not {self.buffers!r}",
                hint="keep: built values; noise: like parameters; positive: U(0.5, 1.5)",
            )

    def draw(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        """Noise for one tensor, in ``self.dtype``."""
        import torch

        noise = torch.randn(shape, generator=gen, dtype=self.dtype)
        if len(shape) >= 2:
            if self.matrix is None:
                return noise / shape[1:].numel() ** 0.5
            return noise * self.matrix
        if name.endswith("bias"):
            return noise * self.bias
        return self.scale_center + noise * self.scale_std


FIXTURE = TinyInit()
SIGNAL = TinyInit(matrix=None, bias=0.01, scale_center=1.0, scale_std=0.05, buffers="keep")


def randomize_(model: torch.nn.Module, seed: int, init: TinyInit = FIXTURE) -> torch.nn.Module:
    """Overwrite ``model``'s parameters (and persistent float buffers, per ``init``) in place."""
    import torch

    with torch.no_grad():
        return _randomize(model, seed, init)


def _randomize(model: torch.nn.Module, seed: int, init: TinyInit) -> torch.nn.Module:
    import torch

    gen = torch.Generator().manual_seed(seed)
    persistent = model.state_dict(keep_vars=True)
    buffers = {n: b for n, b in model.named_buffers() if n in persistent and b.is_floating_point()}
    tensors = dict(model.named_parameters())
    if init.buffers == "noise":  # one walk: buffers drawn like parameters, in name order among them
        tensors |= buffers
    for name, t in sorted(tensors.items()):
        t.copy_(init.draw(name, t.shape, gen).to(t.dtype))
    if init.buffers == "positive":
        for _, b in sorted(buffers.items()):
            b.copy_(torch.rand(b.shape, generator=gen, dtype=init.dtype).to(b.dtype) + 0.5)
    return model.eval()


def build_tiny(cls: type, kwargs: dict, seed: int, init: TinyInit = FIXTURE) -> torch.nn.Module:
    """``cls(**kwargs)`` with seeded weights, leaving the caller's global RNG untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**kwargs)
    return randomize_(model, seed, init)
