"""What every container reader hands out: names, shapes and dtypes first, data only on demand."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on first use only: inspect and --help run without it
    import torch

# Metadata key under which weightsmith stores the Diffusers config in files that have no
# config.json of their own (original and SAT layouts), so converting back loses nothing.
CONFIG_METADATA_KEY = "weightsmith.diffusers_config"

# safetensors' dtype names, which we also use as the on-disk names of plain tensors, with the
# torch dtype attribute each stands for (a plain table: naming a dtype needs no torch).
PLAIN_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
# Floating-point ones among them (what a dequantized or cast tensor may come back as).
FLOAT_NAMES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def __getattr__(name: str) -> Any:
    """``DTYPE_NAMES`` (torch dtype -> name) and ``NAME_DTYPES`` (name -> torch dtype), built on
    first use so that importing this module does not import torch."""
    if name in ("DTYPE_NAMES", "NAME_DTYPES"):
        return _tables()[name == "NAME_DTYPES"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_TABLES: list[Any] = []


def _tables() -> tuple[dict[Any, str], dict[str, Any]]:
    if not _TABLES:
        import torch

        names = {getattr(torch, attr): name for name, attr in PLAIN_DTYPES.items()}
        _TABLES.extend([names, {v: k for k, v in names.items()}])
    return _TABLES[0], _TABLES[1]


def dtype_name(dtype: torch.dtype | str) -> str:
    """The on-disk name of a dtype (``torch.bfloat16`` -> ``"BF16"``); a name is returned as is."""
    if isinstance(dtype, str):
        return dtype
    try:
        return _tables()[0][dtype]
    except KeyError:
        return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a name stands for: an on-disk name (``"BF16"``) or a torch attribute
    (``"float8_e8m0fnu"``, what ``dtype_name`` gives for dtypes without an on-disk name)."""
    import torch

    found = _tables()[1].get(name)
    if found is None:
        found = getattr(torch, name, None)
        if not isinstance(found, torch.dtype):
            raise KeyError(name)
    return found


class TensorInfo:
    """One tensor as a reader sees it before any data is read.

    ``shape`` is in torch order. ``dtype`` is what ``Checkpoint.get`` returns; ``storage`` names
    how the bytes lie on disk (``"BF16"``, or a GGUF quant type such as ``"Q4_K"``). Readers may
    give ``dtype`` as its on-disk name (``"F32"``): the torch dtype is then looked up only when
    asked for, so reading headers (inspect, detection) never imports torch. ``dtype_name`` is
    that name either way.
    """

    __slots__ = ("name", "shape", "dtype_name", "storage", "nbytes", "source")

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype | str,
        storage: str,
        nbytes: int,
        source: str = "",
    ) -> None:
        for k, v in (
            ("name", name),
            ("shape", shape),
            ("dtype_name", dtype_name(dtype)),
            ("storage", storage),
            ("nbytes", nbytes),
            ("source", source),
        ):
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TensorInfo is immutable (cannot set {name})")

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype_name)

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.shape, self.dtype_name, self.storage, self.nbytes, self.source)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorInfo) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[Any, ...]:
        return (TensorInfo, self._key())

    def __repr__(self) -> str:
        return (
            f"TensorInfo(name={self.name!r}, shape={self.shape!r}, dtype={self.dtype_name}, "
            f"storage={self.storage!r}, nbytes={self.nbytes}, source={self.source!r})"
        )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def quantized(self) -> bool:
        return self.storage not in PLAIN_DTYPES


# How an attached config is checked on first use: (config, infos, where) -> None, raising a
# weightsmith error. The families add their checker when imported (io sits below them and never
# imports them); every command that detects a family has therefore installed it.
ConfigCheck = Callable[[dict[str, Any], Mapping[str, "TensorInfo"], str], None]
CONFIG_CHECKS: list[ConfigCheck] = []


def add_config_check(check: ConfigCheck) -> None:
    """Have every checkpoint run ``check`` on its config before first use (once per function)."""
    if check not in CONFIG_CHECKS:
        CONFIG_CHECKS.append(check)


class Checkpoint(ABC):
    """A lazily opened checkpoint of one model component.

    ``infos`` are known without reading tensor data (sharded files read only the headers they
    need); ``get`` reads one tensor. ``config`` holds a Diffusers ``config.json`` when the
    container has one; ``metadata`` holds the container's own metadata.
    """

    def __init__(
        self,
        path: Path,
        container: str,
        *,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        files: list[Path] | None = None,
    ) -> None:
        self.path = Path(path)
        self.container = container
        self.metadata: dict[str, Any] = metadata or {}
        self.set_config(config)
        self.files: list[Path] = files or []
        self._infos: dict[str, TensorInfo] | None = None

    @property
    def config(self) -> dict[str, Any] | None:
        """The Diffusers config, checked against itself and the weights on first use.

        Checked lazily, so that opening a folder to read one tensor reads one shard's header,
        and checked before anything (detection, planning, an output's config.json) uses it.
        """
        if self._config is not None and not self._config_checked:
            for check in CONFIG_CHECKS:
                check(self._config, self.infos, self._config_source)
            self._config_checked = True
        return self._config

    @config.setter
    def config(self, value: dict[str, Any] | None) -> None:
        self.set_config(value)

    def set_config(self, config: dict[str, Any] | None, where: str | None = None) -> None:
        """Attach a config; ``where`` names its source in error messages (a file, a metadata key)."""
        self._config = config
        self._config_checked = config is None
        self._config_source = where or f"the config given for {self.path}"

    @property
    def infos(self) -> dict[str, TensorInfo]:
        if self._infos is None:
            self._infos = self._load_infos()
        return self._infos

    @abstractmethod
    def _load_infos(self) -> dict[str, TensorInfo]: ...

    @abstractmethod
    def _read(self, name: str) -> torch.Tensor: ...

    def keys(self) -> list[str]:
        return list(self.infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            from weightsmith.errors import NotFoundError

            raise NotFoundError(
                f"{self.path} has no tensor named {name!r}",
                hint="run `weightsmith inspect` to list its tensors",
            ) from None

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU, its stored dtype; GGUF quant types come back dequantized)."""
        self.info(name)
        return self._read(name)

    #: the storage dtypes ``read_array`` returns as numpy arrays (none: the reader needs torch)
    array_storages: frozenset[str] = frozenset()

    def read_array(self, name: str) -> Any:
        """One tensor as a numpy array of its stored bits, without torch: float32/float16 as
        they are, BF16 as its uint16 bit patterns. Only for storages in ``array_storages``."""
        raise NotImplementedError(f"{type(self).__name__} reads tensors through torch")

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.keys():
            yield name, self.get(name)

    def close(self) -> None:  # noqa: B027 - most containers hold nothing to release
        """Release file handles and maps."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.files if p.exists())


@dataclass
class PipelineCheckpoint:
    """A Diffusers pipeline folder: ``model_index.json`` and one checkpoint per weighted component."""

    path: Path
    model_index: dict[str, Any]
    components: dict[str, Checkpoint]
    container: str = "diffusers-pipeline"

    def close(self) -> None:
        for c in self.components.values():
            c.close()

    def __enter__(self) -> PipelineCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def infos_from_state_dict(state: Mapping[str, torch.Tensor], source: str = "") -> dict[str, TensorInfo]:
    """TensorInfos for tensors held in memory (tests, and writers planning from a state dict)."""
    return {
        k: TensorInfo(k, tuple(t.shape), t.dtype, dtype_name(t.dtype), t.numel() * t.element_size(), source)
        for k, t in state.items()
    }
