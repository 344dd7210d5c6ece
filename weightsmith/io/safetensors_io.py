"""safetensors: strict header validation, lazy reads, streaming writes.

The header is parsed and checked here before the safetensors library sees the file, so a file
whose header lies (offsets past the end, sizes that contradict shapes, holes, overlaps) gets a
one-line error naming the tensor, without allocating more than the header itself. Data is then
read through ``safetensors.safe_open`` (memory-mapped), one tensor at a time.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from safetensors import SafetensorError, safe_open

from weightsmith.errors import ConversionError, CorruptFileError, UnsupportedFormatError
from weightsmith.io.base import PLAIN_DTYPES, Checkpoint, TensorInfo, dtype_name
from weightsmith.io.ranges import read_range
from weightsmith.io.structured import parse_json, read_json_file

if TYPE_CHECKING:
    import numpy as np
    import torch

# The safetensors library refuses headers above 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100 * 1024 * 1024

ITEM_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}

# Storages ``read_array`` returns as numpy arrays, and as what (BF16: its bit patterns).
ARRAY_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "uint16"}

# The library (Rust, serde_json) reads shape entries and offsets as u64 and multiplies the
# shape in order with overflow checks; torch then needs every dimension to fit an int64.
_U64 = 2**64
_I64 = 2**63
# dtypes the library knows but weightsmith does not read (an exit 2 "unsupported", not "corrupt").
_LIBRARY_ONLY_DTYPES = {"F4", "F6_E2M3", "F6_E3M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


class _Obj(dict):
    """A JSON object that remembers which of its keys appeared more than once."""

    dups: frozenset[str] = frozenset()


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dups: set[str] = set()
        for k, _ in pairs:
            (dups if k in seen else seen).add(k)
        obj.dups = frozenset(dups)
    return obj


def _int_literal(text: str) -> int | float:
    # serde_json reads "-0" as a float, which no shape or offset accepts; Python reads it as 0.
    return -0.0 if text == "-0" else int(text)


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    """The header as the safetensors library would read it, or CorruptFileError saying why not."""
    hint = "the file is corrupt or not safetensors; re-download or re-export it"
    parse_json(raw, f"{path}: the safetensors header", hint=hint)  # bounded: nesting, digits, NaN
    # A second pass, now known to be safe, with the library's stricter rules: duplicate fields of
    # a tensor entry (or two __metadata__) are errors there, and "-0" is not an integer.
    header = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs, parse_int=_int_literal)
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: the safetensors header is not a JSON object", hint=hint)
    if "__metadata__" in getattr(header, "dups", ()):
        raise CorruptFileError(f"{path}: the safetensors header holds __metadata__ twice", hint=hint)
    stack: list[Any] = [header]
    while stack:  # lone UTF-16 surrogates (\\ud800) and overflowing floats (1e999) are not JSON there
        v = stack.pop()
        if isinstance(v, str) and _SURROGATE.search(v):
            raise CorruptFileError(
                f"{path}: the safetensors header holds a string with a lone UTF-16 surrogate", hint=hint
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise CorruptFileError(f"{path}: the safetensors header holds a number out of range", hint=hint)
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return header


def _metadata(path: Path, meta: Any) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CorruptFileError(
            f"{path}: __metadata__ is a JSON {type(meta).__name__}, not an object of strings",
            hint="the safetensors format allows only string-to-string metadata; re-export the file",
        )
    for k, v in meta.items():
        if not isinstance(v, str):
            raise CorruptFileError(
                f"{path}: __metadata__ value of {k!r} is {_short(v)}, not a string",
                hint="the safetensors format allows only string-to-string metadata; re-export the file",
            )
    return dict(meta)


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def read_header(
    path: Path, offsets: dict[str, int] | None = None
) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate a safetensors header: (tensor infos, metadata, data start offset).
    ``offsets``: filled with each tensor's first byte within the data section.

    As strict as the safetensors library: whatever it would refuse is refused here, so a file
    that ``inspect`` accepts is one that ``convert`` can read.
    """
    size = path.stat().st_size
    if size < 8:
        raise CorruptFileError(
            f"{path} is {size} bytes, too short to be a safetensors file", hint="re-download it"
        )
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise CorruptFileError(
                f"{path}: header length {n} does not fit a {size}-byte file (truncated, or not safetensors)",
                hint="re-download or re-export the file",
            )
        raw = f.read(n)
    if len(raw) != n:
        raise CorruptFileError(f"{path}: the file shrank while being read", hint="read it again")
    header = _parse_header(path, raw)
    meta = _metadata(path, header.pop("__metadata__", None))
    data_size = size - 8 - n
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        infos[name] = _check_entry(path, name, entry, data_size)
        begin, end = entry["data_offsets"]
        spans.append((begin, end, name))
        if offsets is not None:
            offsets[name] = begin
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            what = (
                "overlaps another tensor"
                if begin < pos
                else f"leaves a hole of {begin - pos} bytes before it"
            )
            raise CorruptFileError(
                f"{path}: tensor {name!r} {what}", hint="the file is corrupt; re-export it"
            )
        pos = end
    if pos != data_size:
        raise CorruptFileError(
            f"{path}: tensors cover {pos} bytes but the file holds {data_size} data bytes (truncated or padded)",
            hint="re-download or re-export the file",
        )
    return infos, meta, 8 + n


