"""The verbs that read and write checkpoints: ``inspect``, ``convert``, ``quantize``, ``export_onnx``.

Each takes the command's options as keywords (paths as ``str`` or ``os.PathLike``), returns a
frozen record from ``weightsmith.api.results`` and raises ``weightsmith.errors``. The command
line calls exactly these functions. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

from weightsmith.api.auto_quantize import AutoQuantizeResult, quantize_auto, reject_plain_options
from weightsmith.api.results import ConvertResult, ExportResult, InspectResult, LayerRow, QuantizeResult
from weightsmith.api.scoring import GenerationOptions, settings_of
from weightsmith.progress import ProgressCallback, reporting

PathArg = str | os.PathLike[str]

# Steps of a calibration run unless the caller says otherwise: ranges settle within a few steps,
# and quantize should not cost a full-length generation per seed.
CALIBRATION_STEPS = 8


def inspect(path: PathArg) -> InspectResult:
    """Describe a checkpoint (file, SAT folder, Diffusers component or pipeline, GGUF) without
    loading its tensors: container, family, layout, variant, parameters, dtypes, metadata."""
    from weightsmith.inspect import describe

    return InspectResult.of(describe(os.fspath(path)))


def _tree_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def convert(
    src: PathArg,
    dst: PathArg,
    *,
    to: str,
    family: str | None = None,
    dtype: str = "keep",
    shard_size: str = "5GB",
    prefix: str = "",
    config: PathArg | None = None,
    overwrite: bool = False,
    lora: Sequence[str] = (),
    lora_scale: float = 1.0,
    progress: ProgressCallback | None = None,
) -> ConvertResult:
    """Convert ``src`` into layout ``to`` (``diffusers``, ``original``, ``sat``), streaming tensor
    by tensor into ``dst``, which appears only once complete.

    ``dtype``: keep | fp32 | bf16 | fp16; ``lora``: ``PATH[:SCALE]`` LoRAs fused while converting
    (``lora_scale`` for those without a scale); ``config``: a Diffusers config.json for a source
    whose shapes leave something open."""
    from weightsmith.convert.run import convert as run_convert
    from weightsmith.lora.cli import resolve_lora_options

    loras = resolve_lora_options(list(lora), lora_scale)
    with reporting(progress):
        r = run_convert(
            os.fspath(src),
            os.fspath(dst),
            to,
            family=family,
            dtype=dtype,
            shard_size=shard_size,
            prefix=prefix,
            overwrite=overwrite,
            config=None if config is None else os.fspath(config),
            loras=loras,
        )
    return ConvertResult(Path(r.dst), to, _tree_bytes(Path(r.dst)), tuple(r.lines))


@overload
def quantize(  # type: ignore[overload-overlap]  # the auto: literals before any str
    src: PathArg,
    dst: PathArg,
    *,
    scheme: Literal["auto:gguf", "auto:compressed-tensors"],
    format: str | None = None,  # noqa: A002 - the CLI's option name
    keep_blocks: str | None = None,
    activations: str | None = None,
    imatrix: PathArg | None = None,
    keep: Sequence[str] = (),
    family: str | None = None,
    device: str = "auto",
    config: PathArg | None = None,
    overwrite: bool = False,
    calibrate: bool = False,
    calibration: GenerationOptions | None = None,
    sensitivity: PathArg | None = None,
    fp_layers: int | None = None,
    target: str | Sequence[str] = (),
    max_size: str | int | None = None,
    max_tries: int = 4,
    report: PathArg | None = None,
    vae: PathArg | None = None,
    generation: GenerationOptions | None = None,
    cache_dir: PathArg | None = None,
    progress: ProgressCallback | None = None,
) -> AutoQuantizeResult: ...


@overload
def quantize(
    src: PathArg,
    dst: PathArg,
    *,
    scheme: str,
    format: str | None = None,  # noqa: A002 - the CLI's option name
    keep_blocks: str | None = None,
    activations: str | None = None,
    imatrix: PathArg | None = None,
    keep: Sequence[str] = (),
    family: str | None = None,
    device: str = "auto",
    config: PathArg | None = None,
    overwrite: bool = False,
    calibrate: bool = False,
    calibration: GenerationOptions | None = None,
    sensitivity: PathArg | None = None,
    fp_layers: int | None = None,
    target: str | Sequence[str] = (),
    max_size: str | int | None = None,
    max_tries: int = 4,
    report: PathArg | None = None,
    vae: PathArg | None = None,
    generation: GenerationOptions | None = None,
    cache_dir: PathArg | None = None,
    progress: ProgressCallback | None = None,
) -> QuantizeResult: ...


def quantize(
    src: PathArg,
    dst: PathArg,
    *,
    scheme: str,
    format: str | None = None,  # noqa: A002 - the CLI's option name
    keep_blocks: str | None = None,
    activations: str | None = None,
    imatrix: PathArg | None = None,
    keep: Sequence[str] = (),
    family: str | None = None,
    device: str = "auto",
    config: PathArg | None = None,
    overwrite: bool = False,
    calibrate: bool = False,
    calibration: GenerationOptions | None = None,
    sensitivity: PathArg | None = None,
    fp_layers: int | None = None,
    target: str | Sequence[str] = (),
    max_size: str | int | None = None,
    max_tries: int = 4,
    report: PathArg | None = None,
    vae: PathArg | None = None,
    generation: GenerationOptions | None = None,
    cache_dir: PathArg | None = None,
    progress: ProgressCallback | None = None,
) -> QuantizeResult | AutoQuantizeResult:
    """Quantize the transformer in ``src`` into ``dst`` with ``scheme`` (``gguf:Q4_K_M``, ``int8``,
    ``fp8``, ``int4``, ``nvfp4`` ...). The per-layer table is returned and written beside ``dst``
    as DST.layers.json.

    ``format``: compressed-tensors | comfy | comfy-legacy for the Linear schemes (None: by DST);
    ``keep_blocks``: ``first:N,last:M``; ``activations``: int8 | fp8 (W8A8); ``imatrix``: an
    importance matrix for the GGUF K/IQ types; ``keep``: globs of tensors left unquantized;
    ``calibrate``: measure each Linear's input range in reference generations of ``src`` first
    (``calibration``: their options as for ``verify``; 8 steps unless ``steps`` says otherwise),
    for static activation scales (nvfp4 W4A4, ComfyUI input_scale); ``sensitivity`` /
    ``fp_layers``: a ``sensitivity`` report's JSON and how many of its most sensitive layers keep
    full-precision matmuls in a ComfyUI file.

    ``scheme="auto:gguf"`` or ``"auto:compressed-tensors"`` searches one type per layer instead
    and returns an ``AutoQuantizeResult``: ``target`` (gates such as ``'psnr>=32'``) and/or
    ``max_size`` (bytes, or ``"8GB"``) say what DST must keep; each try is written and verified
    against ``src`` (``vae``, ``generation``: verify's generation options but ``device``;
    ``cache_dir``: verify's cache), at most ``max_tries``; ``report``: a folder for
    auto.json/.md/.html."""
    auto = {"target": target, "max_size": max_size, "report": report, "vae": vae, "generation": generation}
    if scheme.lower().startswith("auto:"):
        plain = {
            "format": format,
            "keep_blocks": keep_blocks,
            "activations": activations,
            "imatrix": imatrix,
            "family": family,
            "config": config,
            "calibrate": calibrate,
            "calibration": calibration,
            "sensitivity": sensitivity,
            "fp_layers": fp_layers,
        }
        return quantize_auto(
            src,
            dst,
            scheme,
            target=target,
            max_size=max_size,
            max_tries=max_tries,
            report=report,
            vae=vae,
            generation=generation,
            cache_dir=cache_dir,
            keep=keep,
            device=device,
            overwrite=overwrite,
            other=plain,
            progress=progress,
        )
    reject_plain_options(scheme, {**auto, "max_tries": max_tries if max_tries != 4 else None})
    from weightsmith.quantize.options import check_gguf_options
    from weightsmith.quantize.schemes import find_scheme

    runner = find_scheme(scheme)
    # The options only some schemes take, checked against the scheme (one entry per option),
    # before calibration runs generations. A GGUF job takes none (and skips the Linear runner's
    # module, which imports torch).
    if check_gguf_options(scheme, format, keep_blocks, activations, calibrate, sensitivity, fp_layers):
        extra: dict[str, Any] = {}
    else:
        from weightsmith.quantize.linear.run import linear_cli_kwargs

        extra = linear_cli_kwargs(
            scheme,
            format,
            keep_blocks,
            activations,
            calibrate=calibrate,
            dst=os.fspath(dst),
            sensitivity=None if sensitivity is None else os.fspath(sensitivity),
            fp_layers=fp_layers,
        )
    cal_lines: tuple[str, ...] = ()
    if calibrate:
        from weightsmith.verify.calibrate import calibrate_activations

        options: GenerationOptions = {"steps": CALIBRATION_STEPS, "device": device}
        options.update(calibration or {})
        with reporting(progress):
            cal = calibrate_activations(os.fspath(src), settings_of(options))
        extra["activation_absmax"] = cal.absmax
        cal_lines = tuple(cal.summary_lines())
    elif calibration:
        from weightsmith.errors import UsageError

        raise UsageError(
            "calibration options were given without calibrate=True", hint="pass calibrate=True, or drop them"
        )
    with reporting(progress):
        r = runner.run(
            os.fspath(src),
            os.fspath(dst),
            scheme,
            imatrix=None if imatrix is None else os.fspath(imatrix),
            keep=tuple(keep),
            family=family,
            device=device,
            overwrite=overwrite,
            config=None if config is None else os.fspath(config),
            **extra,
        )
    rows = tuple(
        LayerRow(
            x.name, tuple(x.shape), x.qtype, x.reason, x.bytes_before, x.bytes_after, x.sqnr_db, x.imatrix
        )
        for x in r.layers
    )
    return QuantizeResult(Path(r.dst), r.scheme, rows, r.seconds, r.report_path, tuple(r.notes), cal_lines, r)


def export_onnx(
    src: PathArg,
    dst: PathArg,
    *,
    component: str = "transformer",
    opset: int = 18,
    dtype: str = "fp32",
    quantize: str | None = None,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export ``component`` (``transformer``, ``vae-decoder``, ``vae-encoder`` or ``all``) of
    ``src`` to the ONNX folder ``dst``, one subfolder per part, each graph checked in ONNX Runtime
    against torch at two shapes (``weightsmith.errors.GateFailed`` over tolerance; nothing is
    written then). ``dtype``: fp32 | fp16 | bf16; ``quantize``: int8-dynamic | int8-static;
    ``height``/``width``/``frames``: the traced sizes in the part's input units. Needs the
    ``onnx`` extra."""
    import importlib.util
    from dataclasses import asdict

    from weightsmith.errors import UsageError
    from weightsmith.onnx.api import export_onnx as run_export

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # checked before any model is built: the exporter imports them on use
        raise UsageError(
            f"ONNX export needs the {missing[0]} package, which is not installed",
            hint="pip install 'weightsmith[onnx]' (on CUDA machines 'weightsmith[gpu]')",
        )

    with reporting(progress):
        r = run_export(
            os.fspath(src),
            os.fspath(dst),
            component=component,
            opset=opset,
            dtype=dtype,
            quantize=quantize,
            height=height,
            width=width,
            frames=frames,
            device=device,
            overwrite=overwrite,
        )
    return ExportResult(Path(r.dst), r.opset, r.dtype, r.quantize, tuple(asdict(p) for p in r.parts))
