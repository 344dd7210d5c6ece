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
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weightsmith.errors import CorruptFileError, NotFoundError

PREFIXES = ("", "model.diffusion_model.")


@dataclass
class ImportanceMatrix:
    """Per-tensor importance vectors (one value per input column)."""

    values: dict[str, torch.Tensor]
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    path: Path | None = None

    def get(self, name: str) -> torch.Tensor | None:
        for p in PREFIXES:
            if name.startswith(p) and name[len(p) :] in self.values:
                return self.values[name[len(p) :]]
            if p + name in self.values:
                return self.values[p + name]
        return None

    def __len__(self) -> int:
        return len(self.values)


def read_imatrix(path: str | Path) -> ImportanceMatrix:
    """Read an imatrix file in either format."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(
            f"imatrix {p} does not exist", hint="pass a file made by `weightsmith imatrix` or llama-imatrix"
        )
    with open(p, "rb") as f:
        magic = f.read(4)
    return _read_gguf(p) if magic == b"GGUF" else _read_dat(p)


def _read_gguf(p: Path) -> ImportanceMatrix:
    from weightsmith.io.gguf_io import GGUFCheckpoint

    ck = GGUFCheckpoint(p)
    sums = {k[: -len(".in_sum2")]: k for k in ck.infos if k.endswith(".in_sum2")}
    if not sums:
        raise CorruptFileError(f"{p} is a GGUF file but holds no imatrix (<name>.in_sum2) tensors")
    values = {}
    for name, key in sums.items():
        s = ck.get(key).to(torch.float32)
        c = ck.get(f"{name}.counts").to(torch.float32) if f"{name}.counts" in ck.infos else torch.ones(1)
        if s.dim() > 1:  # per-expert rows: sum them (DiTs have no experts; keep the file usable)
            s, c = s.sum(0), c.reshape(-1).sum()
        values[name] = s / c.reshape(-1)[0].clamp_min(1)
    ds = ck.metadata.get("imatrix.datasets") or []
    return ImportanceMatrix(
        values,
        list(ds) if isinstance(ds, list) else [str(ds)],
        int(ck.metadata.get("imatrix.chunk_count", 0) or 0),
        p,
    )


def _read_dat(p: Path) -> ImportanceMatrix:
    data = p.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise CorruptFileError(f"{p}: {what} runs past the end (not an imatrix file, or truncated)")
        b = data[pos : pos + n]
        pos += n
        return b

    (n_entries,) = struct.unpack("<i", take(4, "entry count"))
    if n_entries <= 0 or n_entries * 16 > len(data):
        raise CorruptFileError(f"{p}: {n_entries} entries cannot fit a {len(data)}-byte imatrix file")
    values = {}
    for _ in range(n_entries):
        (ln,) = struct.unpack("<i", take(4, "name length"))
        name = take(ln, "name").decode("utf-8", "replace")
        ncall, nval = struct.unpack("<ii", take(8, "counts"))
        arr = np.frombuffer(take(4 * nval, f"values of {name!r}"), dtype="<f4").copy()
        values[name] = torch.from_numpy(arr) / max(ncall, 1)
    dataset = []
    if pos + 8 <= len(data):
        _, ln = struct.unpack("<ii", data[pos : pos + 8])
        if 0 < ln <= len(data) - pos - 8:
            dataset = [data[pos + 8 : pos + 8 + ln].decode("utf-8", "replace")]
    return ImportanceMatrix(values, dataset, 0, p)


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