def _is_count(v: Any, limit: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < limit


def _check_entry(path: Path, name: str, entry: Any, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict) or not set(_ENTRY_FIELDS) <= set(entry):
        raise CorruptFileError(
            f"{path}: header entry for {name!r} lacks dtype, shape or data_offsets",
            hint="the header is corrupt; re-download or re-export the file",
        )
    twice = [k for k in _ENTRY_FIELDS if k in getattr(entry, "dups", ())]
    if twice:
        raise CorruptFileError(
            f"{path}: header entry for {name!r} gives {twice[0]} twice",
            hint="the header is corrupt; re-download or re-export the file",
        )
    dt, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dt not in ITEM_SIZES:
        known = isinstance(dt, str) and dt in _LIBRARY_ONLY_DTYPES
        raise (UnsupportedFormatError if known else CorruptFileError)(
            f"{path}: tensor {name!r} has dtype {_short(dt)}, which weightsmith does not read",
            hint="weightsmith reads " + ", ".join(ITEM_SIZES),
        )
    if not (isinstance(shape, list) and all(_is_count(d, _I64) for d in shape)):
        raise CorruptFileError(
            f"{path}: tensor {name!r} has an invalid shape {_short(shape)}",
            hint="the header is corrupt; re-download or re-export the file",
        )
    numel = 1
    for d in shape:  # in order, as the library multiplies, overflow checked even before a 0
        numel *= d
        if numel >= _U64:
            raise CorruptFileError(
                f"{path}: tensor {name!r} has a shape {shape} whose size overflows",
                hint="the header is corrupt; re-download or re-export the file",
            )
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_count(o, _U64) for o in offs)):
        raise CorruptFileError(
            f"{path}: tensor {name!r} has invalid data_offsets {_short(offs)}",
            hint="the header is corrupt; re-download or re-export the file",
        )
    begin, end = offs
    if not 0 <= begin <= end <= data_size:
        raise CorruptFileError(
            f"{path}: tensor {name!r} claims bytes {begin}..{end} but the data section has {data_size}",
            hint="the file is truncated or its header lies; re-download it",
        )
    nbytes = numel * ITEM_SIZES[dt]
    if nbytes != end - begin:
        raise CorruptFileError(
            f"{path}: tensor {name!r} of shape {shape} {dt} needs {nbytes} bytes but its offsets span {end - begin}",
            hint="the header lies; re-export the file",
        )
    return TensorInfo(name, tuple(shape), dt if dt in PLAIN_DTYPES else "U8", dt, nbytes, str(path))


def _open_for_reading(path: Path) -> Any:
    # pread reads each tensor's bytes on demand; a memory map would leave every page it touched
    # resident in our address space, so streaming a 30 GB checkpoint would show 30 GB of RSS.
    try:
        return safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors < 0.8 has no backend choice
        return safe_open(str(path), framework="pt", device="cpu")


class SafetensorsFile:
    """One safetensors file opened lazily: header on open, data per tensor through safe_open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: dict[str, int] = {}
        self.infos, self.metadata, self.data_start = read_header(path, self.offsets)
        self._handle: Any = None
        self.opened = 0  # how often the data was opened (tests: reads touch only their shard)

    def read(self, name: str) -> torch.Tensor:
        try:
            if self._handle is None:
                self._handle = _open_for_reading(self.path)
                self.opened += 1
            return self._handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError, TypeError, ValueError, OverflowError) as e:
            # The header check above refuses what the library would; this is the file changing
            # under us, or a disk error: still one line, naming the tensor.
            raise CorruptFileError(
                f"{self.path}: reading tensor {name!r} failed ({type(e).__name__}: {str(e)[:160]})",
                hint="the file may have changed or be damaged; re-download it",
            ) from None

    def read_array(self, name: str) -> np.ndarray:
        """The tensor's stored bits as a numpy array (BF16 as uint16): large tensors mapped
        read-only from the file, small ones read into a fresh array (``ranges.py`` says why)."""
        info = self.infos[name]
        start = self.data_start + self.offsets[name]
        return read_range(self.path, start, info.shape, ARRAY_DTYPES[info.storage], info.nbytes, name)

    def close(self) -> None:
        self._handle = None


class SafetensorsCheckpoint(Checkpoint):
    """A single .safetensors file."""

    array_storages = frozenset(ARRAY_DTYPES)

    def __init__(self, path: Path) -> None:
        self.file = SafetensorsFile(path)
        super().__init__(path, "safetensors", metadata=dict(self.file.metadata), files=[path])

    def _load_infos(self) -> dict[str, TensorInfo]:
        return self.file.infos

    def _read(self, name: str) -> torch.Tensor:
        return self.file.read(name)

    def read_array(self, name: str) -> np.ndarray:
        self.info(name)
        return self.file.read_array(name)

    def close(self) -> None:
        self.file.close()


def _plain_file_name(name: Any) -> bool:
    """A name that stays inside its folder: no separator, no '..', no NUL, not empty."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and Path(name).name == name
    )


