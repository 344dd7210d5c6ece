"""Container writers. Each takes the tensors' specs ahead (name, shape, dtype, known from the
reader without reading data) and then a stream of tensors in that order, so headers are written
first and no more than one tensor is held at a time (SAT: one state file, see ``write_sat``)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from weightsmith.errors import ConversionError, UsageError
from weightsmith.io.atomic import atomic_dir, atomic_file
from weightsmith.io.safetensors_io import write_safetensors_stream
from weightsmith.io.stream_check import SpecT, checked_stream

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
SAT_ITERATION = "1"

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units as Diffusers uses; KiB/MiB/GiB binary)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise UsageError(f"cannot read size {text!r}", hint="write it like 5GB, 500MB or 2GiB")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise UsageError(f"size {text!r} must be positive", hint="give a size above zero, like 5GB")
    return n


def spec_nbytes(spec: SpecT) -> int:
    return math.prod(spec[1]) * torch.empty((), dtype=spec[2]).element_size()


def plan_shards(specs: Sequence[SpecT], max_shard_size: int) -> list[list[SpecT]]:
    """Greedy shards in spec order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[SpecT]] = [[]]
    size = 0
    for s in specs:
        n = spec_nbytes(s)
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += n
    return shards


def _take(it: Iterator[tuple[str, torch.Tensor]], k: int) -> Iterator[tuple[str, torch.Tensor]]:
    for _ in range(k):
        try:
            item = next(it)
        except StopIteration:
            return  # the checked stream below names the missing tensor
        yield item


def _json_text(obj: Any, what: str) -> str:
    """Indented JSON for a config written beside the weights; never NaN/Infinity (not JSON)."""
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ConversionError(
            f"the {what} cannot be written as JSON: {e}",
            hint="check the source's config for non-finite numbers",
        ) from None


def write_safetensors(
    dst: str | Path,
    specs: Sequence[SpecT],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """One safetensors file, written atomically."""
    meta = {"format": "pt", **(metadata or {})}
    with atomic_file(dst, overwrite) as tmp, open(tmp, "wb") as f:
        write_safetensors_stream(f, specs, checked_stream(specs, tensors), meta)
    return Path(dst)


def write_shards_into(
    folder: Path,
    specs: Sequence[SpecT],
    tensors: Iterable[tuple[str, torch.Tensor]],
    max_shard_size: int,
    stem: str = DIFFUSERS_WEIGHTS,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Shards (and, for more than one, the Diffusers index) into an existing folder."""
    shards = plan_shards(specs, max_shard_size)
    meta = {"format": "pt", **(metadata or {})}
    it = checked_stream(specs, tensors)
    n = len(shards)
    names = (
        [f"{stem}.safetensors"]
        if n == 1
        else [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    paths = []
    for name, shard in zip(names, shards):
        with open(folder / name, "wb") as f:
            write_safetensors_stream(f, shard, _take(it, len(shard)), meta)
        paths.append(folder / name)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(spec_nbytes(s) for s in specs)},
            "weight_map": {s[0]: name for name, shard in zip(names, shards) for s in shard},
        }
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        (folder / f"{stem}.safetensors.index.json").write_text(_json_text(index, "shard index"))
    return paths


def write_diffusers_component(
    dst: str | Path,
    specs: Sequence[SpecT],
    tensors: Iterable[tuple[str, torch.Tensor]],
    config: Mapping[str, Any] | None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
    stem: str = DIFFUSERS_WEIGHTS,
) -> Path:
    """A Diffusers component folder: config.json and (sharded) safetensors, written atomically
    (``stem``: the weights file name, ``model`` for a transformers class)."""
    limit = parse_size(max_shard_size)
    with atomic_dir(dst, overwrite) as tmp:
        if config is not None:
            (tmp / "config.json").write_text(_json_text(dict(config), "config"))
        write_shards_into(tmp, specs, tensors, limit, stem=stem, metadata=metadata)
    return Path(dst)


def _save_torch(
    path: Path,
    specs: Sequence[SpecT],
    tensors: Iterable[tuple[str, torch.Tensor]],
    wrap: str | None,
    side: Mapping[str, Any] | None = None,
) -> None:
    """torch's zip format, streamed one tensor at a time (in memory only for dtypes torch's
    pickle has no typed storage for, i.e. float8)."""
    from weightsmith.io.torch_writer import save_to_file, supports, write_torch_zip

    tensors = checked_stream(specs, tensors)
    if supports(specs):
        write_torch_zip(path, specs, tensors, wrap, side)
        return
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors:
        state[name] = t.detach().cpu().contiguous()
    save_to_file({wrap: state, **dict(side or {})} if wrap else state, path)


def write_sat(
    dst: str | Path,
    specs: Sequence[SpecT],
    tensors: Iterable[tuple[str, torch.Tensor]],
    overwrite: bool = False,
    iteration: str = SAT_ITERATION,
    model_config: Mapping[str, Any] | None = None,
    diffusers_config: Mapping[str, Any] | None = None,
) -> Path:
    """A SAT folder: ``latest`` + ``<iteration>/mp_rank_00_model_states.pt`` holding ``{"module": ...}``,
    streamed one tensor at a time."""
    with atomic_dir(dst, overwrite) as tmp:
        (tmp / "latest").write_text(f"{iteration}\n")
        (tmp / iteration).mkdir()
        _save_torch(tmp / iteration / "mp_rank_00_model_states.pt", specs, tensors, "module")
        if diffusers_config is not None:
            (tmp / "diffusers_config.json").write_text(_json_text(dict(diffusers_config), "Diffusers config"))
        if model_config is not None:
            (tmp / "model_config.json").write_text(_json_text(dict(model_config), "model config"))
    return Path(dst)


def write_torch_file(
    dst: str | Path,
    specs: Sequence[SpecT],
    tensors: Iterable[tuple[str, torch.Tensor]],
    overwrite: bool = False,
    wrap: str | None = None,
    side: Mapping[str, str] | None = None,
) -> Path:
    """A single torch pickle (e.g. CogVideoX's SAT ``3d-vae.pt``), optionally wrapped as ``{wrap: sd}``.

    ``side`` entries (strings) are stored beside the weights when wrapped; readers report them as metadata.
    """
    with atomic_file(dst, overwrite) as tmp:
        _save_torch(tmp, specs, tensors, wrap, side if wrap else None)
    return Path(dst)
