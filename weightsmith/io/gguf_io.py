"""GGUF files, parsed here in one bounded pass over the header; tensor data is memory-mapped.

``gguf.GGUFReader`` trusts the counts in a header and builds several numpy objects per array
element and per tensor, so a small hostile file (an array of two million empty strings, a
table of 300k tensors) costs tens of seconds and gigabytes. ``parse_header`` walks the same
structure with every count checked against the bytes that remain and against limits no real
model comes near (``MAX_TENSORS``, ``MAX_METADATA``, ``MAX_ARRAY_STRINGS``); long arrays are
skipped, not materialised. Shapes are reported in torch order (GGUF stores them reversed).
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightsmith.errors import CorruptFileError, NotFoundError, UnsupportedFormatError
from weightsmith.io.base import Checkpoint, TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import torch

GGUF_MAGIC = b"GGUF"
# ggml's C reader stops at 4 dims, but published Wan GGUFs hold a 5-D F32 patch embedding that
# gguf-py, ComfyUI-GGUF and diffusers all read; anything past 8 is taken as corruption.
MAX_DIMS = 8
# The largest real models hold about a thousand tensors (Wan 14B: 1095, Llama 405B: 1138) and
# GGUF merges MoE experts into one tensor per layer; 65536 leaves a wide margin.
MAX_TENSORS = 65536
# A few dozen keys plus, in ComfyUI files, one comfy.gguf.orig_shape entry per tensor.
MAX_METADATA = 2 * MAX_TENSORS
# Strings are the one array element that must be walked one by one. The largest real tokenizer
# (Gemma's 262k tokens plus a BPE merge list) stays well under a million strings in all.
MAX_ARRAY_STRINGS = 2**20
# Arrays longer than this are summarised in the metadata rather than decoded.
SHORT_ARRAY = 64
# Scalar GGUF value types, by type id: struct format (little-endian).
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# GGML types stored as plain numbers, read without dequantizing: their numpy dtype names (the keys
# are also the on-disk names of io.base, so a TensorInfo names them without torch).
_PLAIN = {
    "F32": "float32",
    "F16": "float16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}


def require_regular_file(path: Path, what: str = "") -> os.stat_result:
    """``os.stat`` of ``path``, refusing anything but a regular file before it is opened.

    Opening a FIFO blocks until someone writes to it, and a device such as /dev/zero never
    ends; a reader must not open either.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist", hint="check the path") from None
    except OSError as e:
        raise UnsupportedFormatError(f"{path} cannot be read ({e.strerror})", hint="check the path") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a folder"
            if stat.S_ISDIR(st.st_mode)
            else "special"
        )
        raise UnsupportedFormatError(
            f"{path} is not a regular file ({kind}){' ' + what if what else ''}",
            hint="point weightsmith at the checkpoint file itself",
        )
    return st


def _label(name: str | bytes) -> str:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return repr(name[:80])


def _utf8(raw: bytes, what: str) -> str:
    """A name from the header as text; ``what`` says which ("<path>: tensor name")."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(
            f"{what} {_label(raw)} is not UTF-8 text", hint="the file is corrupt; re-download or re-export it"
        ) from None


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table: ``dims`` in GGUF order, ``offset`` from the file's start."""

    name: str
    qtype: str
    dims: tuple[int, ...]
    offset: int
    nbytes: int
    block: int
    type_size: int

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
    version: int
    alignment: int
    data_start: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]


class _Cursor:
    """Reads little-endian fields from a buffer, each one checked against the bytes left."""

    def __init__(self, buf: Any, size: int, path: Path) -> None:
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptFileError(
                f"{self.path}: {what} runs past the end of the file (truncated or corrupt GGUF)",
                hint="re-download the file",
            )

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def u32(self, what: str) -> int:
        self.need(4, what)
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def string(self, what: str) -> bytes:
        return self.read(self.u64(what), what)


class _Budget:
    def __init__(self) -> None:
        self.strings = 0


def parse_header(path: Path) -> GGUFHeader:
    """The GGUF header, metadata and tensor table, every count checked against the file size."""
    size = require_regular_file(path).st_size
    if size < 24:
        _check_magic(path)
        raise CorruptFileError(f"{path} is too short to be a GGUF file ({size} bytes)", hint="re-download it")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _parse(_Cursor(mm, size, path))


