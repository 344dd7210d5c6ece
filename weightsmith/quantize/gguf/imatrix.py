"""Importance matrices in llama.cpp's file formats: per-input-column weights for the quantizers.

Two formats exist and both are read:

* GGUF (llama.cpp's default since mid-2025): ``general.type = "imatrix"``, and per weight tensor
  ``<name>.in_sum2`` (F32, the sum of squared input activations per column) and ``<name>.counts``
  (F32, how many rows were summed); importance = in_sum2 / counts.
* the legacy ``.dat``: int32 entry count, then per entry int32 name length, the name, int32 call
  count, int32 value count and float32 values (mean squared activation times the call count);
  importance = values / calls. An optional trailer (last call, dataset name) is ignored.

weightsmith writes the GGUF form. Names are the GGUF tensor names of the model being quantized
(original layout); a ``model.diffusion_model.`` prefix is tolerated when looking them up.

Every entry is checked on read, because ggml's quantizers turn a bad importance vector into
all-zero or NaN blocks without a word:

* NaN, infinite or negative values (no sum of squares is any of them) are refused;
* an all-zero entry (the tensor never saw an activation) is dropped: its tensor is quantized
  without importance weights, as llama.cpp does for a tensor the file lacks, and a note says so;
* an entry whose largest value lies outside ``[SCALE_LOW, SCALE_HIGH]`` is divided by that value
  (importance is relative within a block, and the kernels' float32 sums overflow or underflow far
  from 1); inside that range values are used as they are, so bytes stay identical to ggml's;
* a run of ``SPAN`` columns (the smallest sub-block of an importance-weighted type) whose values
  are all (nearly) zero would make the block's scale 0/0 and the block all zero: those columns
  get the entry's mean, i.e. no preference inside that block, and a note says so.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weightsmith.errors import CorruptFileError, InputError, NotFoundError

PREFIXES = ("", "model.diffusion_model.")
# Entries whose largest value lies outside this range are rescaled to a largest value of 1.
SCALE_LOW, SCALE_HIGH = 1e-8, 1e8
# Columns per check for blocks without importance (Q2_K, Q3_K and Q6_K weigh 16-column sub-blocks).
SPAN = 16
# A span whose largest value is below this fraction of the entry's largest carries no importance.
SPAN_FLOOR = 1e-12
_HINT = "make the imatrix again (weightsmith imatrix or llama-imatrix), or quantize without --imatrix"


@dataclass
class ImportanceMatrix:
    """Per-tensor importance vectors (one value per input column), checked and ready for the kernels."""

    values: dict[str, torch.Tensor]
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    path: Path | None = None
    #: entries that were all zero: their tensors are quantized without importance weights
    dropped: set[str] = field(default_factory=set)
    #: what was changed on read, one line each (printed with the quantize summary)
    notes: list[str] = field(default_factory=list)

    def _lookup(self, table: Mapping[str, object] | set[str], name: str) -> str | None:
        for p in PREFIXES:
            if name.startswith(p) and name[len(p) :] in table:
                return name[len(p) :]
            if p + name in table:
                return p + name
        return None

    def get(self, name: str) -> torch.Tensor | None:
        key = self._lookup(self.values, name)
        return None if key is None else self.values[key]

    def names(self, name: str) -> bool:
        """Whether the file has an entry for ``name`` (a dropped all-zero one included)."""
        return self._lookup(self.values, name) is not None or self._lookup(self.dropped, name) is not None

    def __len__(self) -> int:
        return len(self.values)


def read_imatrix(path: str | Path) -> ImportanceMatrix:
    """Read an imatrix file in either format, with every entry checked (see the module docstring)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(
            f"imatrix {p} is a folder, not a file",
            hint="pass the .gguf or .dat file made by `weightsmith imatrix` or llama-imatrix",
        )
    if not p.is_file():
        raise NotFoundError(
            f"imatrix {p} does not exist", hint="pass a file made by `weightsmith imatrix` or llama-imatrix"
        )
    with open(p, "rb") as f:
        magic = f.read(4)
    raw, datasets, chunks = _read_gguf(p) if magic == b"GGUF" else _read_dat(p)
    if not raw:
        raise CorruptFileError(f"{p} holds no imatrix entries", hint=_HINT)
    im = ImportanceMatrix({}, datasets, chunks, p)
    filled: list[str] = []
    rescaled: list[str] = []
    for name, v in raw.items():
        out, how = sanitize_entry(p, name, v)
        if out is None:
            im.dropped.add(name)
        else:
            im.values[name] = out
        if how == "rescaled":
            rescaled.append(name)
        elif how == "filled":
            filled.append(name)
    if im.dropped:
        im.notes.append(
            f"imatrix: {_some(sorted(im.dropped))} all zero (never saw an activation): "
            "quantized without importance weights"
        )
    if rescaled:
        im.notes.append(
            f"imatrix: {_some(sorted(rescaled))} rescaled to a largest value of 1 (ggml's float32 "
            f"sums overflow or underflow outside {SCALE_LOW:g}..{SCALE_HIGH:g})"
        )
    if filled:
        im.notes.append(
            f"imatrix: {_some(sorted(filled))} had {SPAN}-column runs without importance: "
            "given the entry's mean there (all-zero weights would zero those blocks)"
        )
    return im


