"""GGUF files, read through the ``gguf`` package's reader after a bounded check of the header.

``gguf.GGUFReader`` trusts the counts in a header: an absurd array length or tensor count makes
it loop for a very long time. ``scan_header`` walks the same structure first with every count
checked against the bytes that remain, so a hostile or truncated file is refused at once.
Shapes are reported in torch order (GGUF stores them reversed).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightsmith.errors import CorruptFileError, UnsupportedFormatError
from weightsmith.io.base import Checkpoint, TensorInfo

GGUF_MAGIC = b"GGUF"
# ggml's C reader stops at 4 dims, but published Wan GGUFs hold a 5-D F32 patch embedding that
# gguf-py, ComfyUI-GGUF and diffusers all read; anything past 8 is taken as corruption.
MAX_DIMS = 8
# Fixed sizes of scalar GGUF value types, by type id.
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, f: Any, size: int, path: Path) -> None:
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptFileError(
                f"{self.path}: {what} runs past the end of the file (truncated or corrupt GGUF)",
                hint="re-download the file",
            )

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = self.f.read(n)
        self.pos += n
        return b

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.f.seek(n, 1)
        self.pos += n

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.read(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.read(8, what))[0]

    def string(self, what: str) -> bytes:
        n = self.u64(what)
        return self.read(n, what)


def scan_header(path: Path) -> dict[str, Any]:
    """Check a GGUF header's structure and every count in it against the file size."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    with open(path, "rb") as f:
        c = _Cursor(f, size, path)
        if size < 24 or c.read(4, "magic") != GGUF_MAGIC:
            raise CorruptFileError(f"{path} is not a GGUF file (wrong magic)", hint="check the file")
        version = c.u32("version")
        if version not in (2, 3):
            raise UnsupportedFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = c.u64("tensor count"), c.u64("metadata count")
        # A metadata entry takes at least 13 bytes and a tensor entry at least 33.
        if n_kv * 13 > size or n_tensors * 33 > size:
            raise CorruptFileError(
                f"{path}: header claims {n_tensors} tensors and {n_kv} metadata entries, more than "
                f"a {size}-byte file can hold",
                hint="the file is corrupt; re-download it",
            )
        alignment = 32
        for _ in range(n_kv):
            key = c.string("metadata key")
            vtype = c.u32("metadata type")
            if key == b"general.alignment" and vtype == 4:
                alignment = c.u32("alignment")
                if alignment == 0 or alignment & (alignment - 1):
                    raise CorruptFileError(f"{path}: general.alignment {alignment} is not a power of two")
                continue
            _skip_value(c, vtype, key)
        tensors = []
        for _ in range(n_tensors):
            name = c.string("tensor name")
            n_dims = c.u32("tensor dims")
            if n_dims > MAX_DIMS:
                raise CorruptFileError(
                    f"{path}: tensor {name[:80].decode('utf-8', 'replace')!r} has {n_dims} dimensions; at most {MAX_DIMS} are plausible"
                )
            dims = [c.u64("tensor shape") for _ in range(n_dims)]
            ttype = c.u32("tensor type")
            offset = c.u64("tensor offset")
            try:
                qt = GGMLQuantizationType(ttype)
                block, tsize = GGML_QUANT_SIZES[qt]
            except (ValueError, KeyError):
                raise UnsupportedFormatError(
                    f"{path}: tensor {name[:80].decode('utf-8', 'replace')!r} has unknown GGML type {ttype}"
                ) from None
            if dims and dims[0] % block:
                raise CorruptFileError(
                    f"{path}: tensor {name[:80].decode('utf-8', 'replace')!r} rows of {dims[0]} are not whole {qt.name} blocks"
                )
            nbytes = math.prod(dims) // block * tsize
            if nbytes > size:
                raise CorruptFileError(
                    f"{path}: tensor {name[:80].decode('utf-8', 'replace')!r} of shape {dims} needs {nbytes} bytes, more than the file holds"
                )
            tensors.append((name.decode("utf-8", "replace"), offset, nbytes))
        data_start = c.pos + (-c.pos % alignment)
        for name, offset, nbytes in tensors:
            if data_start + offset + nbytes > size:
                raise CorruptFileError(
                    f"{path}: tensor {name[:80].decode('utf-8', 'replace')!r} lies past the end of the file (truncated)",
                    hint="re-download the file",
                )
    return {"version": version, "n_tensors": n_tensors, "n_kv": n_kv, "alignment": alignment}


