"""The command line: one click group; errors become one line on stderr and exit 2."""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import click

from weightsmith._version import __version__
from weightsmith.cli_choices import FAMILY, LAYOUT
from weightsmith.cli_progress import bars, notes_on_stderr
from weightsmith.errors import WeightsmithError
from weightsmith.lora.cli import lora_command, lora_options
from weightsmith.verify.cli import calibration_request, generation_options_except


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="weightsmith")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Convert, quantize and verify CogVideoX, Wan and Sana checkpoints.

    \b
    Exit codes: 0 success, 1 a verification gate failed, 2 bad input or usage,
    3 internal error (a bug: please report it), 130 interrupted, 143 terminated (SIGTERM).
    An interrupted or failed run leaves no partial output behind.
    Run `weightsmith COMMAND --help` for each command's options.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--json", "as_json", is_flag=True, help="Print a machine-readable report (schema weightsmith.inspect/1)."
)
def inspect(path: str, as_json: bool) -> None:
    """Describe a checkpoint without loading it.

    PATH may be a .safetensors file, a *.safetensors.index.json, a torch pickle
    (.pt .pth .bin .ckpt, read safely), a SAT folder, a Diffusers component or pipeline
    folder, or a .gguf file. Reports container, family, layout, variant, parameter count,
    dtypes, bytes on disk, quantized tensor types and metadata. Unknown models are reported
    as unknown.

    \b
    Example:
      weightsmith inspect Wan2.1-T2V-1.3B/ --json | jq .detection
    """
    from weightsmith.api import inspect as api_inspect
    from weightsmith.inspect import format_report

    result = api_inspect(path)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_report(result.to_json()))


@cli.command()
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option(
    "--to",
    "to",
    required=True,
    type=LAYOUT,
    help=(
        "Target layout: diffusers (component folder), original (Wan/Sana reference names), sat (CogVideoX), "
        "llamacpp (text encoders' GGUF names); transformers = diffusers for text encoders."
    ),
)
@click.option("--family", type=FAMILY, help="Insist on this family.")
@click.option(
    "--dtype",
    type=click.Choice(["keep", "fp32", "bf16", "fp16"]),
    default="keep",
    show_default=True,
    help="Cast floating-point tensors while streaming.",
)
@click.option(
    "--shard-size", default="5GB", show_default=True, help="Largest safetensors shard (e.g. 5GB, 500MB)."
)
@click.option(
    "--prefix", default="", help="Key prefix for original-layout output, e.g. 'model.diffusion_model.'."
)
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=str),
    help="A Diffusers config.json (or its folder) for a source that has none, when shapes leave something open.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace DST if it exists (only once the new output is complete)."
)
@lora_options
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (schema weightsmith.convert/1)."
)
def convert(
    src: str,
    dst: str,
    to: str,
    family: str | None,
    dtype: str,
    shard_size: str,
    prefix: str,
    config: str | None,
    overwrite: bool,
    lora: tuple[str, ...],
    lora_scale: float,
    as_json: bool,
) -> None:
    """Convert SRC into another layout, streaming tensor by tensor.

    SRC is any checkpoint `inspect` reads (a file, a SAT folder, a Diffusers component or
    pipeline folder). Family, layout and variant are detected. Output is written under a
    temporary name and renamed into place only when complete.

    \b
    DST by target layout:
      diffusers  a component folder (config.json + sharded safetensors + index)
      original   a .safetensors file, a .pth/.pt file, or a folder of shards
      sat        a SAT folder (latest + 1/mp_rank_00_model_states.pt); a VAE: a .pt file

    \b
    Examples:
      weightsmith convert CogVideoX-2b-sat/transformer cogvideox-2b/transformer --to diffusers
      weightsmith convert Wan2.1-T2V-1.3B-Diffusers/transformer wan.safetensors --to original \\
          --prefix model.diffusion_model. --dtype bf16
    """
    from weightsmith.api import convert as api_convert

    result = api_convert(
        src,
        dst,
        to=to,
        family=family,
        dtype=dtype,
        shard_size=shard_size,
        prefix=prefix,
        overwrite=overwrite,
        config=config,
        lora=lora,
        lora_scale=lora_scale,
        progress=bars(),
    )
    for line in result.notes:
        click.echo(line, err=True)
    click.echo(json.dumps(result.to_json(), indent=1) if as_json else str(result.dst))


