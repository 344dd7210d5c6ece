"""The ``export`` command group and its ``onnx`` subcommand."""

from __future__ import annotations

import click

COMPONENTS = ("transformer", "vae-decoder", "vae-encoder", "all")


@click.group("export")
def export_group() -> None:
    """Export models to other runtimes' formats (ONNX)."""


@export_group.command("onnx")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--component", type=click.Choice(COMPONENTS), default="transformer", show_default=True)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18 or newer).")
@click.option(
    "--dtype",
    type=click.Choice(("fp32", "fp16", "bf16")),
    default="fp32",
    show_default=True,
    help="fp16: converted after export, overflow-prone ops kept in fp32; bf16: traced in bf16.",
)
@click.option(
    "--quantize",
    type=click.Choice(("int8-dynamic", "int8-static")),
    help="INT8 with ONNX Runtime's quantizer (static: QDQ, calibrated).",
)
@click.option(
    "--height",
    type=int,
    help="Trace height, in the units of the part's input (latent; pixels for the encoder).",
)
@click.option("--width", type=int, help="Trace width (same units as --height).")
@click.option(
    "--frames", type=int, help="Trace frames (same units; fixed in graphs whose model loops over frames)."
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where torch traces and ONNX Runtime validates: cpu, cuda, cuda:N.",
)
@click.option("--overwrite", is_flag=True, help="Replace DST if it is an earlier export.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (schema weightsmith.export-onnx/1)."
)
def onnx_command(
    src: str,
    dst: str,
    component: str,
    opset: int,
    dtype: str,
    quantize: str | None,
    height: int | None,
    width: int | None,
    frames: int | None,
    device: str,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Export SRC's transformer and/or VAE (any layout, container or quantized artifact weightsmith
    reads; a pipeline folder for --component all) to the ONNX folder DST, one subfolder per part.

    Each graph is run in ONNX Runtime at two shapes and compared with torch; a graph over its
    tolerance fails the export (exit 1) naming the output and its max abs/rel error.

    \b
    Example:
      weightsmith export onnx Wan2.1-T2V-1.3B-Diffusers out/wan-onnx --component all
      weightsmith export onnx sana.safetensors out/sana-int8 --quantize int8-dynamic
    """
    import json

    from weightsmith.api import export_onnx
    from weightsmith.cli_progress import bars

    result = export_onnx(
        src,
        dst,
        component=component,
        opset=opset,
        dtype=dtype,
        quantize=quantize,
        height=height,
        width=width,
        frames=frames,
        device=device,
        overwrite=overwrite,
        progress=bars(),
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
        return
    for p in result.parts:
        worst = max((e["max_rel"] for e in p["errors"]), default=0.0)
        free = ", ".join(p["interface"]["dynamic"]) or "none"
        click.echo(
            f"{p['part']}: {dst}/{p['graph']} ({p['family']} {p['variant']}, {p['kind']}); free dims: {free}; "
            f"max rel error vs torch {worst:.2g} at two shapes"
        )
