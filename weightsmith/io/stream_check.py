"""A tensor stream checked against the specs a writer laid its header out from.

Every writer (safetensors, torch zip, GGUF) writes its header before the data, so a source
whose tensors contradict its own header must end in one error naming the tensor, not in a
corrupt file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from weightsmith.errors import ConversionError

if TYPE_CHECKING:
    import torch

SpecT = tuple[str, tuple[int, ...], "torch.dtype"]


def describe(name: str, shape: Sequence[int], dtype: torch.dtype) -> str:
    """A tensor as the error messages name it: ``'w' [2, 3] float16``."""
    return f"{name!r} {list(shape)} {str(dtype).removeprefix('torch.')}"


def stream_mismatch(got: str, expected: str) -> ConversionError:
    """The error for a tensor stream out of step with the specs a writer laid its header out from.

    A source whose data contradicts its own header can cause it, as can a bug; either way the
    output is not written."""
    return ConversionError(
        f"the tensor stream gave {got} where {expected} was expected; nothing was written",
        hint="the source's tensors do not match what its header declares; if the file is intact, "
        "rerun with --debug and report it",
    )


def checked_stream(
    specs: Sequence[SpecT], tensors: Iterable[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """``tensors``, checked against ``specs`` one by one (name, shape, dtype, count), so a stream
    out of step ends in a ConversionError naming the tensor instead of a corrupt file."""
    it = iter(tensors)
    for name, shape, dtype in specs:
        try:
            item = next(it)
        except StopIteration:
            raise stream_mismatch("nothing (it ended early)", describe(name, shape, dtype)) from None
        got, t = item
        if got != name or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise stream_mismatch(describe(got, tuple(t.shape), t.dtype), describe(name, shape, dtype))
        yield got, t
        del t, item