@cli.command()
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option(
    "--scheme",
    required=True,
    help="gguf:TYPE (e.g. gguf:Q4_K_M), or int8, int8-tensor, fp8, fp8-tensor, fp8-e5m2, int4, int4-g64, int4-g32, int4-g16, int4-asym, nvfp4, mxfp4, mxfp8, "
    "or auto:gguf / auto:compressed-tensors (one type per layer, chosen to pass --target).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["gguf", "compressed-tensors", "comfy", "comfy-legacy"]),
    help="Output layout for int8/fp8/int4 schemes (default: comfy for a .safetensors DST, else compressed-tensors).",
)
@click.option(
    "--keep-blocks", help="Keep the first N and last M transformer blocks unquantized: first:N,last:M."
)
@click.option(
    "--activations",
    type=click.Choice(["int8", "fp8", "nvfp4"]),
    help="Record W8A8: dynamic per-token int8 (with --scheme int8) or fp8 (with fp8, fp8-tensor) activations; "
    "or W4A4: nvfp4 (with --scheme nvfp4 and --calibrate).",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Measure each Linear's input range in reference generations of SRC (--seeds, --steps "
    "[default 8], --height, --width, --frames, --prompts, --negative-prompt, --text-len) for static "
    "activation scales: ComfyUI input_scale (--format comfy) or nvfp4 W4A4 input global scales.",
)
@click.option(
    "--sensitivity",
    type=click.Path(path_type=str),
    help="--format comfy: a `weightsmith sensitivity --report DIR` sensitivity.json ranking the Linear layers.",
)
@click.option(
    "--fp-layers",
    type=click.IntRange(min=0),
    help="--format comfy: the N most sensitive layers of --sensitivity keep full-precision matmuls "
    "(full_precision_matrix_mult) even when activations are calibrated.",
)
@click.option(
    "--imatrix",
    type=click.Path(path_type=str),
    help="llama.cpp imatrix file (GGUF or .dat) for the K/IQ types.",
)
@click.option("--keep", multiple=True, help="Glob of tensor names to keep unquantized (repeatable).")
@click.option("--family", type=FAMILY, help="Insist on this family.")
@click.option(
    "--device", default="auto", show_default=True, help="Where the kernels run: auto, cpu, cuda, cuda:N."
)
@click.option(
    "--config", type=click.Path(path_type=str), help="Diffusers config.json for a source that has none."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace DST if it exists (only once the new file is complete)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON (schema weightsmith.quantize/1; auto: weightsmith.auto/1).",
)
@click.option(
    "--target", "targets", multiple=True, help="auto: a gate DST must pass, e.g. 'psnr>=32' (repeatable)."
)
@click.option("--max-size", help="auto: the largest DST, e.g. 8GB (alone: the most faithful mix that fits).")
@click.option(
    "--max-tries",
    type=click.IntRange(1, 20),
    default=4,
    show_default=True,
    help="auto: artifacts written and verified at most.",
)
@click.option("--report", type=click.Path(path_type=str), help="auto: write auto.json/.md/.html here.")
@generation_options_except("--device")
def quantize(
    src: str,
    dst: str,
    scheme: str,
    imatrix: str | None,
    keep: tuple[str, ...],
    family: str | None,
    device: str,
    config: str | None,
    overwrite: bool,
    fmt: str | None,
    keep_blocks: str | None,
    activations: str | None,
    sensitivity: str | None,
    fp_layers: int | None,
    calibrate: bool,
    as_json: bool,
    targets: tuple[str, ...],
    max_size: str | None,
    max_tries: int,
    report: str | None,
    **gen: Any,
) -> None:
    """Quantize the transformer (or a text encoder) in SRC into DST with a named scheme.

    \b
    GGUF (--scheme gguf:TYPE): DST is one .gguf file with original-layout tensor names,
    which ComfyUI-GGUF and diffusers' from_single_file load as it is (Wan's 5-D patch
    embedding included). TYPE is a recipe: Q8_0 Q6_K Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S
    Q4_1 Q4_0 Q3_K_L Q3_K_M Q3_K_S Q2_K IQ4_NL IQ4_XS F16 BF16 F32. Bytes are identical to
    ggml's reference quantizer. On the CPU, fused C kernels are built on first use with the
    machine's C compiler (a few seconds, cached); without one, or with
    WEIGHTSMITH_GGML_BACKEND=torch, torch kernels (also used on GPUs) give the same bytes.

    \b
    INT8/FP8/INT4/FP4 (--scheme int8|int8-tensor|fp8|fp8-tensor|fp8-e5m2|int4|int4-g64|int4-g32|int4-g16|int4-asym|nvfp4|mxfp4|mxfp8):
    Linear weights only; embeddings, modulation, norms and the head stay in high precision.
      --format compressed-tensors  DST is a Diffusers component folder whose config.json
                                   carries compressed-tensors' quantization_config
                                   (nvfp4, mxfp4: weight-only, nvfp4 also W4A4 with
                                   --activations nvfp4 --calibrate)
      --format comfy               DST is a ComfyUI comfy_quant .safetensors in the names
                                   ComfyUI's native model reads (Wan: original layout;
                                   CogVideoX: ComfyUI's own names, layout comfy).
                                   Schemes: fp8 (written per tensor, = fp8-tensor), fp8-e5m2,
                                   int8-tensor, mxfp8 or nvfp4, padded as ComfyUI reads them.
                                   Layers without a calibrated input_scale, and the
                                   --fp-layers most sensitive of --sensitivity, are marked
                                   full_precision_matrix_mult
      --format comfy-legacy        DST is a legacy ComfyUI scaled-fp8 .safetensors (fp8-tensor)
    A T5 / UMT5 text encoder (CogVideoX's, Wan's) goes to ComfyUI's files in transformers'
    names (t5xxl / umt5_xxl fp8_e4m3fn_scaled); to compressed-tensors folders that
    transformers' from_pretrained loads. Sana's Gemma-2: compressed-tensors only.

    --calibrate runs reference generations of SRC (as verify does; --seeds, --steps [8],
    --height, --width, --frames, --prompts, --text-len) and measures each Linear's largest
    input, for static activation scales (ComfyUI input_scale, nvfp4 W4A4's input_global_scale).

    A per-layer table (type, SQNR in dB, bytes before and after) is printed and written
    beside DST as DST.layers.json.

    \b
    Examples:
      weightsmith quantize Wan2.1-T2V-14B-Diffusers/ wan2.1-t2v-14b-Q4_K_M.gguf --scheme gguf:Q4_K_M
      weightsmith quantize wan.safetensors wan-Q3_K_M.gguf --scheme gguf:Q3_K_M --imatrix wan.imatrix.gguf
      weightsmith quantize Wan2.1-T2V-14B-Diffusers/ wan-int4/ --scheme int4 --keep-blocks first:1,last:1
      weightsmith quantize Wan2.1-T2V-14B-Diffusers/ wan-fp8-scaled.safetensors --scheme fp8-tensor
      weightsmith quantize Sana_1600M_1024px_diffusers/ sana-w4a4/ --scheme nvfp4 --activations nvfp4 --calibrate --seeds 0-3
      weightsmith quantize Wan2.1-T2V-14B-Diffusers/ wan-nvfp4.safetensors --scheme nvfp4 --format comfy
      weightsmith quantize models_t5_umt5-xxl-enc-bf16.pth umt5_xxl_fp8_e4m3fn_scaled.safetensors --scheme fp8 --format comfy-legacy

    \b
    AUTO (--scheme auto:gguf | auto:compressed-tensors): each layer's cost at each type is
    measured alone on recorded transformer calls (cached), the smallest mix predicted to pass
    --target is written and verified with verify's generation options (SRC is the baseline),
    and re-aimed until it passes (two thirds of --max-tries); the other tries refine it, each
    verified (smaller uniform recipes, then layer downgrades); DST.verify/ holds its verify
    report. Exit 1 if no mix passes. auto:comfy is not available yet.
      weightsmith quantize Wan2.1-T2V-1.3B-Diffusers/ wan-auto.gguf --scheme auto:gguf \\
          --target 'psnr>=32' --seeds 0,1 --steps 20 --report reports/wan-auto
    """
    if scheme.lower().startswith("gguf:"):  # the GGUF header records the sources' SHA-256:
        from weightsmith.quantize import hashing  # begin now, beside the imports below

        hashing.start(hashing.source_files(src))
    from weightsmith.threads import import_numpy_without_blas_threads

    import_numpy_without_blas_threads()
    from weightsmith.auto.command import is_auto, reject_auto_options, reject_plain_options

    if is_auto(scheme):
        reject_plain_options(
            scheme,
            {
                "imatrix": imatrix,
                "family": family,
                "config": config,
                "format": fmt,
                "keep_blocks": keep_blocks,
                "activations": activations,
                "calibrate": calibrate,
                "sensitivity": sensitivity,
                "fp_layers": fp_layers,
            },
        )
        from weightsmith.cli_auto import quantize_auto

        quantize_auto(
            src, dst, scheme, targets, max_size, max_tries, report, as_json, keep, device, overwrite, gen
        )
        return
    calibration = calibration_request(calibrate, gen)  # takes the options a calibration run uses
    reject_auto_options(scheme, {"target": targets, "max_size": max_size, "report": report}, gen)
    if max_tries != 4:
        reject_auto_options(scheme, {"max_tries": max_tries}, {})
    from weightsmith.api import quantize as api_quantize

    result = api_quantize(
        src,
        dst,
        scheme=scheme,
        format=fmt,
        keep_blocks=keep_blocks,
        activations=activations,
        imatrix=imatrix,
        keep=keep,
        family=family,
        device=device,
        config=config,
        overwrite=overwrite,
        calibrate=calibrate,
        calibration=calibration,
        sensitivity=sensitivity,
        fp_layers=fp_layers,
        progress=bars(),
    )
    for line in (*result.calibration, *result._internal.summary_lines()):
        click.echo(line, err=True)
    click.echo(json.dumps(result.to_json(), indent=1) if as_json else str(result.dst))