def scan_header(path: Path) -> dict[str, Any]:
    """Check a GGUF header's structure and every count in it against the file size."""
    h = parse_header(path)
    return {
        "version": h.version,
        "n_tensors": len(h.tensors),
        "n_kv": len(h.metadata),
        "alignment": h.alignment,
    }


def _check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CorruptFileError(f"{path} is not a GGUF file (wrong magic)", hint="check the file")


def _parse(c: _Cursor) -> GGUFHeader:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path, size = c.path, c.size
    if c.read(4, "magic") != GGUF_MAGIC:
        raise CorruptFileError(f"{path} is not a GGUF file (wrong magic)", hint="check the file")
    version = c.u32("version")
    if version not in (2, 3):
        raise UnsupportedFormatError(
            f"{path}: GGUF version {version} is not supported (2 and 3 are)",
            hint="re-create the file with a current llama.cpp or gguf-py",
        )
    n_tensors, n_kv = c.u64("tensor count"), c.u64("metadata count")
    # A metadata entry takes at least 13 bytes and a tensor entry at least 24.
    if n_kv * 13 > size or n_tensors * 24 > size:
        raise CorruptFileError(
            f"{path}: header claims {n_tensors} tensors and {n_kv} metadata entries, more than "
            f"a {size}-byte file can hold",
            hint="the file is corrupt; re-download it",
        )
    if n_tensors > MAX_TENSORS or n_kv > MAX_METADATA:
        raise CorruptFileError(
            f"{path}: header claims {n_tensors} tensors and {n_kv} metadata entries; no real model has "
            f"more than {MAX_TENSORS} tensors or {MAX_METADATA} metadata entries",
            hint="the file is corrupt or hostile",
        )
    budget = _Budget()
    metadata: dict[str, Any] = {}
    alignment = 32
    for _ in range(n_kv):
        key = _utf8(c.string("metadata key"), f"{path}: metadata key")
        if key in metadata:
            raise CorruptFileError(
                f"{path}: metadata key {_label(key)} appears twice",
                hint="the file is corrupt; re-download or re-export it",
            )
        vtype = c.u32("metadata type")
        value = _value(c, vtype, key, budget)
        if key == "general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                raise CorruptFileError(
                    f"{path}: general.alignment {value!r} is not a uint32 power of two",
                    hint="the file's metadata is corrupt; re-download or re-create it",
                )
            alignment = value
        metadata[key] = value
    entries = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = _utf8(c.string("tensor name"), f"{path}: tensor name")
        if name in names:
            raise CorruptFileError(
                f"{path}: tensor {_label(name)} appears twice in the tensor table",
                hint="the file is corrupt; re-download or re-export it",
            )
        names.add(name)
        n_dims = c.u32("tensor dims")
        if n_dims > MAX_DIMS:
            raise CorruptFileError(
                f"{path}: tensor {_label(name)} has {n_dims} dimensions; at most {MAX_DIMS} are plausible",
                hint="the file is corrupt; re-download or re-export it",
            )
        dims = tuple(c.u64("tensor shape") for _ in range(n_dims))
        ttype = c.u32("tensor type")
        offset = c.u64("tensor offset")
        try:
            qt = GGMLQuantizationType(ttype)
            block, tsize = GGML_QUANT_SIZES[qt]
        except (ValueError, KeyError):
            raise UnsupportedFormatError(
                f"{path}: tensor {_label(name)} has unknown GGML type {ttype}",
                hint="the type is newer than this gguf-py or the file is corrupt; upgrade the gguf package or re-download the file",
            ) from None
        if block > 1 and (not dims or dims[0] % block):
            raise CorruptFileError(
                f"{path}: tensor {_label(name)} rows of {dims[0] if dims else 1} are not whole {qt.name} blocks",
                hint="the file is corrupt; re-download or re-export it",
            )
        nbytes = math.prod(dims) // block * tsize
        if nbytes > size:
            raise CorruptFileError(
                f"{path}: tensor {_label(name)} of shape {list(dims)} needs {nbytes} bytes, more than the file holds "
                f"({size} bytes: truncated or corrupt)",
                hint="re-download the file",
            )
        entries.append((name, qt.name, dims, offset, nbytes, block, tsize))
    data_start = c.pos + (-c.pos % alignment)
    tensors: dict[str, GGUFTensor] = {}
    for name, qtype, dims, offset, nbytes, block, tsize in entries:
        if data_start + offset + nbytes > size:
            raise CorruptFileError(
                f"{path}: tensor {_label(name)} lies past the end of the file (truncated)",
                hint="re-download the file",
            )
        tensors[name] = GGUFTensor(name, qtype, dims, data_start + offset, nbytes, block, tsize)
    _check_overlap(path, tensors)
    return GGUFHeader(version, alignment, data_start, metadata, tensors)


