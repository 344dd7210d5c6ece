"""`weightsmith convert`: open, plan, stream into the target layout's container, summarise."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightsmith.convert.engine import Plan, make_plan, stream, summary_lines
from weightsmith.errors import UsageError
from weightsmith.families import Detection, get_component
from weightsmith.io import Checkpoint, PipelineCheckpoint, open_checkpoint
from weightsmith.io.atomic import atomic_dir
from weightsmith.io.base import CONFIG_METADATA_KEY
from weightsmith.io.writers import parse_size as _parse_size
from weightsmith.io.writers import (
    write_diffusers_component,
    write_safetensors,
    write_sat,
    write_shards_into,
    write_torch_file,
)

LAYOUTS = ("diffusers", "original", "sat")


@dataclass
class ConvertResult:
    dst: Path
    lines: list[str]


def output_config(plan: Plan) -> dict:
    """config.json for a Diffusers output: derived from the output shapes and detected variant,
    with config-only knobs (sample sizes, RoPE lengths...) taken from the source's own config
    when it has one."""
    import inspect as pyinspect

    import diffusers

    comp = get_component(plan.detection.family, plan.detection.component)
    d = plan.detection
    out_det = Detection(d.family, d.component, "diffusers", d.variant, "", d.notes, d.facts)
    cfg = comp.diffusers_config(out_det, plan.output_infos())
    params = pyinspect.signature(comp.model_class(d.variant).__init__).parameters
    knobs = {k: v for k, v in (plan.source_config or {}).items() if k in params and k not in cfg}
    return {
        "_class_name": comp.class_name(d.variant),
        "_diffusers_version": diffusers.__version__,
        **knobs,
        **cfg,
    }


def provenance_config(plan: Plan) -> dict | None:
    """The Diffusers config to embed in original/SAT output, so converting back loses nothing."""
    if plan.source_config is None:
        return None
    return {k: v for k, v in plan.source_config.items() if not k.startswith("_")} or None


def write_plan(
    plan: Plan, dst: Path, *, shard_size: str, overwrite: bool, progress: bool, tensors: Any = None
) -> Path:
    """Write a plan's output in the container its target layout calls for (``tensors``: a stream
    to write instead of the plan's own, e.g. one with LoRAs fused in)."""
    specs = plan.spec_tuples
    tensors = stream(plan, progress) if tensors is None else tensors
    layout, component = plan.target_layout, plan.detection.component
    if layout == "diffusers":
        return write_diffusers_component(dst, specs, tensors, output_config(plan), shard_size, overwrite)
    cfg = provenance_config(plan)
    meta = {CONFIG_METADATA_KEY: json.dumps(cfg, sort_keys=True)} if cfg else {}
    if layout == "sat":
        if component == "transformer":
            return write_sat(dst, specs, tensors, overwrite, diffusers_config=cfg)
        if dst.suffix not in (".pt", ".pth"):
            raise UsageError(
                f"a SAT {component} is a single torch file", hint="give DST ending in .pt (e.g. 3d-vae.pt)"
            )
        return write_torch_file(dst, specs, tensors, overwrite)
    # original layout: a single file, or a folder of shards
    if dst.suffix == ".safetensors":
        return write_safetensors(dst, specs, tensors, meta, overwrite=overwrite)
    if dst.suffix in (".pt", ".pth", ".ckpt"):
        wrap = "state_dict" if plan.detection.family == "sana" and component == "transformer" else None
        return write_torch_file(dst, specs, tensors, overwrite, wrap=wrap, side=meta if wrap else None)
    with atomic_dir(dst, overwrite) as tmp:
        write_shards_into(tmp, specs, tensors, _parse_size(shard_size), metadata=meta)
    return dst


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
    from weightsmith.quantize.runtime import dequantize_to_plain, quantized_artifact_kind

    if quantized_artifact_kind(src) is not None:  # compressed-tensors / ComfyUI fp8: dequantized
        return dequantize_to_plain(
            src, dst, to=to, dtype=dtype, family=family, shard_size=shard_size, prefix=prefix,
            overwrite=overwrite, progress=progress, config=config, loras=loras,
        )  # fmt: skip
    if loras and to != "diffusers":
        from weightsmith.io.atomic import check_destination, scratch_dir

        dst = Path(dst)
        check_destination(dst, overwrite)
        with scratch_dir(dst) as tmp:
            first = convert(
                src,
                Path(tmp) / "fused",
                "diffusers",
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
    if to not in LAYOUTS:
        raise UsageError(f"unknown layout {to!r}", hint=f"choose one of {', '.join(LAYOUTS)}")
    _parse_size(shard_size)
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
        return ConvertResult(dst, summary_lines(plan) + extra)
    finally:
        ck.close()


def _copy_plain(src: Path, dst: Path) -> None:
    """Copy a pipeline item that is not converted (tokenizer, scheduler, ...). Symbolic links are
    followed (Hugging Face cache folders are made of them); a FIFO, device or socket is refused,
    since copying one would hang or copy endless bytes."""
    from weightsmith.errors import InputError
    from weightsmith.io.open import path_kind

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
            if to == "sat" and plan.detection.component == "vae":
                target.mkdir()
                target = target / "3d-vae.pt"
            elif to == "original":
                target = tmp / name / "diffusion_pytorch_model.safetensors"
                target.parent.mkdir()
            write_plan(plan, target, shard_size=shard_size, overwrite=False, progress=progress)
            lines += [f"[{name}]", *summary_lines(plan)]
    return ConvertResult(dst, lines)


def _maybe_plan(comp: Checkpoint, to: str, family: str | None, dtype: str, prefix: str) -> Plan | None:
    from weightsmith.families import detect

    det = detect(comp.infos, comp.config)
    if det is None or (family and det.family != family):
        return None
    if to not in get_component(det.family, det.component).layouts:
        return None
    return make_plan(comp, to, dtype=dtype, prefix=prefix, detection=det)


def load_config(path: str | Path) -> dict:
    """Read a Diffusers config.json given as a file or the folder holding it.

    A checkpoint it is attached to (``ck.config = ...``) checks it on first use: types and
    ranges by the class of the weights' family, then against the weights themselves."""
    from weightsmith.errors import CorruptFileError, InputError, NotFoundError
    from weightsmith.families.config_check import check_finite
    from weightsmith.io.open import path_kind
    from weightsmith.io.structured import read_json_file

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
        if not (p.exists() or p.is_symlink()):
            raise NotFoundError(
                f"config folder {p.parent} holds no config.json",
                hint="pass a config.json or the folder that holds one",
            )
    if not (p.exists() or p.is_symlink()):
        raise NotFoundError(
            f"config {p} does not exist", hint="pass a config.json or the folder that holds one"
        )
    if not p.is_file():
        raise InputError(
            f"config {p} is {path_kind(p)}, not a regular file",
            hint="pass a config.json or the folder that holds one",
        )
    cfg = read_json_file(p, hint="pass a valid Diffusers config.json")
    if not isinstance(cfg, dict):
        raise CorruptFileError(f"{p} is not a JSON object", hint="pass a valid Diffusers config.json")
    check_finite(cfg, str(p))
    return cfg
