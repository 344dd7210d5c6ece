"""`weightsmith convert`: open, plan, stream into the target layout's container, summarise."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from weightsmith.convert.config import load_config
from weightsmith.convert.engine import DIFFUSERS, SAT, Plan, make_plan, summary_lines
from weightsmith.convert.write import write_plan
from weightsmith.errors import InputError, UsageError
from weightsmith.families import detect, get_component, layouts
from weightsmith.io import Checkpoint, PipelineCheckpoint, open_checkpoint
from weightsmith.io.atomic import atomic_dir, check_destination, scratch_dir
from weightsmith.io.open import path_kind
from weightsmith.io.quantized import dequantized_lines
from weightsmith.io.writers import parse_size


@dataclass
class ConvertResult:
    dst: Path
    lines: list[str]


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    *,
    family: str | None = None,
    dtype: str = "keep",
    shard_size: str = "5GB",
    prefix: str = "",
    overwrite: bool = False,
    progress: bool = True,
    config: str | Path | None = None,
    loras: Sequence[tuple[str, float]] = (),
) -> ConvertResult:
    """Convert a component checkpoint or a whole pipeline folder into layout ``to``.

    ``config``: a Diffusers config.json (or its folder) describing the source, for checkpoints
    whose shapes leave something open (e.g. a tiny model's attention head count).
    ``loras``: (path, strength) pairs fused into the transformer while streaming. LoRAs are fused
    in the Diffusers layout; for another target the fused model passes through a temporary
    Diffusers folder beside DST, removed at the end.
    """
    if loras and to != DIFFUSERS:
        dst = Path(dst)
        check_destination(dst, overwrite)
        with scratch_dir(dst) as tmp:
            first = convert(
                src,
                Path(tmp) / "fused",
                DIFFUSERS,
                family=family,
                shard_size=shard_size,
                progress=progress,
                config=config,
                loras=loras,
            )
            second = convert(
                Path(tmp) / "fused",
                dst,
                to,
                family=family,
                dtype=dtype,
                shard_size=shard_size,
                prefix=prefix,
                overwrite=overwrite,
                progress=progress,
            )
        return ConvertResult(dst, first.lines + second.lines)
    if to not in layouts():
        raise UsageError(f"unknown layout {to!r}", hint=f"choose one of {', '.join(layouts())}")
    parse_size(shard_size)
    dst = Path(dst)
    ck = open_checkpoint(src)
    try:
        if isinstance(ck, PipelineCheckpoint):
            return _convert_pipeline(ck, dst, to, family, dtype, shard_size, prefix, overwrite, progress)
        if config is not None:
            ck.set_config(load_config(config), str(config))
        plan = make_plan(ck, to, family=family, dtype=dtype, prefix=prefix)
        extra: list[str] = []
        tensors = None
        if loras:
            from weightsmith.lora import fused_stream

            tensors = fused_stream(plan, list(loras), progress=progress)
            extra = list(tensors.lines)
        write_plan(plan, dst, shard_size=shard_size, overwrite=overwrite, progress=progress, tensors=tensors)
        return ConvertResult(dst, summary_lines(plan) + dequantized_lines(ck, plan.cast) + extra)
    finally:
        ck.close()


def _copy_plain(src: Path, dst: Path) -> None:
    """Copy a pipeline item that is not converted (tokenizer, scheduler, ...). Symbolic links are
    followed (Hugging Face cache folders are made of them); a FIFO, device or socket is refused,
    since copying one would hang or copy endless bytes."""

    items = [src, *sorted(src.rglob("*"))] if src.is_dir() else [src]
    for p in items:
        if not (p.is_file() or p.is_dir()):
            raise InputError(
                f"{p} is {path_kind(p)}, not a regular file or folder",
                hint="remove it from the pipeline folder; only files and folders are copied",
            )
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _convert_pipeline(
    ck: PipelineCheckpoint,
    dst: Path,
    to: str,
    family: str | None,
    dtype: str,
    shard_size: str,
    prefix: str,
    overwrite: bool,
    progress: bool,
) -> ConvertResult:
    """Every weighted component the families know is converted; everything else is copied as is."""
    plans: dict[str, Plan] = {}
    for name, comp in ck.components.items():
        plan = _maybe_plan(comp, to, family, dtype, prefix)
        if plan is not None:
            plans[name] = plan
    if not plans:
        raise UsageError(
            f"{ck.path}: no component of this pipeline is a known family", hint="check the folder"
        )
    lines: list[str] = []
    with atomic_dir(dst, overwrite) as tmp:
        for item in sorted(ck.path.iterdir()):
            if item.name in plans:
                continue
            _copy_plain(item, tmp / item.name)
        for name, plan in plans.items():
            target = tmp / name
            if to == SAT and plan.detection.component == "vae":
                target.mkdir()
                target = target / "3d-vae.pt"
            elif to not in (DIFFUSERS, SAT):  # single-file layouts (original, ComfyUI's)
                target = tmp / name / "diffusion_pytorch_model.safetensors"
                target.parent.mkdir()
            write_plan(plan, target, shard_size=shard_size, overwrite=False, progress=progress)
            lines += [f"[{name}]", *summary_lines(plan)]
    return ConvertResult(dst, lines)


def _maybe_plan(comp: Checkpoint, to: str, family: str | None, dtype: str, prefix: str) -> Plan | None:
    det = detect(comp.infos, comp.config)
    if det is None or (family and det.family != family):
        return None
    if to not in get_component(det.family, det.component).layouts:
        return None
    return make_plan(comp, to, dtype=dtype, prefix=prefix, detection=det)
