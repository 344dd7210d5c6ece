"""``export_onnx``: any artifact weightsmith reads -> a folder of validated ONNX graphs.

Per part (transformer, VAE decoder, VAE encoder): build the family's diffusers model with
``weightsmith.load`` (any container, layout or quantized artifact), trace it with the family's
export plan and patches (``weightsmith.onnx.trace``), check it in ONNX Runtime against the
unpatched torch model at two shapes (``weightsmith.onnx.validate``; exit 1 over tolerance), then
make the fp16 or INT8 variant when asked and check that too. Everything is written under a
temporary folder renamed into place at the end (``io.atomic``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from weightsmith.convert.engine import resolve_detection
from weightsmith.errors import UsageError
from weightsmith.families import get_component
from weightsmith.families.export import PARTS, TRANSFORMER, ExportPlan
from weightsmith.io import open_checkpoint, open_single
from weightsmith.io.atomic import atomic_dir
from weightsmith.io.base import PipelineCheckpoint
from weightsmith.load import build_model, weights_for
from weightsmith.onnx.layout import FORMAT, GRAPH, MANIFEST, subfolder, write_json
from weightsmith.onnx.trace import MIN_OPSET, export_graph
from weightsmith.onnx.validate import validate
from weightsmith.onnx.variants import QUANTIZE, make_variant
from weightsmith.progress import bar

DTYPES = ("fp32", "fp16", "bf16")
COMPONENTS = (*PARTS, "all")


@dataclass(frozen=True)
class PartResult:
    """One exported graph: where it is, its interface and what validation measured."""

    part: str
    family: str
    variant: str
    graph: str
    kind: str  # fp32, fp16, bf16 or int8
    interface: dict[str, Any]
    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class ExportResult:
    dst: str
    opset: int
    dtype: str
    quantize: str | None
    parts: list[PartResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _held(src: Path) -> set[str]:
    """The components (``transformer``, ``vae``) ``src`` holds: a pipeline's, or the one file's."""
    ck = open_checkpoint(src)
    try:
        if isinstance(ck, PipelineCheckpoint):
            return set(ck.components)
        return {resolve_detection(ck).component}
    finally:
        ck.close()


def _parts(component: str, src: Path) -> list[str]:
    """``all``: every part of the components ``src`` holds."""
    if component not in COMPONENTS:
        raise UsageError(f"unknown --component {component!r}", hint="one of: " + ", ".join(COMPONENTS))
    if component != "all":
        return [component]
    held = _held(src)
    parts = [p for p in PARTS if _component_of(p) in held]
    if not parts:
        raise UsageError(f"{src} holds no transformer or VAE", hint="give a model or pipeline folder")
    return parts


def _check_bf16(device: str) -> None:
    """A bf16 graph is refused where ONNX Runtime cannot run it: an export that cannot be
    validated is not one a user can trust (and writing it anyway would hide that)."""
    from weightsmith.onnx.runtime import bf16_gap

    op = bf16_gap(device)
    if op is not None:
        raise UsageError(
            f"ONNX Runtime on {device} has no bfloat16 {op} kernel, so a bf16 graph could not be run or validated",
            hint="export --dtype fp16 (or fp32), or --dtype bf16 with --device cuda and onnxruntime-gpu",
        )


def _component_of(part: str) -> str:
    return "transformer" if part == TRANSFORMER else "vae"


def _sizes(plan: ExportPlan, height: int | None, width: int | None, frames: int | None) -> ExportPlan:
    """The plan traced at the user's sizes (units of the part's first input)."""
    given = {k: v for k, v in (("height", height), ("width", width), ("frames", frames)) if v is not None}
    if not given:
        return plan
    for k, v in given.items():
        m, off = plan.multiples.get(k, 1), plan.offsets.get(k, 0)
        if v < 1 or (v - off) % m:
            rule = f"{m}k + {off}" if off else f"a multiple of {m}"
            raise UsageError(f"--{k} {v} does not fit the {plan.part}", hint=f"{k} must be {rule}")
    from dataclasses import replace

    return replace(plan, sizes={**plan.sizes, **given})


def _load(src: Path, part: str, device: str, dtype: torch.dtype) -> tuple[Any, Any, torch.nn.Module]:
    name = _component_of(part)
    ck = open_single(src, name)
    det = resolve_detection(ck)
    if det.component != name:
        ck.close()
        raise UsageError(
            f"{src} holds a {det.family} {det.component}, not a {name}",
            hint=f"use --component {'transformer' if det.component == 'transformer' else 'vae-decoder'}",
        )
    model = build_model(ck, weights_for(ck, torch.device(device), None), family=det.family, device=device)
    if dtype != torch.float32:
        model = model.to(dtype)
    return get_component(det.family, det.component), det, model.eval()


def _reference_calibration(src: Path, part: str, settings: Any) -> list[dict[str, Any]] | None:
    """The transformer's inputs in ``src``'s reference generations (a pipeline folder), else None."""
    if part != TRANSFORMER or not (src / "model_index.json").is_file():
        return None
    from weightsmith.onnx.calibrate import reference_inputs
    from weightsmith.verify.settings import GenerationSettings

    return reference_inputs(src, settings or GenerationSettings(steps=4))


def export_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    component: str = "transformer",
    opset: int = MIN_OPSET,
    dtype: str = "fp32",
    quantize: str | None = None,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    calibration: Sequence[Mapping[str, Any]] | None = None,
    calibration_settings: Any = None,
) -> ExportResult:
    """Export ``component`` (``transformer``, ``vae-decoder``, ``vae-encoder`` or ``all``) of ``src``
    to the folder ``dst`` (see ``weightsmith.onnx.layout``); raises GateFailed (exit 1) when a
    graph disagrees with torch. ``calibration``: inputs for ``int8-static``; by default, when
    ``src`` is a pipeline folder, the transformer's inputs in its reference generations under
    ``calibration_settings`` (a verify ``GenerationSettings``; default: the family's, 4 steps),
    else the plan's example inputs at its two shapes."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}", hint="one of: " + ", ".join(DTYPES))
    if quantize is not None and quantize not in QUANTIZE:
        raise UsageError(f"unknown --quantize {quantize!r}", hint="one of: " + ", ".join(QUANTIZE))
    if quantize and dtype != "fp32":
        raise UsageError("--quantize works on fp32 graphs", hint="drop --dtype or --quantize")
    if opset < MIN_OPSET:
        raise UsageError(f"opset {opset} is older than {MIN_OPSET}", hint=f"use --opset {MIN_OPSET} or newer")
    if dtype == "bf16":
        _check_bf16(device)
    src = Path(src)
    parts = _parts(component, src)
    trace_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    results: list[PartResult] = []
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "opset": opset,
        "dtype": dtype,
        "quantize": quantize,
        "parts": {},
    }
    index: dict[str, Any] = {}
    with atomic_dir(dst, overwrite) as tmp, bar(len(parts) * 5, "export onnx", "step") as progress:
        for part in parts:
            comp, det, model = _load(src, part, device, trace_dtype)
            progress.update()
            config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
            plan = _sizes(comp.export_plan(config, det.variant, part), height, width, frames)
            folder = tmp / subfolder(part)
            folder.mkdir()
            reference = comp.export.module(model, plan)
            with comp.export.patched(model):
                graph = export_graph(comp.export.module(model, plan), plan, folder / GRAPH, opset)
            progress.update()
            kind = "bf16" if dtype == "bf16" else "fp32"
            errors = validate(graph, reference, plan, kind, device, on_shape=progress.update)
            if dtype == "fp16" or quantize:
                kind = "fp16" if dtype == "fp16" else "int8"
                calib = calibration
                if quantize == "int8-static" and calib is None:
                    calib = _reference_calibration(src, part, calibration_settings)
                manifest["calibration"] = (
                    f"{len(calib)} reference denoising calls" if calib else "example inputs"
                )
                make_variant(graph, kind, quantize, plan, calib)
                errors = validate(graph, reference, plan, kind, device)
            progress.update()
            cfg = {"_class_name": comp.class_name(det.variant), **config}
            write_json(folder / "config.json", cfg)
            index[subfolder(part)] = ["diffusers", cfg["_class_name"]]
            entry = {
                "family": det.family,
                "variant": det.variant,
                "graph": f"{subfolder(part)}/{GRAPH}",
                "kind": kind,
                "interface": plan.describe(),
                "validation": [e.as_dict() for e in errors],
            }
            manifest["parts"][part] = entry
            results.append(
                PartResult(
                    part,
                    det.family,
                    det.variant,
                    entry["graph"],
                    kind,
                    entry["interface"],
                    entry["validation"],
                )
            )
            del model, reference
        write_json(tmp / MANIFEST, manifest)
        write_json(tmp / "model_index.json", {"_class_name": "weightsmith-onnx", **index})
    return ExportResult(str(dst), opset, dtype, quantize, results)
