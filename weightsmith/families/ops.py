"""The per-tensor steps a conversion plan is made of.

A plan is a list of ops. Each op names the input tensors it consumes and the output tensors it
makes, can tell the outputs' shapes from the inputs' shapes without touching data (so writers
can lay out headers ahead), and turns input tensors into output tensors when the stream reaches
it. Every input key of a checkpoint must be consumed by exactly one op (a ``Drop`` counts), so
nothing is lost silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from weightsmith.errors import ConversionError

if TYPE_CHECKING:
    import torch

_BUG = "this is a bug in weightsmith's plan for this model; rerun with --debug and report it"


@dataclass(frozen=True)
class Spec:
    """Name, shape and dtype of a tensor that will exist. ``dtype`` may be a dtype's name
    (``TensorInfo.dtype_name``) where only shapes matter: planning from headers needs no torch."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | str

    @property
    def nbytes(self) -> int:
        import torch

        from weightsmith.io.base import torch_dtype

        dtype = torch_dtype(self.dtype) if isinstance(self.dtype, str) else self.dtype
        return math.prod(self.shape) * torch.empty((), dtype=dtype).element_size()


class Op:
    """Base of all plan steps. ``arrays``: ``apply`` takes numpy arrays as well as torch tensors
    (and gives the same bits), so a job can run the plan without torch (a GGUF quantize)."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    kind: str = "op"
    arrays: ClassVar[bool] = False

    def out_specs(self, ins: Sequence[Spec]) -> list[Spec]:
        raise NotImplementedError

    def apply(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class OneToOne(Op):
    """A step from one source tensor ``src`` to one output ``dst`` (what it does: the subclass)."""

    src: str
    dst: str

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.src,)

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.dst,)


@dataclass(frozen=True)
class Rename(OneToOne):
    """One tensor under a new name (the name may be unchanged)."""

    arrays: ClassVar[bool] = True

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "kept" if self.src == self.dst else "renamed"

    def out_specs(self, ins: Sequence[Spec]) -> list[Spec]:
        return [Spec(self.dst, ins[0].shape, ins[0].dtype)]

    def apply(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [tensors[0]]


@dataclass(frozen=True)
class Regroup(Op):
    """Cut each input into equal chunks along ``dim`` and build outputs from lists of chunks.

    Chunks are numbered across inputs in order: input 0's chunks first. This one op covers a
    qkv split (one input, three chunks, one chunk per output), a fuse (three inputs of one chunk
    each, all into one output) and CogVideoX's adaLN regrouping (12 chunks into two outputs of
    six). ``reshape`` optionally gives an output its final shape (a 1x1 conv <-> Linear).
    """

    srcs: tuple[str, ...]
    dsts: tuple[str, ...]
    chunks: tuple[int, ...]
    assign: tuple[tuple[int, ...], ...]
    dim: int = 0
    reshape: tuple[tuple[int, ...] | None, ...] | None = None
    label: str = ""
    arrays: ClassVar[bool] = True

    def __post_init__(self) -> None:
        what = f"regrouping {', '.join(self.srcs) or 'nothing'} into {', '.join(self.dsts) or 'nothing'}"
        if len(self.chunks) != len(self.srcs) or len(self.assign) != len(self.dsts):
            raise ConversionError(
                f"{what}: {len(self.chunks)} chunk counts for {len(self.srcs)} inputs and "
                f"{len(self.assign)} assignments for {len(self.dsts)} outputs do not match",
                hint=_BUG,
            )
        if any(n <= 0 for n in self.chunks) or any(not a for a in self.assign):
            raise ConversionError(
                f"{what}: every input must be cut into at least one part and every output get one",
                hint="the model's config gives a count of 0 (heads, layers?); check it",
            )
        total = sum(self.chunks)
        used = sorted(i for a in self.assign for i in a)
        if used != list(range(total)):
            raise ConversionError(
                f"{what}: every one of the {total} chunks must be used exactly once", hint=_BUG
            )

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.srcs

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.dsts

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.label:
            return self.label
        if len(self.srcs) == 1 and len(self.dsts) > 1:
            return "split"
        if len(self.srcs) > 1 and len(self.dsts) == 1:
            return "fused"
        return "regrouped"

    def _chunk_shapes(self, ins: Sequence[Spec]) -> list[tuple[int, ...]]:
        shapes = []
        for spec, n in zip(ins, self.chunks):
            if not -len(spec.shape) <= self.dim < len(spec.shape):
                raise ConversionError(
                    f"tensor {spec.name!r} of shape {list(spec.shape)} has no dimension {self.dim} to cut",
                    hint="the checkpoint does not have the shapes this family expects; check --family",
                )
            size = spec.shape[self.dim]
            if size % n:
                raise ConversionError(
                    f"tensor {spec.name!r} has {size} rows along dim {self.dim}, not divisible into {n} parts",
                    hint="the checkpoint does not have the shapes this family expects; check --family",
                )
            s = list(spec.shape)
            s[self.dim] = size // n
            shapes.extend([tuple(s)] * n)
        return shapes

    def out_specs(self, ins: Sequence[Spec]) -> list[Spec]:
        cs = self._chunk_shapes(ins)
        dtype = ins[0].dtype
        out = []
        for i, (name, idx) in enumerate(zip(self.dsts, self.assign)):
            s = list(cs[idx[0]])
            s[self.dim] = sum(cs[j][self.dim] for j in idx)
            shape = tuple(s)
            if self.reshape and self.reshape[i] is not None:
                shape = tuple(self.reshape[i])  # type: ignore[arg-type]
            out.append(Spec(name, shape, dtype))
        return out

    def apply(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        pieces: list[Any] = []
        for t, n in zip(tensors, self.chunks):
            pieces.extend(_split(t, n, self.dim))
        out = []
        for i, idx in enumerate(self.assign):
            t = pieces[idx[0]] if len(idx) == 1 else _cat([pieces[j] for j in idx], self.dim)
            if self.reshape and self.reshape[i] is not None:
                t = t.reshape(self.reshape[i])
            out.append(_contiguous(t))
        return out


def _numpy(t: Any) -> Any:
    """numpy when ``t`` is a numpy array (imported only then), else None: the plan ops' seam."""
    if type(t).__module__ != "numpy":
        return None
    import numpy

    return numpy