def _skip_value(c: _Cursor, vtype: int, key: bytes) -> None:
    if vtype in _SCALAR:
        c.skip(_SCALAR[vtype], "metadata value")
    elif vtype == _STRING:
        c.skip(c.u64("string length"), "metadata string")
    elif vtype == _ARRAY:
        itype, count = c.u32("array type"), c.u64("array length")
        if itype in _SCALAR:
            c.skip(count * _SCALAR[itype], f"array {key[:60]!r}")
        elif itype == _STRING:
            c.need(count * 8, f"array {key[:60]!r}")
            for _ in range(count):
                c.skip(c.u64("string length"), "array string")
        else:
            raise CorruptFileError(
                f"{c.path}: metadata {key[:60]!r} has an array of unsupported type {itype}"
            )
    else:
        raise CorruptFileError(f"{c.path}: metadata {key[:60]!r} has unknown value type {vtype}")


def _field_value(field: Any) -> Any:
    """A GGUF metadata field as plain Python (short arrays only; long ones are summarised)."""
    from gguf.constants import GGUFValueType

    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        n = len(field.data)
        if n > 64:
            return f"<array of {n}>"
        if len(types) > 1 and types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    return field.parts[field.data[0]].tolist()[0]


class GGUFCheckpoint(Checkpoint):
    """A GGUF file. Plain tensors come back as stored; quantized ones dequantized to float32."""

    def __init__(self, path: Path) -> None:
        scan_header(path)
        from gguf import GGUFReader

        try:
            self.reader = GGUFReader(path, "r")
        except (ValueError, KeyError, IndexError) as e:
            raise CorruptFileError(f"{path} could not be read as GGUF: {str(e)[:200]}") from None
        meta: dict[str, Any] = {}
        for name, field in self.reader.fields.items():
            if name.startswith("GGUF."):
                continue
            meta[name] = _field_value(field)
        self.tensors = {t.name: t for t in self.reader.tensors}
        super().__init__(path, "gguf", metadata=meta, files=[path])

    def _shape(self, name: str) -> tuple[int, ...]:
        orig = self.metadata.get(f"comfy.gguf.orig_shape.{name}")
        if isinstance(orig, list):
            return tuple(int(d) for d in orig)
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def _load_infos(self) -> dict[str, TensorInfo]:
        from gguf.constants import GGMLQuantizationType as Q

        out = {}
        for name, t in self.tensors.items():
            qt = Q(t.tensor_type)
            dtype = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}.get(
                qt, torch.float32
            )
            storage = {Q.F32: "F32", Q.F16: "F16", Q.BF16: "BF16"}.get(qt, qt.name)
            out[name] = TensorInfo(name, self._shape(name), dtype, storage, int(t.n_bytes), str(self.path))
        return out

    def raw(self, name: str) -> tuple[str, np.ndarray]:
        """(GGML type name, the stored bytes or values) without dequantizing."""
        from gguf.constants import GGMLQuantizationType as Q

        t = self.tensors[name]
        return Q(t.tensor_type).name, t.data

    def _read(self, name: str) -> torch.Tensor:
        from gguf.constants import GGMLQuantizationType as Q

        t = self.tensors[name]
        qt = Q(t.tensor_type)
        shape = self._shape(name)
        if qt in (Q.F32, Q.F16):
            return torch.from_numpy(np.array(t.data)).reshape(shape)
        if qt == Q.BF16:
            return torch.from_numpy(np.array(t.data).view(np.int16)).view(torch.bfloat16).reshape(shape)
        from weightsmith.io.dequant import dequantize_gguf

        return dequantize_gguf(np.asarray(t.data), qt.name, shape)

    def close(self) -> None:
        self.tensors = {}
