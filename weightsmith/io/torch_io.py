"""Torch pickles (.pt .pth .bin .ckpt) and SAT folders, read safely.

Pickles are loaded with ``weights_only=True`` (nothing in them is ever executed) and
memory-mapped, so tensors are read from disk only when touched. Only the zip format of
``torch.save`` (torch >= 1.6) is accepted: the legacy format declares storage sizes that torch
allocates before checking them against the file, so a hostile file could ask for any amount
of memory.
"""

from __future__ import annotations

import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightsmith.errors import (
    CorruptFileError,
    NotFoundError,
    UnsafeFileError,
    UnsupportedFormatError,
    WeightsmithError,
)
from weightsmith.io.base import Checkpoint, TensorInfo, dtype_name
from weightsmith.io.gguf_io import require_regular_file
from weightsmith.io.structured import read_json_file

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Wrapper keys under which trainers nest the weights, in the order the official converters test them.
WRAPPER_KEYS = ("model", "module", "state_dict")
ZIP_MAGIC = b"PK\x03\x04"


# What a state dict saved by torch.save needs from the pickle; torch's weights_only allowlist is
# wider (bytearray, tensor classes, UntypedStorage(n)...) and lets a few hundred bytes of pickle
# allocate any amount of memory, so anything else is refused before torch reads the file.
_PICKLE_GLOBALS = {
    "collections.OrderedDict",
    "_codecs.encode",
    "builtins.set",
    "builtins.complex",
    "torch.Size",
    "torch.device",
    "torch.storage.UntypedStorage",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2",
}
# A tensor may share its storage (tied weights, views of one buffer), but all tensors together
# may not claim more than this many times the bytes their storages hold.
MAX_ALIASING = 4


def _allowed_global(name: str) -> bool:
    import torch

    if name in _PICKLE_GLOBALS:
        return True
    mod, _, attr = name.rpartition(".")
    if mod != "torch":
        return False
    # Storage type markers (torch.FloatStorage...) are not callable in torch's unpickler; dtypes are values.
    # vars(), not getattr(): a name such as torch._dynamo would import a whole subpackage.
    return re.fullmatch(r"\w+Storage", attr) is not None or isinstance(vars(torch).get(attr), torch.dtype)


def _check_pickle_globals(path: Path, record: str, data: bytes) -> None:
    """Refuse a pickle naming a global outside ``_PICKLE_GLOBALS`` (torch would check later, more loosely)."""
    import pickletools

    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                name = str(arg).replace(" ", ".")
                if _allowed_global(name):
                    continue
                if name.startswith(("torch.", "builtins.", "collections.")):
                    raise UnsupportedFormatError(
                        f"{path}: {record} uses {name[:80]}, which weightsmith does not read "
                        "(it reads dicts of dense tensors)",
                        hint="re-save the state dict with plain tensors, or convert it to safetensors",
                    )
                raise UnsafeFileError(
                    f"{path} asks to call {name[:80]}; weightsmith never runs code from a pickle",
                    hint="if you trust it, re-save its tensors with safetensors",
                )
            if op.name == "STOP":
                return
    except WeightsmithError:  # the refusals above (a ValueError too): already one line
        raise
    except (ValueError, EOFError, UnicodeDecodeError, struct.error) as e:
        raise CorruptFileError(
            f"{path}: {record} is not a valid pickle ({str(e)[:120]})", hint="re-download the file"
        ) from None


