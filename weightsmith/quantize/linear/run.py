"""`weightsmith quantize SRC DST --scheme {int8,fp8,fp8-tensor,fp8-e5m2,int4,int4-g64,int4-g32,int4-asym,nvfp4,mxfp4,mxfp8}`:
a transformer's (or text encoder's) Linear weights as INT8/FP8/INT4/FP4 safetensors, in the layout their consumers load.

* ``--format compressed-tensors`` (default; DST a folder): a Diffusers component folder whose
  config.json is the Diffusers config plus compressed-tensors' ``quantization_config``, and whose
  safetensors hold each quantized Linear as that format defines it (see ``formats``); nvfp4 and
  mxfp4 are weight-only ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized``.
* ``--format comfy`` (DST a ``.safetensors`` file): ComfyUI's current comfy_quant file in the
  layout ComfyUI's native model reads (``quant.comfy_layout``, else ``quant.gguf_layout``; T5/UMT5
  text encoders in transformers' names) for fp8 (written per tensor), fp8-tensor,
  fp8-e5m2, int8-tensor, mxfp8 and nvfp4 (padded, swizzled: see ``comfy``), for the families
  whose ``quant.comfy_fp8`` says ComfyUI loads one (else ``quant.comfy_refusal`` says why not).
  Chosen by default when DST ends in .safetensors. Calibrated activation ranges become
  ``input_scale``; the rest is marked ``full_precision_matrix_mult`` (``comfy.plan_matmul``).
* ``--format comfy-legacy``: the same file in the legacy scaled-fp8 layout (a ``scaled_fp8``
  marker, ``scale_weight``), fp8-tensor only: ComfyUI reads every legacy layer as e4m3.

The run streams like the GGUF runner: open lazily, detect, plan the conversion to the output
layout, then quantize each tensor the policy selects on the chosen device as the stream reaches
it; reading, quantizing and writing overlap as a bounded pipeline (pipeline.py: a few tensors in
flight). Each run records per layer the scheme, the weight's SQNR (measure.py: one pass over row
chunks) and the bytes before and after (``DST.layers.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import torch

from weightsmith._version import __version__
from weightsmith.convert.config import load_config, output_config, provenance_config
from weightsmith.convert.engine import Plan, make_plan, resolve_detection, stream
from weightsmith.errors import UsageError
from weightsmith.families import Detection, components, get_component
from weightsmith.io import Checkpoint, open_single
from weightsmith.io.base import CONFIG_METADATA_KEY, dtype_name
from weightsmith.io.quantized import SHAPES_KEY
from weightsmith.io.writers import SpecT, write_diffusers_component, write_safetensors
from weightsmith.kernels.linear import LINEAR_SCHEMES, LinearScheme, get_linear_scheme, quantize_weight
from weightsmith.quantize.device import pick_device
from weightsmith.quantize.keep import KeepBlocks, check_keep_globs, parse_keep_blocks
from weightsmith.quantize.linear.calibrated import (
    CALIBRATED_ACTIVATIONS,
    check_absmax,
    input_global_scale,
    unseen_note,
)
from weightsmith.quantize.linear.checks import (
    check_calibration,
    check_comfy_options,
    layer_decision,
    per_layer_schemes,
)
from weightsmith.quantize.linear.comfy import (
    ComfyMatmul,
    check_comfy_legacy,
    comfy_marker_spec,
    comfy_quant_specs,
    comfy_quant_tensors,
    comfy_scheme,
    comfy_specs,
    comfy_tensors,
    plan_matmul,
)
from weightsmith.quantize.linear.formats import (
    SCHEME_KEY,
    SOURCE_DTYPE_KEY,
    check_activations,
    ct_format,
    ct_mixed_quantization_config,
    ct_quantization_config,
    ct_specs,
    ct_tensors,
)
from weightsmith.quantize.linear.measure import measured_sqnr
from weightsmith.quantize.linear.policy import LinearPolicy
from weightsmith.quantize.linear.sensitive import full_precision_layers
from weightsmith.quantize.options import LinearOptions, QuantizeOptions, SchemeFamily, check_gguf_options
from weightsmith.quantize.outputs import check_outputs, staged_outputs
from weightsmith.quantize.pipeline import ahead
from weightsmith.quantize.report import LayerRecord, QuantizeResult, layers_path, write_layer_report

FORMATS = ("compressed-tensors", "comfy", "comfy-legacy")
COMFY_FORMATS = ("comfy", "comfy-legacy")


def comfy_families(component: str | None = None) -> str:
    """The components (of kind ``component``, else all, transformers first) ComfyUI loads a
    quantized single file of (``quant.comfy_fp8``), for messages."""
    comps = [c for c in components() if c.quant.comfy_fp8 and component in (None, c.component)]
    comps.sort(key=lambda c: c.component != "transformer")
    return ", ".join(f"{c.family} {c.component.replace('_', ' ')}" for c in comps) or "none"


def resolve_format(fmt: str | None, scheme: LinearScheme, dst: Path) -> str:
    """The output layout: as asked, else ComfyUI for a .safetensors DST or a ComfyUI-only scheme."""
    if fmt in (None, "auto"):
        fmt = (
            "comfy" if dst.suffix == ".safetensors" or scheme.formats == ("comfy",) else "compressed-tensors"
        )
    if fmt not in FORMATS:
        raise UsageError(
            f"--format {fmt} does not hold {scheme.name} weights", hint=f"choose one of {', '.join(FORMATS)}"
        )
    if fmt in COMFY_FORMATS:
        scheme = comfy_scheme(scheme)
    if fmt == "comfy-legacy" and "comfy" in scheme.formats:
        check_comfy_legacy(scheme)
    elif fmt not in scheme.formats:
        if scheme.kind == "fp4" and fmt != "compressed-tensors":
            hint = "mxfp4 is written in compressed-tensors folders (DST without .safetensors); ComfyUI takes nvfp4"
        elif fmt != "compressed-tensors":
            hint = "use --scheme fp8, fp8-e5m2, int8-tensor, mxfp8 or nvfp4 with --format comfy"
        elif scheme.microscaled:
            hint = f"mxfp8 is written in ComfyUI's format only (--format comfy, {comfy_families()})"
        elif scheme.kind == "float":
            hint = (
                "compressed-tensors stores fp8 as e4m3fn only: use --scheme fp8 or fp8-tensor, "
                f"or --format comfy ({comfy_families()})"
            )
        else:
            hint = f"use --scheme int8 (per channel) for compressed-tensors, or --format comfy ({comfy_families()})"
        raise UsageError(f"--scheme {scheme.name} cannot be written as {fmt}", hint=hint)
    if fmt in COMFY_FORMATS and dst.suffix != ".safetensors":
        raise UsageError(
            f"ComfyUI output {dst} should be one .safetensors file",
            hint="name DST like model-fp8.safetensors",
        )
    if fmt == "compressed-tensors" and dst.suffix == ".safetensors":
        raise UsageError(
            f"compressed-tensors output {dst} is a component folder", hint="give DST without .safetensors"
        )
    return fmt


def linear_cli_kwargs(
    scheme: str,
    fmt: str | None,
    keep_blocks: str | None,
    activations: str | None,
    *,
    calibrate: bool = False,
    dst: str | Path | None = None,
    sensitivity: str | None = None,
    fp_layers: int | None = None,
) -> dict[str, Any]:
    """Extra keyword arguments the quantize command passes to the scheme runner, checked before
    any work (calibration runs generations: a wrong combination must end before that).

    GGUF recipes take none of these: naming one with a gguf: scheme is a usage error."""
    if check_gguf_options(scheme, fmt, keep_blocks, activations, calibrate, sensitivity, fp_layers):
        return {}
    if fmt == "gguf":
        raise UsageError(
            f"--format gguf needs a gguf: scheme, not {scheme!r}", hint="e.g. --scheme gguf:Q8_0"
        )
    if dst is not None:  # the scheme, format and activations go together (raises if not)
        ls = get_linear_scheme(scheme)
        resolved = resolve_format(fmt, ls, Path(dst))
        check_activations(ls, activations, resolved)
        check_calibration(calibrate, activations, resolved)
    if not calibrate:
        check_absmax(activations, None)
    out: dict[str, Any] = {}
    if fmt is not None:
        out["format"] = fmt
    if keep_blocks is not None:
        parse_keep_blocks(keep_blocks)  # fail before any work (an empty value included)
        out["keep_blocks"] = keep_blocks
    if activations:
        out["activations"] = activations
    if sensitivity is not None or fp_layers is not None:
        out["sensitivity"], out["fp_layers"] = sensitivity, fp_layers
    return out


def _meta_model(det: Detection, cfg: dict[str, Any]) -> torch.nn.Module:
    with torch.device("meta"):
        return get_component(det.family, det.component).instantiate(det.variant, cfg)


def linear_weight_names(det: Detection, cfg: dict[str, Any]) -> set[str]:
    """Diffusers names of every nn.Linear weight in the family's class built with ``cfg``."""
    model = _meta_model(det, cfg)
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _output_map(plan: Plan) -> dict[tuple[tuple[str, ...], int], str]:
    """Each output of ``plan`` keyed by the source tensors it comes from and its place among the
    op's outputs: two plans of one source (Diffusers and the ComfyUI layout) then pair their names
    through renames and surgery alike (a SAT qkv split into q, k, v in both)."""
    return {(op.inputs, i): name for op in plan.ops if op.inputs for i, name in enumerate(op.outputs)}


