"""Streaming GGUF writer on top of gguf's ``GGUFWriter``.

Every tensor's name, shape and ggml type is registered first, so the header and tensor table are
written before any data; then tensors are written one at a time, in that order, as the stream
produces them. The file is written under a temporary name and renamed when complete. Tensors of
any rank are stored as gguf-py writes them (Wan's 5-D patch embedding included), which is what
ComfyUI-GGUF and diffusers read without any fix-up step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightsmith.io.atomic import atomic_file

if TYPE_CHECKING:
    import torch

# Tensor names longer than this break ComfyUI-GGUF's converter and most C readers.
MAX_NAME = 127


@dataclass(frozen=True)
class GGUFTensorSpec:
    """A tensor as it will be stored: torch-order shape and ggml type name (``"Q4_K"``, ``"F32"``)."""

    name: str
    shape: tuple[int, ...]
    qtype: str

    @property
    def nbytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.qtype]]
        n = int(np.prod(self.shape)) if self.shape else 1
        return n // block * size


def _add_kv(w: Any, key: str, value: Any) -> None:
    import gguf

    if isinstance(value, gguf.GGUFValue):  # typed already (a family's llama.cpp-style metadata)
        w.add_key_value(key, value.value, value.type, value.sub_type)
    elif isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if 0 <= value < 2**32 else w.add_int64(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        w.add_array(key, list(value))
    else:
        from weightsmith.errors import OutputError

        raise OutputError(
            f"cannot store GGUF metadata {key!r} of type {type(value).__name__}",
            hint="GGUF metadata holds numbers, strings, booleans and lists of them; report it",
        )
    del gguf


def tensor_bytes(t: torch.Tensor, qtype: str) -> np.ndarray:
    """The array GGUFWriter writes for ``t`` already encoded as ``qtype`` (floats or uint8 blocks)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if qtype == "BF16" and t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def write_gguf(
    dst: str | Path,
    arch: str,
    specs: Sequence[GGUFTensorSpec],
    tensors: Iterable[tuple[str, np.ndarray]],
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    patch: Callable[[], Mapping[str, str]] | None = None,
) -> Path:
    """Write a GGUF file: metadata and tensor table from ``specs``, then the stream's arrays in order.

    Each array must already be in its stored form: float32/float16 values for F32/F16, int16 bit
    patterns for BF16, uint8 blocks for quantized types. ``patch``: called once every tensor is
    written, it maps placeholder strings of the metadata to their real values of the same length
    (digests computed while the tensors were written); they are replaced in the header in place
    before the file is moved into its final name.
    """
    import gguf

    for s in specs:
        if len(s.name) > MAX_NAME:
            from weightsmith.errors import OutputError

            raise OutputError(
                f"tensor name {s.name[:60]!r}... is longer than {MAX_NAME} characters",
                hint="GGUF readers refuse longer names; shorten the model's tensor names, or choose a non-GGUF --scheme",
            )
    w = gguf.GGUFWriter(path=None, arch=arch)
    for key, value in (metadata or {}).items():
        _add_kv(w, key, value)
    for s in specs:
        if s.qtype not in gguf.GGMLQuantizationType.__members__:
            from weightsmith.errors import QuantizationError

            raise QuantizationError(
                f"tensor {s.name!r}: {s.qtype!r} is not a GGML tensor type",
                hint="choose a GGML type such as F16, Q8_0 or Q4_K",
            )
        qt = gguf.GGMLQuantizationType[s.qtype]
        w.add_tensor_info(s.name, list(s.shape), np.dtype(np.float32), s.nbytes, raw_dtype=qt)
    from weightsmith.io.stream_check import stream_mismatch

    it = iter(tensors)
    with atomic_file(dst, overwrite) as tmp:
        try:
            _open_output(w, tmp)
            w.write_header_to_file(path=tmp)
            kv_start = w.fout[0].tell()
            w.write_kv_data_to_file()
            kv_end = w.fout[0].tell()
            w.write_ti_data_to_file()
            for s in specs:
                try:
                    name, arr = next(it)
                except StopIteration:
                    raise stream_mismatch(
                        "nothing (it ended early)", f"{s.name!r} ({s.nbytes} bytes)"
                    ) from None
                if name != s.name or arr.nbytes != s.nbytes:
                    raise stream_mismatch(f"{name!r} ({arr.nbytes} bytes)", f"{s.name!r} ({s.nbytes} bytes)")
                w.write_tensor_data(arr)
                del arr
            if patch is not None:
                w.flush()
                _patch_header(tmp, w.fout[0], kv_start, kv_end, patch())
        finally:
            w.close()
    return Path(dst)


def _open_output(w: Any, tmp: Path) -> None:
    """Hand the writer its file opened read-write without truncation (it is new and empty).

    gguf opens it with ``open(path, "wb")``, and on ext4 a file once truncated to zero has all its
    dirty pages written back whenever a handle on it closes (the auto_da_alloc rule for
    replace-by-truncate; we replace by rename): that cost ~0.14 s of a 240 MB quantize, spent at
    the end. Where this gguf's writer does not keep its files as ``fout``/``state``/``path``, it
    opens the file itself as before."""
    import gguf.gguf_writer as gw

    states = getattr(gw, "WriterState", None)
    if states is None or getattr(w, "state", None) is not getattr(states, "NO_FILE", None):
        return
    w.path = Path(tmp)
    w.fout = [open(tmp, "r+b")]  # noqa: SIM115 (closed by the writer's close())
    w.state = states.EMPTY


def _patch_header(path: Path, f: Any, start: int, end: int, values: Mapping[str, str]) -> None:
    """Replace each placeholder (found exactly once in the key/value bytes ``[start, end)`` of the
    file at ``path``, open for writing as ``f``) by its value, in place: the file keeps its length
    and every offset."""
    try:  # through our own read-write handle (``_open_output``): no second open of the file
        kv = os.pread(f.fileno(), end - start, start)
    except OSError:  # gguf opened it write-only itself
        with open(path, "rb") as r:
            r.seek(start)
            kv = r.read(end - start)
    for holder, value in values.items():
        old, new = holder.encode(), value.encode()
        at = kv.find(old)
        if len(old) != len(new) or at < 0 or kv.find(old, at + 1) >= 0:
            from weightsmith.errors import OutputError

            raise OutputError(
                "a late GGUF metadata value does not fit its placeholder",
                hint="this is a bug in weightsmith; rerun with --debug and report it",
            )
        os.pwrite(f.fileno(), new, start + at)