def _some(names: Sequence[str], shown: int = 3) -> str:
    head = ", ".join(names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} {'entry' if len(names) == 1 else 'entries'} ({head}{more})"


def sanitize_entry(p: Path, name: str, v: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """(values the kernels can use or None to drop the entry, what was changed or None).

    Refuses NaN, infinite and negative values; see the module docstring for the rest."""
    v = v.detach().to(torch.float32).reshape(-1)
    if v.numel() == 0:
        raise CorruptFileError(f"{p}: imatrix entry {name!r} holds no values", hint=_HINT)
    finite = torch.isfinite(v)
    if not bool(finite.all()):
        bad = float(v[~finite][0])
        raise CorruptFileError(
            f"{p}: imatrix entry {name!r} holds {bad} (importance is a mean of squares: finite and >= 0)",
            hint=_HINT,
        )
    if bool((v < 0).any()):
        raise CorruptFileError(
            f"{p}: imatrix entry {name!r} holds negative values such as {float(v.min()):g} "
            "(importance is a mean of squares: finite and >= 0)",
            hint=_HINT,
        )
    top = float(v.max())
    if top == 0:
        return None, None
    how = None
    if not SCALE_LOW <= top <= SCALE_HIGH:
        v = (v.to(torch.float64) / top).to(torch.float32)
        top, how = 1.0, "rescaled"
    n = v.numel()
    pad = (-n) % SPAN
    spans = torch.cat([v, v.new_zeros(pad)]).view(-1, SPAN).amax(dim=1)
    empty = spans < top * SPAN_FLOOR
    if bool(empty.any()):
        keep = v >= top * SPAN_FLOOR
        mean = float(v[keep].to(torch.float64).mean())
        cols = empty.repeat_interleave(SPAN)[:n]
        v = torch.where(cols, torch.tensor(mean, dtype=torch.float32), v)
        how = how or "filled"
    return v, how


def _number(value: object, default: int = 0) -> int:
    """A count from metadata, whatever type a hostile file gave it (0 when it is no count)."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return default


def _read_gguf(p: Path) -> tuple[dict[str, torch.Tensor], list[str], int]:
    from weightsmith.io.gguf_io import GGUFCheckpoint

    ck = GGUFCheckpoint(p)
    try:
        sums = {k[: -len(".in_sum2")]: k for k in ck.infos if k.endswith(".in_sum2")}
        if not sums:
            raise CorruptFileError(
                f"{p} is a GGUF file but holds no imatrix (<name>.in_sum2) tensors", hint=_HINT
            )
        values = {name: _gguf_entry(p, ck, name, key) for name, key in sums.items()}
        ds = ck.metadata.get("imatrix.datasets") or []
        datasets = [str(d) for d in ds] if isinstance(ds, (list, tuple)) else [str(ds)]
        chunks = max(_number(ck.metadata.get("imatrix.chunk_count", 0)), 0)
    finally:
        ck.close()
    return values, datasets, chunks


def _gguf_entry(p: Path, ck: object, name: str, key: str) -> torch.Tensor:
    """importance = in_sum2 / counts for one entry, with its shapes and counts checked."""
    s = ck.get(key).to(torch.float32)  # type: ignore[attr-defined]
    if s.dim() == 0 or s.dim() > 2 or s.numel() == 0:
        raise CorruptFileError(
            f"{p}: imatrix {key!r} has shape {list(s.shape)}; expected one value per input column",
            hint=_HINT,
        )
    rows = 1 if s.dim() == 1 else s.shape[0]
    ckey = f"{name}.counts"
    if ckey in ck.infos:  # type: ignore[attr-defined]
        c = ck.get(ckey).to(torch.float32).reshape(-1)  # type: ignore[attr-defined]
    else:
        c = torch.ones(rows)
    if c.numel() != rows:
        raise CorruptFileError(
            f"{p}: imatrix {ckey!r} holds {c.numel()} counts for {rows} row(s) of {key!r}",
            hint=_HINT,
        )
    if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
        raise CorruptFileError(
            f"{p}: imatrix {ckey!r} holds {c.tolist()[:4]}: counts are finite and >= 0", hint=_HINT
        )
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        return s.reshape(-1)  # sanitize_entry names what is wrong
    s2 = s.reshape(rows, -1)
    unseen = c == 0
    if bool((s2[unseen] != 0).any()):
        raise CorruptFileError(
            f"{p}: imatrix {key!r} holds sums where {ckey!r} says no rows were seen (count 0)",
            hint=_HINT,
        )
    # Per-expert rows are summed (DiTs have no experts; this keeps such a file usable).
    total = float(c.to(torch.float64).sum())
    if total == 0:
        return torch.zeros(s2.shape[1])  # never saw an activation: dropped by sanitize_entry
    return (s2.to(torch.float64).sum(0) / total).to(torch.float32)


def _read_dat(p: Path) -> tuple[dict[str, torch.Tensor], list[str], int]:
    data = p.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise CorruptFileError(
                f"{p}: {what} runs past the end (not an imatrix file, or truncated)", hint=_HINT
            )
        b = data[pos : pos + n]
        pos += n
        return b

    (n_entries,) = struct.unpack("<i", take(4, "entry count"))
    if n_entries <= 0 or n_entries * 16 > len(data):
        raise CorruptFileError(
            f"{p}: {n_entries} entries cannot fit a {len(data)}-byte imatrix file", hint=_HINT
        )
    values: dict[str, torch.Tensor] = {}
    for _ in range(n_entries):
        (ln,) = struct.unpack("<i", take(4, "name length"))
        if ln <= 0:
            raise CorruptFileError(f"{p}: an imatrix entry has a name of length {ln}", hint=_HINT)
        name = take(ln, "name").decode("utf-8", "replace")
        ncall, nval = struct.unpack("<ii", take(8, "counts"))
        if nval <= 0 or ncall < 0:
            raise CorruptFileError(
                f"{p}: imatrix entry {name!r} claims {nval} values from {ncall} calls", hint=_HINT
            )
        if name in values:
            raise CorruptFileError(f"{p}: imatrix entry {name!r} appears twice", hint=_HINT)
        arr = np.frombuffer(take(4 * nval, f"values of {name!r}"), dtype="<f4").astype(np.float32)
        values[name] = torch.from_numpy(arr) / max(ncall, 1)
    dataset = []
    if pos + 8 <= len(data):
        _, ln = struct.unpack("<ii", data[pos : pos + 8])
        if 0 < ln <= len(data) - pos - 8:
            dataset = [data[pos + 8 : pos + 8 + ln].decode("utf-8", "replace")]
    return values, dataset, 0


def write_imatrix(
    path: str | Path,
    sums: Mapping[str, torch.Tensor],
    counts: Mapping[str, int],
    datasets: Sequence[str] = (),
    chunks: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the GGUF imatrix form from per-tensor sums of squared activations and row counts."""
    from weightsmith.io.gguf_writer import GGUFTensorSpec, write_gguf

    specs, arrays = [], []
    for name in sorted(sums):
        s = sums[name].detach().to(torch.float32).cpu().contiguous().numpy()
        c = np.array([float(counts[name])], dtype=np.float32)
        specs += [
            GGUFTensorSpec(f"{name}.in_sum2", tuple(s.shape), "F32"),
            GGUFTensorSpec(f"{name}.counts", (1,), "F32"),
        ]
        arrays += [(f"{name}.in_sum2", s), (f"{name}.counts", c)]
    meta = {
        "general.type": "imatrix",
        "imatrix.datasets": list(datasets) or ["weightsmith"],
        "imatrix.chunk_count": chunks,
        "imatrix.chunk_size": 1,
    }
    return write_gguf(path, "", specs, iter(arrays), meta, overwrite)