def open_source(src: str | Path, config: str | Path | None) -> Checkpoint:
    """The source checkpoint; a quantized artifact is seen dequantized (its reader does that), so
    it can be re-quantized."""
    ck = open_single(src)
    if config is not None:
        ck.config = load_config(config)
    return ck


def _source_dtype(ck: Checkpoint) -> torch.dtype:
    dt = getattr(ck, "logical_dtype", None)
    if dt is not None:
        return dt
    floats = [i.dtype for i in ck.infos.values() if i.dtype in (torch.float32, torch.float16, torch.bfloat16)]
    return max(set(floats), key=floats.count) if floats else torch.float32


def quantize_linear(
    src: str | Path,
    dst: str | Path,
    scheme: str,
    *,
    imatrix: str | Path | None = None,
    keep: tuple[str, ...] = (),
    family: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    config: str | Path | None = None,
    report: bool = True,
    format: str | None = None,  # noqa: A002 - the CLI's option name
    keep_blocks: str | KeepBlocks | None = None,
    activations: str | None = None,
    shard_size: str = "5GB",
    activation_absmax: Mapping[str, float] | None = None,
    sensitivity: str | Path | None = None,
    fp_layers: int | None = None,
    schemes: Mapping[str, str] | None = None,
    label: str | None = None,
) -> QuantizeResult:
    """Quantize a transformer's Linear weights with an INT8/FP8/INT4/FP4 scheme into ``dst``.

    ``schemes``: Diffusers weight name -> scheme, one per layer (compressed-tensors only; a Linear
    it does not name is kept), as ``--scheme auto:compressed-tensors`` chooses; ``label``: the
    scheme recorded in the result."""
    opts = QuantizeOptions(imatrix, tuple(keep), family, device, overwrite, progress, config, report)
    lopts = LinearOptions(
        format, keep_blocks, activations, shard_size, activation_absmax, sensitivity, fp_layers
    )
    return run_linear(src, dst, scheme, opts, lopts, schemes, label)


