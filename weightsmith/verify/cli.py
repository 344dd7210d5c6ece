"""Click commands `verify`, `sensitivity` and `imatrix`; weightsmith/cli.py adds them to the group.

Each parses its options, calls the same-named verb of ``weightsmith.api`` and prints the result."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from weightsmith.cli_progress import bars


def _generation_option_table() -> dict[str, Callable[..., Any]]:
    """Every shared generation option by its parameter name, in --help order."""
    return {
        "vae": click.option(
            "--vae",
            type=click.Path(path_type=str),
            help="VAE to decode frames (BASELINE is a transformer alone).",
        ),
        "prompts": click.option(
            "--prompts",
            type=click.Path(path_type=str),
            help="Prompt embeddings (.safetensors: prompt_embeds [N,L,D] ...) or a .txt of prompts for the "
            "baseline pipeline's text encoder. Default: embeddings drawn from each seed.",
        ),
        "negative_prompt": click.option(
            "--negative-prompt", default="", help="Negative prompt text (with a .txt --prompts)."
        ),
        "seeds": click.option("--seeds", default="0", show_default=True, help="Seeds: 0 | 0,1,2 | 0-3."),
        "steps": click.option(
            "--steps", type=int, help="Denoising steps (default: the family's, 4 with --scheduler lightning)."
        ),
        "height": click.option("--height", type=int, help="Height in pixels (default: the family's)."),
        "width": click.option("--width", type=int, help="Width in pixels (default: the family's)."),
        "frames": click.option("--frames", type=int, help="Frames (video families; default: the family's)."),
        "guidance": click.option("--guidance", type=float, help="Guidance scale (default: the family's)."),
        "scheduler": click.option(
            "--scheduler",
            default="default",
            show_default=True,
            help="default | euler | unipc | dpm++ | ddim | lightning | a diffusers scheduler class name.",
        ),
        "image": click.option(
            "--image",
            type=click.Path(path_type=str),
            help="Image for image-to-video (default: one from the seed).",
        ),
        "offload": click.option(
            "--offload",
            type=click.Choice(["none", "model", "sequential"]),
            default="none",
            show_default=True,
            help="diffusers' CPU offload (GPU only), for big models on small GPUs.",
        ),
        "vae_tiling": click.option("--vae-tiling", is_flag=True, help="Decode with VAE tiling."),
        "dtype": click.option(
            "--dtype",
            type=click.Choice(["fp32", "bf16", "fp16"]),
            default="fp32",
            show_default=True,
            help="Compute dtype.",
        ),
        "device": click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."
        ),
        "text_len": click.option(
            "--text-len", type=int, help="Tokens of seeded prompt embeddings (default: the pipeline's)."
        ),
    }


# The generation options `quantize --calibrate` takes (quantize has its own --device).
CALIBRATION_OPTIONS = (
    "prompts",
    "negative_prompt",
    "seeds",
    "steps",
    "height",
    "width",
    "frames",
    "text_len",
)


def generation_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that runs reference generations shares."""
    return generation_options_except()(fn)


def generation_options_except(*skip: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``generation_options`` without the options named in ``skip`` (``--device`` for a command
    that has its own with the same meaning)."""
    names = {s.removeprefix("--").replace("-", "_") for s in skip}

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name, o in reversed(_generation_option_table().items()):
            if name not in names:
                fn = o(fn)
        return fn

    return deco


def calibration_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The generation options that shape a calibration run (``CALIBRATION_OPTIONS``), the same
    click options ``verify`` and ``imatrix`` take; only used with ``--calibrate``."""
    table = _generation_option_table()
    for name in reversed(CALIBRATION_OPTIONS):
        fn = table[name](fn)
    return fn


def calibration_request(calibrate: bool, kw: dict[str, Any]) -> dict[str, Any] | None:
    """``quantize --calibrate``: the generation options of the calibration run (popped from
    ``kw``; unset ones left to the API's defaults), or None without --calibrate, where naming one
    of them is a usage error."""
    from weightsmith.errors import UsageError

    ctx = click.get_current_context(silent=True)
    given = {
        n: kw.pop(n)
        for n in CALIBRATION_OPTIONS
        if n in kw
        and ctx is not None
        and ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)
    }
    for n in CALIBRATION_OPTIONS:
        kw.pop(n, None)
    if not calibrate:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise UsageError(f"{flag} shapes the calibration run", hint="add --calibrate, or drop it")
        return None
    return {k: v for k, v in given.items() if v is not None}


@click.command("verify")
@click.argument("baseline", type=click.Path(path_type=str))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(path_type=str))
@generation_options
@click.option(
    "--gate", "gate", multiple=True, help="A gate such as 'psnr>=30' or 'latent_sqnr>=20' (repeatable)."
)
@click.option("--gates", "gates_file", type=click.Path(path_type=str), help="TOML file of gates.")
@click.option(
    "--report", type=click.Path(path_type=str), help="Write report.json, report.md and report.html here."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (schema weightsmith.verify/1)."
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=str),
    help="Baseline cache (default ~/.cache/weightsmith/verify).",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the baseline cache.")