def _check_zip(path: Path, size: int) -> None:
    """The zip as torch.save writes it: stored records only, together no larger than the file."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = 0
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CorruptFileError(
                        f"{path}: record {info.filename[:80]!r} is compressed; torch.save never compresses "
                        "records, and a compressed one can expand to any size",
                        hint="re-save the checkpoint with torch.save",
                    )
                if info.file_size != info.compress_size:
                    raise CorruptFileError(
                        f"{path}: record {info.filename[:80]!r} has inconsistent sizes",
                        hint="re-download the file",
                    )
                total += info.file_size
            if total > size:
                raise CorruptFileError(
                    f"{path}: its records claim {total} bytes, more than the {size}-byte file holds",
                    hint="re-download the file",
                )
            bad = zf.testzip() if size < 64 * 1024 * 1024 else None
            if bad is not None:
                raise CorruptFileError(f"{path}: record {bad} is corrupt", hint="re-download the file")
            pickles = [i for i in infos if i.filename.endswith("data.pkl")]
            if not pickles:
                raise CorruptFileError(
                    f"{path} is a zip file but not a torch checkpoint (no data.pkl)",
                    hint="point weightsmith at a .pt/.pth/.bin/.ckpt file written by torch.save",
                )
            for info in pickles:
                _check_pickle_globals(path, info.filename[:80], zf.read(info))
    except WeightsmithError:  # the refusals above (ValueErrors too): already one line
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,
    ) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CorruptFileError(
            f"{path} is truncated or corrupt ({first})", hint="re-download the file"
        ) from None


def load_pickle(path: Path) -> Any:
    """``torch.load`` with weights_only and mmap, every failure turned into a one-line error."""
    import torch

    size = require_regular_file(path).st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if head != ZIP_MAGIC:
        if head[:1] == b"\x80":
            raise UnsupportedFormatError(
                f"{path} uses torch's legacy (pre-1.6) serialization, which cannot be read safely",
                hint="re-save it with a current torch.save, or convert it to safetensors",
            )
        raise CorruptFileError(f"{path} is not a torch checkpoint (no zip signature)", hint="check the file")
    _check_zip(path, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"asks to call {m.group(1)}" if m else "holds objects other than tensors and plain data"
        raise UnsafeFileError(
            f"{path} {what}; weightsmith never runs code from a pickle",
            hint="if you trust it, re-save its tensors with safetensors",
        ) from None
    except Exception as e:  # noqa: BLE001 - allowed globals called with bad arguments raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(
            f"{path} could not be read ({type(e).__name__}: {first[:200]})", hint="re-download the file"
        ) from None


def check_tensors(state: Mapping[str, torch.Tensor], path: Path, size: int) -> None:
    """Every tensor dense, within its storage, and all storages inside the file's own bytes.

    A stride-0 view (``torch.zeros(24, 1).expand(24, 2**24)``) stores 96 bytes and converts to
    1.6 GB; a storage made by the pickle itself instead of read from the file can be any size.
    """
    import torch

    spans: dict[int, int] = {}
    claimed = 0
    for name, t in state.items():
        if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
            raise UnsupportedFormatError(
                f"{path}: tensor {name[:80]!r} is {t.layout} {t.dtype} on {t.device.type}, not a dense CPU tensor",
                hint="re-save the state dict with plain tensors",
            )
        st = t.untyped_storage()
        need = t.numel() * t.element_size()
        if need > st.nbytes():
            raise CorruptFileError(
                f"{path}: tensor {name[:80]!r} of shape {list(t.shape)} has {t.numel()} elements but its "
                f"storage holds {st.nbytes() // max(t.element_size(), 1)} (an expanded or overlapping view); "
                "weightsmith refuses to multiply stored data",
                hint="save the tensor with .contiguous() (or .clone()) first",
            )
        claimed += need
        if st.nbytes():
            spans[st.data_ptr()] = max(spans.get(st.data_ptr(), 0), st.nbytes())
    if not spans:
        return
    lo = min(spans)
    hi = max(p + n for p, n in spans.items())
    stored = sum(spans.values())
    if hi - lo > size:
        raise CorruptFileError(
            f"{path}: its tensors use storages the pickle built itself, not data stored in the file",
            hint="the file is corrupt or hostile",
        )
    if claimed > MAX_ALIASING * stored:
        raise CorruptFileError(
            f"{path}: its tensors claim {claimed} bytes from {stored} stored bytes; more than "
            f"{MAX_ALIASING} tensors sharing the same data is not a real checkpoint",
            hint="the file is corrupt or hostile",
        )


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the tensors in a loaded pickle: descend through model/module/state_dict wrappers.

    Returns the flat state dict and the scalar side-data found on the way (iteration numbers...).
    """
    import torch

    side: dict[str, Any] = {}
    trail: list[str] = []
    for _ in range(8):
        if not isinstance(obj, Mapping):
            raise UnsupportedFormatError(
                f"{path} holds a {type(obj).__name__}, not a dict of tensors",
                hint="re-save the model's state_dict() with torch.save, or convert it to safetensors",
            )
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
        check_tensors(self.state, path, path.stat().st_size)
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
    st = require_regular_file(latest)
    if st.st_size > 4096:
        raise CorruptFileError(
            f"{latest} is {st.st_size} bytes; it should hold an iteration number or 'release'",
            hint="point weightsmith at the SAT checkpoint folder; its 'latest' file may be corrupt",
        )
    text = latest.read_bytes().decode("utf-8", "replace").strip()
    if not text:
        raise CorruptFileError(f"{latest} is empty", hint="it should hold an iteration number or 'release'")
    if text == "release":
        sub = "release"
    elif re.fullmatch(r"[0-9]{1,20}", text):  # ASCII digits only: str.isdigit() also takes '٣' and '²'
        sub = str(int(text))
    else:
        raise CorruptFileError(
            f"{latest} holds {text[:40]!r}, not an iteration number (at most 20 ASCII digits) or 'release'",
            hint="write the iteration number or 'release' into the 'latest' file",
        )
    it_dir = folder / sub
    if not it_dir.is_dir():
        raise NotFoundError(
            f"{latest} points to iteration {sub}, but {it_dir} does not exist",
            hint="download that iteration's folder, or fix the 'latest' file to name one that exists",
        )
    if (it_dir / "mp_rank_01_model_states.pt").exists():
        raise UnsupportedFormatError(
            f"{it_dir} is split over several model-parallel ranks",
            hint="merge the ranks into one (model parallel size 1) first",
        )
    for name in SAT_STATE_FILES:
        if (it_dir / name).exists():
            require_regular_file(it_dir / name)
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
        if cfg.exists():
            self.metadata["model_config"] = read_json_file(cfg, max_bytes=4 * 2**20)
            self.files.append(cfg)
