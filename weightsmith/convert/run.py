"""`weightsmith convert`: open, plan, stream into the target layout's container, summarise."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from weightsmith.convert.engine import Plan, make_plan, stream, summary_lines
from weightsmith.errors import UsageError
from weightsmith.families import Detection, get_component
from weightsmith.io import Checkpoint, PipelineCheckpoint, open_checkpoint
from weightsmith.io.atomic import atomic_dir
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
    """config.json for a Diffusers output, derived from the output shapes and detected variant."""
    import diffusers

    comp = get_component(plan.detection.family, plan.detection.component)
    out_det = Detection(
        plan.detection.family,
        plan.detection.component,
        "diffusers",
        plan.detection.variant,
        "",
        plan.detection.notes,
        plan.detection.facts,
    )
    cfg = comp.diffusers_config(out_det, plan.output_infos())
    return {
        "_class_name": comp.class_name(plan.detection.variant),
        "_diffusers_version": diffusers.__version__,
        **cfg,
    }


def write_plan(plan: Plan, dst: Path, *, shard_size: str, overwrite: bool, progress: bool) -> Path:
    """Write a plan's output in the container its target layout calls for."""
    specs = plan.spec_tuples
    tensors = stream(plan, progress)
    layout, component = plan.target_layout, plan.detection.component
    if layout == "diffusers":
        return write_diffusers_component(dst, specs, tensors, output_config(plan), shard_size, overwrite)
    if layout == "sat":
        if component == "transformer":
            return write_sat(dst, specs, tensors, overwrite)
        if dst.suffix not in (".pt", ".pth"):
            raise UsageError(
                f"a SAT {component} is a single torch file", hint="give DST ending in .pt (e.g. 3d-vae.pt)"
            )
        return write_torch_file(dst, specs, tensors, overwrite)
    # original layout: a single file, or a folder of shards
    if dst.suffix == ".safetensors":
        return write_safetensors(dst, specs, tensors, overwrite=overwrite)
    if dst.suffix in (".pt", ".pth", ".ckpt"):
        wrap = "state_dict" if plan.detection.family == "sana" and component == "transformer" else None
        return write_torch_file(dst, specs, tensors, overwrite, wrap=wrap)
    with atomic_dir(dst, overwrite) as tmp:
        write_shards_into(tmp, specs, tensors, _parse_size(shard_size))
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
) -> ConvertResult:
    """Convert a component checkpoint or a whole pipeline folder into layout ``to``."""
    if to not in LAYOUTS:
        raise UsageError(f"unknown layout {to!r}", hint=f"choose one of {', '.join(LAYOUTS)}")
    _parse_size(shard_size)
    dst = Path(dst)
    ck = open_checkpoint(src)
    try:
        if isinstance(ck, PipelineCheckpoint):
            return _convert_pipeline(ck, dst, to, family, dtype, shard_size, prefix, overwrite, progress)
        plan = make_plan(ck, to, family=family, dtype=dtype, prefix=prefix)
        write_plan(plan, dst, shard_size=shard_size, overwrite=overwrite, progress=progress)
        return ConvertResult(dst, summary_lines(plan))
    finally:
        ck.close()


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
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
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
