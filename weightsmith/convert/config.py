"""Diffusers configs around a conversion: the config.json an output gets, the provenance kept in
original/SAT output, and reading a user's ``--config``.

They live with the engine (not the ``convert`` command) because quantize, load and verify build
plans too and need the same config for the same plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weightsmith.convert.engine import DIFFUSERS, Plan
from weightsmith.errors import CorruptFileError, InputError, NotFoundError
from weightsmith.families import Detection, get_component
from weightsmith.families.config_check import check_finite
from weightsmith.io.open import path_kind
from weightsmith.io.structured import read_json_file


def output_config(plan: Plan) -> dict[str, Any]:
    """config.json for a Diffusers output: derived from the output shapes and detected variant,
    with config-only knobs (sample sizes, RoPE lengths...) taken from the source's own config
    when it has one."""
    comp = get_component(plan.detection.family, plan.detection.component)
    d = plan.detection
    out_det = Detection(d.family, d.component, DIFFUSERS, d.variant, "", d.notes, d.facts)
    return comp.folder_config(
        d.variant, comp.diffusers_config(out_det, plan.output_infos()), plan.source_config
    )


def provenance_config(plan: Plan) -> dict[str, Any] | None:
    """The Diffusers config to embed in original/SAT output, so converting back loses nothing."""
    if plan.source_config is None:
        return None
    return {k: v for k, v in plan.source_config.items() if not k.startswith("_")} or None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a Diffusers config.json given as a file or the folder holding it.

    A checkpoint it is attached to (``ck.config = ...``) checks it on first use: types and
    ranges by the class of the weights' family, then against the weights themselves."""
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