def _check_overlap(path: Path, tensors: dict[str, GGUFTensor]) -> None:
    """Two tensors may not share bytes: with shared data a small file converts to a huge one."""
    end, prev = 0, ""
    for t in sorted((t for t in tensors.values() if t.nbytes), key=lambda t: t.offset):
        if t.offset < end:
            raise CorruptFileError(
                f"{path}: tensors {_label(prev)} and {_label(t.name)} overlap in the data section",
                hint="the file is corrupt; re-download it",
            )
        end, prev = t.offset + t.nbytes, t.name


def _value(c: _Cursor, vtype: int, key: str, budget: _Budget) -> Any:
    """One metadata value as plain Python; arrays over ``SHORT_ARRAY`` items are summarised."""
    fmt = _SCALAR.get(vtype)
    if fmt is not None:
        n = struct.calcsize(fmt)
        c.need(n, f"metadata {_label(key)}")
        v = struct.unpack_from("<" + fmt, c.buf, c.pos)[0]
        c.pos += n
        return v
    if vtype == _STRING:
        return c.string(f"metadata {_label(key)}").decode("utf-8", "replace")
    if vtype != _ARRAY:
        raise CorruptFileError(
            f"{c.path}: metadata {_label(key)} has unknown value type {vtype}",
            hint="the file is corrupt; re-download or re-export it",
        )
    itype, count = c.u32("array type"), c.u64("array length")
    fmt = _SCALAR.get(itype)
    if fmt is not None:
        n = struct.calcsize(fmt)
        c.need(count * n, f"array {_label(key)}")
        if count > SHORT_ARRAY:
            c.pos += count * n
            return f"<array of {count}>"
        vals = list(struct.unpack_from(f"<{count}{fmt}", c.buf, c.pos))
        c.pos += count * n
        return vals
    if itype != _STRING:
        raise CorruptFileError(
            f"{c.path}: metadata {_label(key)} has an array of unsupported type {itype}",
            hint="the file is corrupt; re-download or re-export it",
        )
    c.need(count * 8, f"array {_label(key)}")
    budget.strings += count
    if budget.strings > MAX_ARRAY_STRINGS:
        raise CorruptFileError(
            f"{c.path}: metadata array {_label(key)} brings the header to {budget.strings} strings; "
            f"no real model has more than {MAX_ARRAY_STRINGS}",
            hint="the file is corrupt or hostile",
        )
    if count <= SHORT_ARRAY:
        return [c.string("array string").decode("utf-8", "replace") for _ in range(count)]
    buf, pos, size, unpack = c.buf, c.pos, c.size, _U64.unpack_from
    for _ in range(count):
        if pos + 8 > size:
            pos = size + 1
            break
        pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            break
    if pos > size:
        raise CorruptFileError(
            f"{c.path}: array {_label(key)} runs past the end of the file (truncated or corrupt GGUF)",
            hint="re-download the file",
        )
    c.pos = pos
    return f"<array of {count}>"