def _split(t: Any, n: int, dim: int) -> list[Any]:
    """``t`` cut into ``n`` equal parts along ``dim`` (views), for a tensor or an array."""
    np_ = _numpy(t)
    if np_ is None:
        import torch

        return list(torch.chunk(t, n, dim=dim))
    return np_.split(t, n, axis=dim)


def _cat(parts: list[Any], dim: int) -> Any:
    np_ = _numpy(parts[0])
    if np_ is None:
        import torch

        return torch.cat(parts, dim=dim)
    return np_.concatenate(parts, axis=dim)


def _contiguous(t: Any) -> Any:
    np_ = _numpy(t)
    return t.contiguous() if np_ is None else np_.ascontiguousarray(t)


def Split(src: str, dsts: Sequence[str], dim: int = 0) -> Regroup:  # noqa: N802 - reads like a class
    """One tensor cut into equal parts, one per output (qkv -> q, k, v)."""
    return Regroup((src,), tuple(dsts), (len(dsts),), tuple((i,) for i in range(len(dsts))), dim)


def Fuse(srcs: Sequence[str], dst: str, dim: int = 0) -> Regroup:  # noqa: N802
    """Equal-shaped tensors concatenated into one (q, k, v -> qkv)."""
    return Regroup(tuple(srcs), (dst,), (1,) * len(srcs), (tuple(range(len(srcs))),), dim)


@dataclass(frozen=True)
class Reshape(OneToOne):
    """One tensor renamed and reshaped (same number of elements)."""

    shape: tuple[int, ...]
    arrays: ClassVar[bool] = True

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "reshaped"

    def out_specs(self, ins: Sequence[Spec]) -> list[Spec]:
        if math.prod(ins[0].shape) != math.prod(self.shape) or any(d < 0 for d in self.shape):
            raise ConversionError(
                f"cannot reshape {self.src!r} from {list(ins[0].shape)} to {list(self.shape)}",
                hint="the checkpoint's shapes do not match this family's config; check --family and the model's config.json",
            )
        return [Spec(self.dst, tuple(self.shape), ins[0].dtype)]

    def apply(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [_contiguous(tensors[0].reshape(self.shape))]


@dataclass(frozen=True)
class Drop(Op):
    """An input deliberately left out of the output, with the reason shown in the summary."""

    arrays: ClassVar[bool] = True
    src: str
    reason: str = ""

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.src,)

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ()

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "dropped"

    def out_specs(self, ins: Sequence[Spec]) -> list[Spec]:
        return []

    def apply(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return []


@dataclass(frozen=True)
class Derive(Op):
    """An output the target layout needs but the source does not store (a fixed table, zeros).

    ``make`` builds it from nothing; it must be deterministic.
    """

    dst: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor] = field(compare=False)
    reason: str = ""

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ()

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.dst,)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "derived"

    def out_specs(self, ins: Sequence[Spec]) -> list[Spec]:
        return [Spec(self.dst, tuple(self.shape), self.dtype)]

    def apply(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        t = self.make()
        if tuple(t.shape) != tuple(self.shape):
            raise ConversionError(
                f"the derived tensor {self.dst!r} came out as {list(t.shape)}, not the {list(self.shape)} planned",
                hint=_BUG,
            )
        return [t.to(self.dtype).contiguous()]


@dataclass(frozen=True)
class Shift(OneToOne):
    """One tensor under a new name with a constant added to every element, in float32.

    llama.cpp's Gemma GGUFs store RMS-norm weights as ``1 + w`` (the norm multiplies by them as
    they are), transformers as ``w`` (it adds the one itself): the two directions are +1 and -1.
    """

    offset: float

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "shifted"

    def out_specs(self, ins: Sequence[Spec]) -> list[Spec]:
        import torch

        return [Spec(self.dst, ins[0].shape, torch.float32)]

    def apply(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        import torch  # on use: the plan vocabulary is imported torch-free (start-up)

        return [(tensors[0].to(torch.float32) + self.offset).contiguous()]


def run_in_memory(ops: Sequence[Op], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply a plan to a state dict held in memory (tests, small LoRA files)."""
    consumed: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    for op in ops:
        lacking = [k for k in op.inputs if k not in state]
        if lacking:
            raise ConversionError(
                f"the conversion needs {', '.join(map(repr, sorted(lacking)[:5]))}, which the tensors lack",
                hint="the file is missing tensors this model needs; check it is complete",
            )
        ins = [state[k] for k in op.inputs]
        consumed.update(op.inputs)
        made = op.apply(ins)
        if len(made) != len(op.outputs):
            raise ConversionError(
                f"a {op.kind} step made {len(made)} tensors for {len(op.outputs)} outputs "
                f"({', '.join(op.outputs) or 'none'})",
                hint=_BUG,
            )
        for name, t in zip(op.outputs, made):
            if name in out:
                raise ConversionError(
                    f"two tensors map to {name!r}",
                    hint="the file holds the same weight under two names; check it",
                )
            out[name] = t
    missing = set(state) - consumed
    if missing:
        raise ConversionError(
            f"tensors left unconverted: {', '.join(map(repr, sorted(missing)[:5]))}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            hint="the file holds tensors this model does not have; check it is the right kind of file",
        )
    return out