class ShardedSafetensorsCheckpoint(Checkpoint):
    """Shards listed by a ``*.safetensors.index.json``; a read opens only the shard that holds it."""

    array_storages = frozenset(ARRAY_DTYPES)

    def __init__(self, index_path: Path) -> None:
        index = read_json_file(index_path, hint="re-download the index file")
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise CorruptFileError(f"{index_path} has no weight_map", hint="re-download the index file")
        folder = index_path.parent
        self.folder = folder
        self.weight_map: dict[str, str] = {}
        for name, fname in wm.items():
            if not _plain_file_name(fname):
                raise CorruptFileError(
                    f"{index_path}: shard name {fname!r} for {name!r} is not a plain file name",
                    hint="shards must sit beside the index; re-download the index file",
                )
            self.weight_map[str(name)] = fname
        shard_names = sorted(set(self.weight_map.values()))
        missing = [s for s in shard_names if not (folder / s).exists()]
        if missing:
            from weightsmith.errors import NotFoundError

            raise NotFoundError(
                f"shard {missing[0]} named in {index_path.name} is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                hint="download every shard listed in the index",
            )
        odd = [s for s in shard_names if not (folder / s).is_file()]
        if odd:
            raise UnsupportedFormatError(
                f"shard {odd[0]} named in {index_path.name} is not a regular file",
                hint="each shard must be a .safetensors file",
            )
        self.shards: dict[str, SafetensorsFile] = {}
        meta = index.get("metadata") or {}
        super().__init__(
            index_path,
            "safetensors-sharded",
            metadata={str(k): v for k, v in meta.items()} if isinstance(meta, dict) else {},
            files=[index_path] + [folder / s for s in shard_names],
        )

    def shard(self, fname: str) -> SafetensorsFile:
        if fname not in self.shards:
            self.shards[fname] = SafetensorsFile(self.folder / fname)
        return self.shards[fname]

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self.weight_map

    def __len__(self) -> int:
        return len(self.weight_map)

    def info(self, name: str) -> TensorInfo:
        fname = self.weight_map.get(name)
        if fname is None:
            return super().info(name)  # raises NotFoundError
        infos = self.shard(fname).infos
        if name not in infos:
            raise CorruptFileError(
                f"{self.path.name} maps {name!r} to {fname}, which does not hold it",
                hint="the index and shards do not match; re-download them",
            )
        return infos[name]

    def _load_infos(self) -> dict[str, TensorInfo]:
        return {name: self.info(name) for name in self.weight_map}

    def _read(self, name: str) -> torch.Tensor:
        return self.shard(self.weight_map[name]).read(name)

    def read_array(self, name: str) -> np.ndarray:
        self.info(name)
        return self.shard(self.weight_map[name]).read_array(name)

    def close(self) -> None:
        for s in self.shards.values():
            s.close()


# ---------------------------------------------------------------------------------------------
# Writing


def build_header(
    specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]], metadata: Mapping[str, str] | None
) -> bytes:
    """The header bytes (length prefix included) for tensors laid out in ``specs`` order."""
    import torch

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, dtype in specs:
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": dtype_name(dtype),
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data section, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def write_tensor_bytes(f: BinaryIO, t: torch.Tensor) -> None:
    """Write a tensor's bytes (little-endian, C order) without a second full copy when avoidable."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.numel() == 0:
        return
    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def write_safetensors_stream(
    f: BinaryIO,
    specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write one safetensors file: header from ``specs``, then tensors as they arrive, in that order."""
    f.write(build_header(specs, metadata))
    it = iter(tensors)
    for name, shape, dtype in specs:
        try:
            got_name, t = next(it)
        except StopIteration:
            raise ConversionError(
                f"the tensor stream ended before {name!r}; nothing was written",
                hint="this is a bug in the conversion plan: rerun with --debug and report it",
            ) from None
        if got_name != name or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise ConversionError(
                f"the tensor stream gave {got_name!r} {tuple(t.shape)} {t.dtype} where {name!r} "
                f"{tuple(shape)} {dtype} was expected; nothing was written",
                hint="this is a bug in the conversion plan: rerun with --debug and report it",
            )
        write_tensor_bytes(f, t)
        del t  # let it go before the stream makes the next one