def _orig_shape(path: Path, t: GGUFTensor, value: Any) -> tuple[int, ...]:
    """A ComfyUI ``comfy.gguf.orig_shape`` entry, checked: integers whose product is the element count."""
    ok = (
        isinstance(value, list)
        and len(value) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    )
    if not ok:
        raise CorruptFileError(
            f"{path}: comfy.gguf.orig_shape.{t.name[:80]} is {str(value)[:80]!r}, not a list of at most "
            f"{MAX_DIMS} non-negative integers",
            hint="the file's metadata is corrupt; remove that key or re-create the file",
        )
    shape = tuple(value)
    if math.prod(shape) != math.prod(t.dims):
        raise CorruptFileError(
            f"{path}: comfy.gguf.orig_shape.{t.name[:80]} is {list(shape)} ({math.prod(shape)} elements), "
            f"but tensor {_label(t.name)} holds {math.prod(t.dims)}",
            hint="the file's metadata is corrupt; remove that key or re-create the file",
        )
    return shape


class GGUFCheckpoint(Checkpoint):
    """A GGUF file. Plain tensors come back as stored; quantized ones dequantized to float32.

    Reading refuses NaN and infinity in any float tensor (quantized blocks with a non-finite
    scale, or plain values): no usable weight holds them, and converting them silently would
    hand out a broken model with exit 0.
    """

    def __init__(self, path: Path) -> None:
        header = parse_header(path)
        self.header = header
        self.tensors = header.tensors
        self._map: np.memmap | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        for name, t in self.tensors.items():
            orig = header.metadata.get(f"comfy.gguf.orig_shape.{name}")
            self._shapes[name] = t.torch_shape if orig is None else _orig_shape(path, t, orig)
        super().__init__(path, "gguf", metadata=dict(header.metadata), files=[path])

    def _shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def _load_infos(self) -> dict[str, TensorInfo]:
        out = {}
        for name, t in self.tensors.items():
            # plain and BF16 tensors come back as stored, quantized ones dequantized to float32
            dtype = t.qtype if t.qtype in _PLAIN or t.qtype == "BF16" else "F32"
            out[name] = TensorInfo(name, self._shape(name), dtype, t.qtype, t.nbytes, str(self.path))
        return out

    def _data(self, t: GGUFTensor) -> np.ndarray:
        """The stored values (plain types) or bytes (BF16 and quantized types), memory-mapped."""
        import numpy as np

        if self._map is None:
            require_regular_file(self.path)
            self._map = np.memmap(self.path, mode="r")
        if t.qtype in _PLAIN:
            dt = np.dtype(_PLAIN[t.qtype])
            arr = self._map[t.offset : t.offset + t.nbytes].view(dt)
            return arr.reshape(t.torch_shape)
        arr = self._map[t.offset : t.offset + t.nbytes]
        shape = t.torch_shape or (1,)
        return arr.reshape((*shape[:-1], shape[-1] // t.block * t.type_size))

    def raw(self, name: str) -> tuple[str, np.ndarray]:
        """(GGML type name, the stored bytes or values) without dequantizing."""
        t = self.tensors[name]
        return t.qtype, self._data(t)

    def _read(self, name: str) -> torch.Tensor:
        import numpy as np
        import torch

        t = self.tensors[name]
        shape = self._shape(name)
        data = self._data(t)
        if t.qtype in _PLAIN:
            out = torch.from_numpy(np.array(data)).reshape(shape)
        elif t.qtype == "BF16":
            out = torch.from_numpy(np.array(data).view(np.int16)).view(torch.bfloat16).reshape(shape)
        else:
            from weightsmith.io.dequant import dequantize_gguf

            out = dequantize_gguf(data, t.qtype, t.torch_shape or (1,)).reshape(shape)
        if out.is_floating_point() and not _all_finite(out):
            what = "dequantizes to" if t.qtype not in _PLAIN and t.qtype != "BF16" else "stores"
            why = " (a block scale is NaN or infinite)" if what == "dequantizes to" else ""
            raise CorruptFileError(
                f"{self.path}: tensor {_label(name)} ({t.qtype}) {what} NaN or infinite values{why}; "
                "no usable weight holds them, so weightsmith refuses to read it",
                hint="the file is corrupt; re-download or re-create it",
            )
        return out

    def close(self) -> None:
        self.tensors = {}
        self._map = None


def _all_finite(x: torch.Tensor) -> bool:
    """All values finite; a plain sum settles the common case in one cheap pass."""
    import torch

    if x.numel() == 0:
        return True
    s = float(x.sum(dtype=torch.float64))
    return math.isfinite(s) or bool(torch.isfinite(x).all())