def run_linear(
    src: str | Path,
    dst: str | Path,
    scheme: str,
    opts: QuantizeOptions,
    lopts: LinearOptions,
    schemes: Mapping[str, str] | None = None,
    label: str | None = None,
) -> QuantizeResult:
    """``quantize_linear`` with its options as typed values."""
    t0 = time.perf_counter()
    ls = get_linear_scheme(scheme)
    dst = Path(dst)
    fmt = resolve_format(lopts.format, ls, dst)
    asked = ls.name
    if fmt in COMFY_FORMATS:
        ls = comfy_scheme(ls)  # fp8 -> fp8-tensor: ComfyUI's fp8 layers take one scale
    activations = lopts.activations
    check_activations(ls, activations, fmt)
    absmax = check_absmax(activations, lopts.activation_absmax)
    check_calibration(absmax is not None, activations, fmt)
    check_comfy_options(lopts, fmt)
    per_layer = per_layer_schemes(schemes, fmt, activations)
    if opts.imatrix is not None:
        raise UsageError(
            "--imatrix applies to GGUF K/IQ recipes only", hint=f"drop it for --scheme {ls.name}"
        )
    kb = lopts.keep_blocks
    kb = kb if isinstance(kb, KeepBlocks) else parse_keep_blocks(kb)
    keep, overwrite, report = opts.keep, opts.overwrite, opts.report
    dev = pick_device(opts.device)
    check_outputs(dst, overwrite, report, folder=fmt == "compressed-tensors")
    ck = open_source(src, opts.config)
    try:
        det = resolve_detection(ck, opts.family)
        comp = get_component(det.family, det.component)
        spec = comp.quant
        plan_d = make_plan(ck, "diffusers", detection=det)
        cfg = output_config(plan_d)
        linear = linear_weight_names(det, cfg)
        if fmt == "compressed-tensors":
            out_plan, to_diffusers = plan_d, {s.name: s.name for s in plan_d.specs}
        else:
            if not spec.comfy_fp8:
                raise UsageError(
                    f"--format {fmt} writes the ComfyUI layout of {comfy_families(det.component)}; this is "
                    f"the {det.family} {det.component.replace('_', ' ')}: {spec.comfy_refusal}",
                    hint="use --format compressed-tensors (DST without .safetensors)",
                )
            out_plan = make_plan(ck, spec.comfy_layout or spec.gguf_layout, detection=det, prefix="")
            src_to_d, src_to_o = _output_map(plan_d), _output_map(out_plan)
            to_diffusers = {o: src_to_d[k] for k, o in src_to_o.items() if k in src_to_d}
        check_keep_globs(keep, [*to_diffusers.values(), *(s.name for s in out_plan.specs)])
        padded = fmt == "comfy" and ls.microscaled  # ComfyUI pads nvfp4/mxfp8 rows itself
        policy = LinearPolicy(spec, ls, linear, to_diffusers.values(), keep, kb, padded=padded)
        decisions = {
            s.name: (
                policy.decide(to_diffusers[s.name], s.shape, s.name)
                if s.name in to_diffusers
                else policy.decide("", s.shape)
            )
            for s in out_plan.specs
        }
        if per_layer is not None:
            decisions = {n: layer_decision(d, n, out_plan, per_layer) for n, d in decisions.items()}

        def scheme_of(name: str) -> LinearScheme:
            return per_layer[name] if per_layer is not None else ls

        matmul: dict[str, ComfyMatmul] = {}
        if fmt == "comfy":
            fp = full_precision_layers(
                lopts.sensitivity, lopts.fp_layers, {n.removesuffix(".weight") for n in linear}
            )
            for name, d in decisions.items():
                if d.quantize:
                    dmod = to_diffusers[name].removesuffix(".weight")
                    matmul[name] = plan_matmul(ls, dmod, lopts.activation_absmax, fp)
        specs: list[SpecT] = []
        ignore: set[str] = set()
        padded_shapes: dict[str, list[int]] = {}
        for s in out_plan.specs:
            d = decisions[s.name]
            if d.quantize:
                module = s.name.removesuffix(".weight")
                if fmt == "compressed-tensors":
                    lls = scheme_of(s.name)
                    specs += ct_specs(
                        module, s.shape, lls, ct_format(lls, activations, spec.ct_packed), activations
                    )  # type: ignore[arg-type]
                elif fmt == "comfy":
                    specs += comfy_quant_specs(module, s.shape, ls, matmul[s.name])
                    if padded and any(n % (ls.group_size or 1) for n in s.shape):
                        padded_shapes[s.name] = list(s.shape)
                else:
                    specs += comfy_specs(module, s.shape, ls)
            else:
                specs.append((s.name, s.shape, s.dtype))
                if s.name.endswith(".weight"):
                    ignore.add(s.name.removesuffix(".weight"))
        if not any(d.quantize for d in decisions.values()):
            narrow = any(d.reason.startswith("row ") for d in decisions.values())
            unit = "blocks" if ls.kind == "fp4" else "groups"
            alt = {"nvfp4": "choose int8 or fp8", "mxfp4": "choose nvfp4 (blocks of 16), int8 or fp8"}.get(
                ls.name, "choose a smaller group (int4-g32) or int8/fp8"
            )
            raise UsageError(
                f"{ls.name}: no Linear weight of {src} is left to quantize"
                + (f" (rows do not split into {unit} of {ls.group_size})" if narrow else ""),
                hint=alt if narrow else "loosen --keep / --keep-blocks",
            )
        layers: list[LayerRecord] = []
        notes: list[str] = []
        unseen: list[str] = []
        meta = {
            SCHEME_KEY: ls.name,
            SOURCE_DTYPE_KEY: dtype_name(_source_dtype(ck)),
            "weightsmith.version": __version__,
        }
        if activations:
            meta["weightsmith.activations"] = activations
        if padded_shapes:
            meta[SHAPES_KEY] = json.dumps(padded_shapes, sort_keys=True)

        def read() -> Iterator[tuple[str, torch.Tensor]]:  # stage 1 (a thread): read, convert
            with closing(ahead(stream(out_plan, opts.progress), 1, "read")) as source:
                yield from source

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:  # stage 2 (a thread): quantize, measure
            for name, t in read():
                d = decisions[name]
                before = t.numel() * t.element_size()
                if not d.quantize:
                    layers.append(
                        LayerRecord(name, tuple(t.shape), dtype_name(t.dtype), d.reason, before, before)
                    )
                    yield name, t
                    continue
                lls = scheme_of(name)
                qw = quantize_weight(t, lls, dev, name, "comfy" if padded else "compressed-tensors")
                err = measured_sqnr(qw, t.to(dev), name)  # also refuses blocks decoding to NaN/inf
                module = name.removesuffix(".weight")
                if fmt == "compressed-tensors":
                    igs = None
                    if activations in CALIBRATED_ACTIVATIONS and absmax is not None:
                        igs, seen = input_global_scale(absmax, module)
                        if not seen:
                            unseen.append(module)
                    items = ct_tensors(module, qw, ct_format(lls, activations, spec.ct_packed), igs)
                elif fmt == "comfy":
                    items = comfy_quant_tensors(module, qw, matmul[name])
                else:
                    items = comfy_tensors(module, qw)
                after = sum(x.numel() * x.element_size() for _, x in items)
                mm = matmul[name].why if name in matmul else None
                layers.append(
                    LayerRecord(name, tuple(t.shape), lls.name, d.reason, before, after, err, matmul=mm)
                )
                del qw, t
                for k, x in items:
                    yield k, x.cpu()

        wa = "W4A4" if activations == "nvfp4" else "W8A8"
        if label is None:
            label = ls.name + (f" ({wa} {activations} activations)" if activations else "") + f", {fmt}"
            if asked != ls.name:
                label += f" (--scheme {asked} is written as {ls.name} here)"
        folder = fmt == "compressed-tensors"
        with (
            staged_outputs(dst, overwrite, report, folder=folder) as (tmp, table),
            closing(ahead(tensors(), 2, "quantize")) as quantized,
        ):
            if folder:
                if per_layer is not None:
                    used = {n: per_layer[n] for n, d in decisions.items() if d.quantize}
                    qcfg = ct_mixed_quantization_config(used, sorted(ignore), spec.ct_packed)
                else:
                    qcfg = ct_quantization_config(ls, activations, sorted(ignore), spec.ct_packed)
                write_diffusers_component(
                    tmp,
                    specs,
                    quantized,
                    {**cfg, "quantization_config": qcfg},
                    lopts.shard_size,
                    False,
                    meta,
                    stem=comp.weights_stem,
                )
            else:
                prov = provenance_config(out_plan)
                if prov:
                    meta[CONFIG_METADATA_KEY] = json.dumps(prov, sort_keys=True)
                if fmt == "comfy":
                    write_safetensors(tmp, specs, quantized, meta)
                else:
                    marker_spec, marker = comfy_marker_spec(ls)

                    def with_marker() -> Iterator[tuple[str, torch.Tensor]]:
                        yield from quantized
                        yield marker_spec[0], marker

                    write_safetensors(tmp, [*specs, marker_spec], with_marker(), meta)
            if unseen:
                notes.append(unseen_note(unseen))
            result = QuantizeResult(dst, label, layers, time.perf_counter() - t0, notes=notes)
            if table is not None:
                write_layer_report(dst, result, table)
    finally:
        ck.close()
    if report:
        result.report_path = layers_path(dst)
    return result


SCHEME_FAMILY = SchemeFamily(
    "linear",
    lambda s: s.lower() in LINEAR_SCHEMES,
    quantize_linear,
    lambda: list(LINEAR_SCHEMES),
)
