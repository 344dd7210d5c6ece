"""Where a plan's output goes: the container its target layout calls for.

Diffusers output is a component folder with a derived config.json; original output a single
safetensors or torch file, or a folder of shards; SAT output a SAT folder (a non-transformer
component: one torch file). Original and SAT output carry the source's Diffusers config as
provenance, so converting back loses nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from weightsmith.convert.config import output_config, provenance_config
from weightsmith.convert.engine import DIFFUSERS, SAT, Plan, stream
from weightsmith.errors import UsageError
from weightsmith.families import get_component
from weightsmith.io.atomic import atomic_dir
from weightsmith.io.base import CONFIG_METADATA_KEY
from weightsmith.io.writers import (
    parse_size,
    write_diffusers_component,
    write_safetensors,
    write_sat,
    write_shards_into,
    write_torch_file,
)


def write_plan(
    plan: Plan, dst: Path, *, shard_size: str, overwrite: bool, progress: bool, tensors: Any = None
) -> Path:
    """Write a plan's output in the container its target layout calls for (``tensors``: a stream
    to write instead of the plan's own, e.g. one with LoRAs fused in)."""
    specs = plan.spec_tuples
    tensors = stream(plan, progress) if tensors is None else tensors
    layout, component = plan.target_layout, plan.detection.component
    if layout == DIFFUSERS:
        stem = get_component(plan.detection.family, component).weights_stem
        return write_diffusers_component(
            dst, specs, tensors, output_config(plan), shard_size, overwrite, stem=stem
        )
    cfg = provenance_config(plan)
    meta = {CONFIG_METADATA_KEY: json.dumps(cfg, sort_keys=True)} if cfg else {}
    if layout == SAT:
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
        comp = get_component(plan.detection.family, component)
        wrap = comp.torch_wrap.get(layout)
        return write_torch_file(dst, specs, tensors, overwrite, wrap=wrap, side=meta if wrap else None)
    with atomic_dir(dst, overwrite) as tmp:
        write_shards_into(tmp, specs, tensors, parse_size(shard_size), metadata=meta)
    return dst
