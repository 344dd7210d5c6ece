"""A streaming writer of torch's zip checkpoint format (what ``torch.save`` writes).

``torch.save`` needs every tensor in memory at once. This writer emits the same archive from
the tensors' specs first and their bytes as they arrive: the pickle (``data.pkl``) only refers
to storages by key, so it is written from names, shapes and dtypes alone, through torch's own
zip writer; then each tensor's bytes become the record ``data/<key>``, one at a time. The result
loads with ``torch.load(weights_only=True)`` exactly like a ``torch.save`` file. Used for SAT's
``mp_rank_00_model_states.pt``, so converting to SAT holds one tensor, not the model.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import pickle
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from weightsmith.io.stream_check import stream_mismatch

SpecT = tuple[str, tuple[int, ...], torch.dtype]


class _Storage:
    """Stands for a storage in the pickle: turned into torch's persistent id by the pickler."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Pickles as torch's own tensor reduction: _rebuild_tensor_v2(storage, 0, size, stride, ...)."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.append(acc)
            acc *= d
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, collections.OrderedDict()),
        )


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            storage_type = getattr(torch, torch.storage._dtype_to_storage_type_map()[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


class _Sink:
    """A file as torch's zip writer sees it. Through a path, torch reports a full disk as an
    opaque RuntimeError ("unexpected pos"); through this object the OSError itself is kept and
    raised instead, so the CLI can say what went wrong. It also makes torch name the archive's
    folder "archive" rather than after the (random) temporary file name: output is reproducible."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, b: Any) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


@contextlib.contextmanager
def _sink(path: str | Path) -> Iterator[_Sink]:
    """An open ``_Sink`` on ``path``; an OSError torch hid behind a RuntimeError is raised as itself."""
    with open(path, "wb") as f:
        sink = _Sink(f)
        try:
            yield sink
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def save_to_file(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, with a failed write raised as the OSError it is."""
    with _sink(path) as sink:
        torch.save(obj, sink)  # type: ignore[arg-type]


def supports(specs: Sequence[SpecT]) -> bool:
    """Whether every dtype has a typed storage class (float8 types do not)."""
    known = torch.storage._dtype_to_storage_type_map()
    return all(dtype in known for _, _, dtype in specs)


def write_torch_zip(
    path: str | Path,
    specs: Sequence[SpecT],
    tensors: Iterable[tuple[str, torch.Tensor]],
    wrap: str | None = None,
    side: Mapping[str, Any] | None = None,
) -> None:
    """Write ``{wrap: {name: tensor}, **side}`` (or the flat dict) in torch's format, streaming."""
    storages: list[tuple[str, _Storage]] = []
    state: dict[str, _Tensor] = {}
    for i, (name, shape, dtype) in enumerate(specs):
        st = _Storage(str(i), dtype, math.prod(shape))
        storages.append((name, st))
        state[name] = _Tensor(st, tuple(shape))
    obj: Any = {wrap: state, **dict(side or {})} if wrap else state
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    it = iter(tensors)
    with _sink(path) as sink, torch.serialization._open_zipfile_writer(sink) as zf:
        zf.write_record("data.pkl", data, len(data))
        zf.write_record(".format_version", "1", len("1"))
        align = str(torch.serialization._get_storage_alignment())
        zf.write_record(".storage_alignment", align, len(align))
        zf.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        for name, st in storages:
            try:
                got, t = next(it)
            except StopIteration:
                raise stream_mismatch("nothing (it ended early)", repr(name)) from None
            if got != name or t.dtype != st.dtype or t.numel() != st.numel:
                raise stream_mismatch(
                    f"{got!r} ({t.numel()} {t.dtype} values)", f"{name!r} ({st.numel} {st.dtype} values)"
                )
            t = t.detach().cpu().contiguous()
            zf.write_record(f"data/{st.key}", t.untyped_storage(), t.numel() * t.element_size())
            del t