@cli.command()
@click.option(
    "--out", default="reports/demo", show_default=True, help="Folder for the demo's models and reports."
)
def demo(out: str) -> None:
    """Build tiny models of every family, write them in every container and inspect them."""
    from weightsmith.demo import run_demo

    run_demo(out)


cli.add_command(lora_command)


def quiet_libraries() -> None:
    """Silence import-time chatter of the libraries we use (torchao's optional kernels, torch's
    pytree deprecations, diffusers' optional-backend notes) so a command prints only its own lines."""
    import os

    from weightsmith.api.quiet import quiet_libraries as quiet_loggers

    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    quiet_loggers()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning weightsmith errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if not debug:
        quiet_libraries()
    from weightsmith.io.atomic import Terminated, terminate_as_exception
    from weightsmith.memory import release_large_allocations

    release_large_allocations()
    try:
        with terminate_as_exception(), notes_on_stderr():  # SIGTERM/SIGHUP clean up like Ctrl-C
            cli.main(args=args, prog_name="weightsmith", standalone_mode=False)
    except Terminated as e:
        click.echo("terminated; no output was left behind", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {WeightsmithError(e.format_message()).one_line()}", err=True)  # escaped, one line
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except WeightsmithError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e.one_line()}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; no output was left behind", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo("error: out of memory; try a machine with more RAM or a smaller --shard-size", err=True)
        sys.exit(2)
    except OSError as e:  # the system refused a file operation (input unreadable, I/O error)
        if debug:
            traceback.print_exc()
        where = f" ({e.filename})" if e.filename else ""
        msg = WeightsmithError(f"{e.strerror or e}{where}", hint="check the file and its permissions")
        click.echo(f"error: {msg.one_line()}", err=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if debug:
            traceback.print_exc()
        what = WeightsmithError(
            f"{type(e).__name__}: {e}", hint="rerun with --debug and report it"
        ).one_line()
        click.echo(f"internal error: {what}", err=True)
        sys.exit(3)


from weightsmith.verify.cli import imatrix_command, sensitivity_command, verify_command  # noqa: E402, I001

cli.add_command(verify_command)
cli.add_command(sensitivity_command)
cli.add_command(imatrix_command)

from weightsmith.publish.cli import publish_command  # noqa: E402

cli.add_command(publish_command)

from weightsmith.onnx.cli import export_group  # noqa: E402

cli.add_command(export_group)