@click.option(
    "--consumer",
    type=click.Choice(["both", "weightsmith", "diffusers"]),
    default="both",
    show_default=True,
    help="A GGUF diffusers also reads (per family): load with weightsmith's loader, diffusers' own, or both.",
)
def verify_command(
    baseline: str,
    candidates: tuple[str, ...],
    gate: tuple[str, ...],
    gates_file: str | None,
    report: str | None,
    as_json: bool,
    cache_dir: str | None,
    no_cache: bool,
    consumer: str,
    vae: str | None,
    **kw: Any,
) -> None:
    """Run the same generations with BASELINE and each CANDIDATE and score the difference.

    BASELINE is a Diffusers pipeline folder, a transformer alone (add --vae to decode frames;
    without one the latents are scored), or transformer=PATH,transformer_2=PATH for Wan 2.2
    A14B. Each CANDIDATE is any artifact weightsmith writes (Diffusers folder, original/SAT
    checkpoint, GGUF, ...) or the same expert syntax; a GGUF of Wan or Sana is also loaded
    through diffusers' own GGUF loader. Baseline generations are cached by content hash and
    settings, so a matrix of candidates runs the baseline once. A CANDIDATE that is the family's
    text encoder (e.g. umt5-Q8_0.gguf) runs with the baseline's transformer: BASELINE must be a
    pipeline folder with text_encoder/ and tokenizer/, and --prompts a text file.

    \b
    Metrics (worst over prompts and seeds): latent_sqnr latent_cosine latent_psnr latent_max_abs
    step_sqnr_min step_cosine_min psnr psnr_frame_min ssim ssim_frame_min flicker size_ratio time_ratio
    (text-encoder candidates also prompt_sqnr prompt_cosine).
    NaN/Inf and frames gone black or constant fail on their own. Exit 1 if any gate fails.

    \b
    Examples:
      weightsmith verify Wan2.1-T2V-1.3B-Diffusers/ wan-Q4_K_M.gguf wan-Q8_0.gguf \\
          --steps 20 --seeds 0,1 --gate 'psnr>=30' --gate 'ssim>=0.95' --report reports/wan
      torchrun --nproc-per-node 4 -m weightsmith verify base/ cand.gguf --seeds 0-7 --json
    """
    from weightsmith.api import verify
    from weightsmith.verify.gates import failure_table
    from weightsmith.verify.results import summary_table

    result = verify(
        baseline,
        candidates,
        gate=gate,
        gates=gates_file,
        report=report,
        cache_dir=cache_dir,
        no_cache=no_cache,
        consumer=consumer,
        vae=vae,
        progress=bars(),
        **kw,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if result.report_path:
        click.echo(f"report: {result.report_path}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
        table = failure_table(result._internal.gate_results())
        if table:
            click.echo(table, err=True)
    else:
        click.echo(summary_table(result._internal))
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
    result.raise_for_gates()


@click.command("sensitivity")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--scheme", required=True, help="gguf:TYPE (e.g. gguf:Q4_K_M), int8, fp8, int4, int4-g64 ...")
@generation_options
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Rows of the ranked table to print.",
)
@click.option("--report", type=click.Path(path_type=str), help="Write sensitivity.json/.md/.html here.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the ranking as JSON (schema weightsmith.sensitivity/1)."
)
def sensitivity_command(
    model: str, scheme: str, top: int, report: str | None, as_json: bool, vae: str | None, **kw: Any
) -> None:
    """Rank MODEL's Linear layers by how much quantizing each one alone changes the output.

    A reference generation records the transformer's inputs at every step; then each Linear
    layer in turn is quantized with SCHEME (GGUF kernels for gguf:*, fake int8/fp8/int4
    otherwise) and the transformer re-run on those inputs. The ranking (output SQNR in dB,
    lowest first) suggests --keep patterns for `weightsmith quantize`.

    \b
    Example:
      weightsmith sensitivity Wan2.1-T2V-1.3B-Diffusers/ --scheme gguf:Q3_K_M --steps 8 --report reports/sens
    """
    from weightsmith.api import sensitivity
    from weightsmith.verify.sensitivity import format_ranking

    result = sensitivity(model, scheme=scheme, report=report, vae=vae, progress=bars(), **kw)
    if result.report_path:
        click.echo(f"report: {result.report_path}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
    else:
        click.echo(format_ranking(result._internal, top))


@click.command("imatrix")
@click.argument("model", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@generation_options
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (schema weightsmith.imatrix/1)."
)
def imatrix_command(model: str, out: str, overwrite: bool, as_json: bool, vae: str | None, **kw: Any) -> None:
    """Collect an importance matrix for MODEL from reference generations, for `quantize --imatrix`.

    Hooks on every Linear layer of the transformer sum the squares of its inputs per column
    (and count the rows) over all steps, seeds and prompts. OUT is llama.cpp's GGUF imatrix
    format keyed by the GGUF (original-layout) tensor names `weightsmith quantize` writes;
    fused tensors (Sana's qkv, CogVideoX's SAT qkv) share their parts' input statistics.

    \b
    Example:
      weightsmith imatrix Wan2.1-T2V-1.3B-Diffusers/ wan.imatrix.gguf --seeds 0-7 --steps 20
      weightsmith quantize Wan2.1-T2V-1.3B-Diffusers/ wan-Q3_K_M.gguf --scheme gguf:Q3_K_M --imatrix wan.imatrix.gguf
    """
    from weightsmith.api import imatrix

    result = imatrix(model, out, overwrite=overwrite, vae=vae, progress=bars(), **kw)
    lines = [
        f"imatrix: {result.tensors} tensors from {result.generations} generation(s), {result.rows:,} rows per "
        f"tensor on average, in {result.seconds:.1f} s",
        *(f"  note: {n}" for n in result.notes),
    ]
    for line in lines:
        click.echo(line, err=True)
    click.echo(json.dumps(result.to_json(), indent=1) if as_json else str(result.path))
