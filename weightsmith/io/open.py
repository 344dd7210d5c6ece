"""``open_checkpoint``: any supported file or folder to a lazily opened checkpoint.

Containers register a predicate and an opener; the first that claims a path opens it. Adding a
container means registering one more, not editing this function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightsmith.errors import CorruptFileError, NotFoundError, UnsupportedFormatError
from weightsmith.io.base import CONFIG_METADATA_KEY, Checkpoint, PipelineCheckpoint
from weightsmith.io.gguf_io import GGUF_MAGIC, GGUFCheckpoint
from weightsmith.io.quantized_kind import quantized_kind
from weightsmith.io.safetensors_io import SafetensorsCheckpoint, ShardedSafetensorsCheckpoint
from weightsmith.io.structured import parse_json, read_json_file
from weightsmith.io.torch_io import PICKLE_SUFFIXES, SatCheckpoint, TorchCheckpoint

# File names Diffusers (and transformers, for text encoders) give component weights, by preference.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")


@dataclass(frozen=True)
class Container:
    name: str
    claims: Callable[[Path], bool]
    open: Callable[[Path], Checkpoint | PipelineCheckpoint]


_CONTAINERS: list[Container] = []


def register_container(name: str, claims: Callable[[Path], bool]) -> Callable:
    def deco(fn: Callable[[Path], Checkpoint | PipelineCheckpoint]) -> Callable:
        _CONTAINERS.append(Container(name, claims, fn))
        return fn

    return deco


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json_file(path, hint="fix or re-download it")
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} is not a JSON object", hint="fix or re-download it")
    return data


def _plain_folder_name(name: str) -> bool:
    """A component name that names a folder inside the pipeline: no separator, no '..', no NUL."""
    return (
        name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and Path(name).name == name
        and not Path(name).is_absolute()
    )


@register_container("gguf", lambda p: p.is_file() and (p.suffix == ".gguf" or _magic(p, 4) == GGUF_MAGIC))
def _open_gguf(path: Path) -> Checkpoint:
    return GGUFCheckpoint(path)


@register_container(
    "safetensors-sharded", lambda p: p.is_file() and p.name.endswith(".safetensors.index.json")
)
def _open_index(path: Path) -> Checkpoint:
    return ShardedSafetensorsCheckpoint(path)


@register_container("safetensors", lambda p: p.is_file() and p.suffix == ".safetensors")
def _open_safetensors(path: Path) -> Checkpoint:
    return SafetensorsCheckpoint(path)


@register_container("torch", lambda p: p.is_file() and p.suffix in PICKLE_SUFFIXES)
def _open_torch(path: Path) -> Checkpoint:
    return TorchCheckpoint(path)


@register_container("sat", lambda p: p.is_dir() and (p / "latest").is_file())
def _open_sat(path: Path) -> Checkpoint:
    return SatCheckpoint(path)


@register_container("diffusers-pipeline", lambda p: p.is_dir() and (p / "model_index.json").is_file())
def _open_pipeline(path: Path) -> PipelineCheckpoint:
    index = _read_json(path / "model_index.json")
    comps: dict[str, Checkpoint] = {}
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list) or spec[:1] == [None]:
            continue
        if not _plain_folder_name(name):
            raise CorruptFileError(
                f"{path / 'model_index.json'} names a component {name!r}, which is not a folder name",
                hint="a component is a folder inside the pipeline folder; fix model_index.json",
            )
        sub = path / name
        if sub.is_dir() and _find_weights(sub) is not None:
            comps[name] = open_component_folder(sub)
    if not comps:
        raise NotFoundError(
            f"{path} is a pipeline folder but none of its components has weights",
            hint="download the component weights (e.g. transformer/diffusion_pytorch_model.safetensors) into the folder",
        )
    return PipelineCheckpoint(path, index, comps)


@register_container("diffusers", lambda p: p.is_dir() and _find_weights(p) is not None)
def open_component_folder(path: Path) -> Checkpoint:
    weights = _find_weights(path)
    if weights is None:
        raise NotFoundError(
            f"{path} holds no weights file", hint="expected diffusion_pytorch_model.safetensors"
        )
    ckpt = open_checkpoint(weights)
    if not isinstance(ckpt, Checkpoint):
        raise UnsupportedFormatError(
            f"{weights} is not a single component's weights",
            hint="point weightsmith at one component's folder or weights file",
        )
    cfg = path / "config.json"
    if cfg.exists() or cfg.is_symlink():
        ckpt.set_config(_read_json(cfg), str(cfg))
        ckpt.files.append(cfg)
    ckpt.container = f"diffusers-folder ({ckpt.container})"
    ckpt.path = path
    return ckpt


def _find_weights(folder: Path) -> Path | None:
    for stem in WEIGHT_STEMS:
        for cand in (
            f"{stem}.safetensors.index.json",
            f"{stem}.safetensors",
            f"{stem}.bin.index.json",
            f"{stem}.bin",
        ):
            if (folder / cand).is_file():
                if cand.endswith(".bin.index.json"):
                    continue  # sharded pickles are not supported; fall through to a clear error below
                return folder / cand
    variants = sorted(folder.glob("diffusion_pytorch_model.*.safetensors"))
    return variants[0] if len(variants) == 1 else None


def _magic(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def open_checkpoint(path: str | Path) -> Checkpoint | PipelineCheckpoint:
    """Open any supported checkpoint file or folder lazily (see DESIGN.md, Contracts).

    A quantized artifact (compressed-tensors, ComfyUI comfy_quant or scaled fp8) opens as the plain checkpoint it
    encodes, dequantized on read (``io/quantized.py``), as a GGUF file does."""
    ck = _open(Path(path))
    if isinstance(ck, PipelineCheckpoint):
        try:
            for name, comp in ck.components.items():
                ck.components[name] = _plain_view(comp)
        except BaseException:
            ck.close()
            raise
        return ck
    if ck._config is None:
        try:
            found = _embedded(ck)
        except BaseException:
            ck.close()
            raise
        if found is not None:
            ck.set_config(*found)
    return _plain_view(ck)


def _plain_view(ck: Checkpoint) -> Checkpoint:
    """``ck``, or the dequantizing view of a quantized artifact (imported only for one: it needs torch)."""
    try:
        plain = quantized_kind(ck) is None
    except BaseException:
        ck.close()
        raise
    if plain:
        return ck
    from weightsmith.io.quantized import dequantizing_view

    return dequantizing_view(ck)


def embedded_config(ck: Checkpoint) -> dict[str, Any] | None:
    """The Diffusers config weightsmith embedded in a file without config.json, if any
    (not yet checked against the weights: ``Checkpoint.config`` does that on first use)."""
    found = _embedded(ck)
    return None if found is None else found[0]


def _embedded(ck: Checkpoint) -> tuple[dict[str, Any], str] | None:
    raw = ck.metadata.get(CONFIG_METADATA_KEY)
    where = f"{ck.path}: metadata {CONFIG_METADATA_KEY}"
    if raw is None and ck.container == "sat":
        side = ck.path / "diffusers_config.json"
        if side.exists() or side.is_symlink():
            raw = read_json_file(side, hint="fix it or remove it")
            where = str(side)
    if raw is None:
        return None
    cfg = parse_json(raw, where, hint="re-export the file") if isinstance(raw, str) else raw
    if not isinstance(cfg, dict):
        return None
    return cfg, where


def path_kind(p: Path) -> str:
    """What a path that is neither a regular file nor a folder is, in words ("a FIFO")."""
    import stat

    try:
        mode = p.stat().st_mode
    except OSError:
        return "a broken symbolic link" if p.is_symlink() else "missing"
    for test, words in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def _open(p: Path) -> Checkpoint | PipelineCheckpoint:
    if not p.exists():
        if p.is_symlink():
            raise NotFoundError(f"{p} is a broken symbolic link", hint="check where it points")
        raise NotFoundError(f"{p} does not exist", hint="check the path")
    if not (p.is_file() or p.is_dir()):
        # Never opened: reading a FIFO blocks forever, a device never ends.
        raise UnsupportedFormatError(
            f"{p} is {path_kind(p)}, not a regular file or a folder",
            hint="point weightsmith at a checkpoint file or folder",
        )
    for c in _CONTAINERS:
        if c.claims(p):
            return c.open(p)
    if p.is_dir():
        if not any(p.iterdir()):
            raise NotFoundError(
                f"{p} is an empty folder", hint="point weightsmith at a checkpoint file or folder"
            )
        raise UnsupportedFormatError(
            f"{p} is not a checkpoint folder (no config.json + weights, model_index.json, or SAT 'latest')",
            hint="point weightsmith at the weights file or the model folder",
        )
    raise UnsupportedFormatError(
        f"{p}: unsupported file type {p.suffix or '(no suffix)'}",
        hint="weightsmith reads .safetensors, .safetensors.index.json, .pt/.pth/.bin/.ckpt, .gguf and SAT folders",
    )


def open_single(path: str | Path, component: str | None = None) -> Checkpoint:
    """Open a checkpoint of one component; for a pipeline folder pick ``component`` (default transformer)."""
    ck = open_checkpoint(path)
    if isinstance(ck, PipelineCheckpoint):
        name = component or ("transformer" if "transformer" in ck.components else next(iter(ck.components)))
        if name not in ck.components:
            raise NotFoundError(
                f"pipeline {path} has no component {name!r}", hint=f"choose one of {', '.join(ck.components)}"
            )
        for other, c in ck.components.items():
            if other != name:
                c.close()
        return ck.components[name]
    return ck
