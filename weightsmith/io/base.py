"""What every container reader hands out: names, shapes and dtypes first, data only on demand."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Metadata key under which weightsmith stores the Diffusers config in files that have no
# config.json of their own (original and SAT layouts), so converting back loses nothing.
CONFIG_METADATA_KEY = "weightsmith.diffusers_config"

# safetensors' dtype names, which we also use as the on-disk names of plain tensors.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
NAME_DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The on-disk name of a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a reader sees it before any data is read.

    ``shape`` is in torch order. ``dtype`` is what ``Checkpoint.get`` returns; ``storage`` names
    how the bytes lie on disk (``"BF16"``, or a GGUF quant type such as ``"Q4_K"``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    storage: str
    nbytes: int
    source: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def quantized(self) -> bool:
        return self.storage not in NAME_DTYPES


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
