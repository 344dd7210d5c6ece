"""Torch pickles (.pt .pth .bin .ckpt) and SAT folders, read safely.

Pickles are loaded with ``weights_only=True`` (nothing in them is ever executed) and
memory-mapped, so tensors are read from disk only when touched. Only the zip format of
``torch.save`` (torch >= 1.6) is accepted: the legacy format declares storage sizes that torch
allocates before checking them against the file, so a hostile file could ask for any amount
of memory.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from weightsmith.errors import CorruptFileError, NotFoundError, UnsafeFileError, UnsupportedFormatError
from weightsmith.io.base import Checkpoint, TensorInfo, dtype_name

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Wrapper keys under which trainers nest the weights, in the order the official converters test them.
WRAPPER_KEYS = ("model", "module", "state_dict")
ZIP_MAGIC = b"PK\x03\x04"


def load_pickle(path: Path) -> Any:
    """``torch.load`` with weights_only and mmap, every failure turned into a one-line error."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != ZIP_MAGIC:
        if head[:1] == b"\x80":
            raise UnsupportedFormatError(
                f"{path} uses torch's legacy (pre-1.6) serialization, which cannot be read safely",
                hint="re-save it with a current torch.save, or convert it to safetensors",
            )
        raise CorruptFileError(f"{path} is not a torch checkpoint (no zip signature)", hint="check the file")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip() if path.stat().st_size < 64 * 1024 * 1024 else None
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptFileError(f"{path} is truncated or corrupt ({e})", hint="re-download the file") from None
    if bad is not None:
        raise CorruptFileError(f"{path}: record {bad} is corrupt", hint="re-download the file")
    if not any(n.endswith("data.pkl") for n in names):
        raise CorruptFileError(f"{path} is a zip file but not a torch checkpoint (no data.pkl)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"asks to call {m.group(1)}" if m else "holds objects other than tensors and plain data"
        raise UnsafeFileError(
            f"{path} {what}; weightsmith never runs code from a pickle",
            hint="if you trust it, re-save its tensors with safetensors",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(
            f"{path} could not be read: {first[:200]}", hint="re-download the file"
        ) from None


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the tensors in a loaded pickle: descend through model/module/state_dict wrappers.

    Returns the flat state dict and the scalar side-data found on the way (iteration numbers...).
    """
    side: dict[str, Any] = {}
    trail: list[str] = []
    for _ in range(8):
        if not isinstance(obj, Mapping):
            raise UnsupportedFormatError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        for k, v in obj.items():
            if k != inner and isinstance(v, (int, float, str, bool)):
                side[str(k)] = v
        if inner is None:
            break
        trail.append(inner)
        obj = obj[inner]
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UnsupportedFormatError(
            f"{path} holds no tensors" + (f" under {'/'.join(trail)}" if trail else ""),
            hint="point weightsmith at the weights file",
        )
    if trail:
        side["wrapped_in"] = "/".join(trail)
    return tensors, side


class TorchCheckpoint(Checkpoint):
    """A torch pickle, memory-mapped; tensors are read from disk when touched."""

    def __init__(self, path: Path, container: str = "torch") -> None:
        self.state, side = unwrap_state_dict(load_pickle(path), path)
        super().__init__(path, container, metadata=side, files=[path])

    def _load_infos(self) -> dict[str, TensorInfo]:
        return {
            k: TensorInfo(
                k, tuple(t.shape), t.dtype, dtype_name(t.dtype), t.numel() * t.element_size(), str(self.path)
            )
            for k, t in self.state.items()
        }

    def _read(self, name: str) -> torch.Tensor:
        return self.state[name]

    def close(self) -> None:
        self.state = {}


SAT_STATE_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def sat_state_file(folder: Path) -> Path:
    """Resolve a SAT folder to its rank-0 state file via ``latest``."""
    latest = folder / "latest"
    text = latest.read_text(errors="replace").strip()
    if not text:
        raise CorruptFileError(f"{latest} is empty", hint="it should hold an iteration number or 'release'")
    if text == "release":
        sub = "release"
    elif text.isdigit():
        sub = str(int(text))
    else:
        raise CorruptFileError(f"{latest} holds {text[:40]!r}, not an iteration number or 'release'")
    it_dir = folder / sub
    if not it_dir.is_dir():
        raise NotFoundError(f"{latest} points to iteration {sub}, but {it_dir} does not exist")
    if (it_dir / "mp_rank_01_model_states.pt").exists():
        raise UnsupportedFormatError(
            f"{it_dir} is split over several model-parallel ranks",
            hint="merge the ranks into one (model parallel size 1) first",
        )
    for name in SAT_STATE_FILES:
        if (it_dir / name).is_file():
            return it_dir / name
    raise NotFoundError(
        f"{it_dir} has no mp_rank_00_model_states.pt", hint="check that the SAT checkpoint is complete"
    )


class SatCheckpoint(TorchCheckpoint):
    """A SAT (SwissArmyTransformer) folder: ``latest`` + ``<iter>/mp_rank_00_model_states.pt``."""

    def __init__(self, folder: Path) -> None:
        state_file = sat_state_file(folder)
        super().__init__(state_file, container="sat")
        self.path = folder
        self.files = [folder / "latest", state_file]
        self.metadata["iteration"] = state_file.parent.name
        cfg = folder / "model_config.json"
        if cfg.is_file():
            import json

            with contextlib.suppress(ValueError, UnicodeDecodeError):
                self.metadata["model_config"] = json.loads(cfg.read_text())
            self.files.append(cfg)
