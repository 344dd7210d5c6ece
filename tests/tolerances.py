"""How closely two forward passes must agree when their weights are bit-identical.

Weights and bytes are compared bit for bit everywhere. Forward outputs are not: the same
weights in two model instances can take different BLAS paths (memory alignment, vector width,
blocking chosen per CPU), which reorders float sums. On an AVX-512 AMD EPYC, outputs of a model
loaded by diffusers' ``from_single_file`` differed from the source model's by 3e-8..5e-8 while
every weight was equal. The bound below is ~200x that noise and far below what a wrong weight
mapping does (a swapped, transposed or mis-scaled tensor moves outputs by 1e-2 or more).
"""

from __future__ import annotations

import torch

FORWARD_RTOL = 1e-5
FORWARD_ATOL = 1e-5


def assert_forward_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Forward outputs of models with bit-identical weights: equal within BLAS noise."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    torch.testing.assert_close(got, want, rtol=FORWARD_RTOL, atol=FORWARD_ATOL)
