"""Click commands `verify`, `sensitivity` and `imatrix`; weightsmith/cli.py adds them to the group."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from weightsmith.verify.settings import GenerationSettings, check_options, parse_seeds


def generation_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that runs reference generations shares."""
    return generation_options_except()(fn)


def generation_options_except(*skip: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``generation_options`` without the options named in ``skip`` (e.g. ``--device`` for a
    command that has its own with the same meaning)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed([o for o in _generation_option_list() if o[0] not in skip]):
            fn = o[1](fn)
        return fn

    return deco


def _generation_option_list() -> list[tuple[str, Callable[[Any], Any]]]:
    opts = [
        click.option(
            "--vae",
            type=click.Path(path_type=str),
            help="VAE to decode frames (BASELINE is a transformer alone).",
        ),
        click.option(
            "--prompts",
            type=click.Path(path_type=str),
            help="Prompt embeddings (.safetensors: prompt_embeds [N,L,D] ...) or a .txt of prompts for the "
            "baseline pipeline's text encoder. Default: embeddings drawn from each seed.",
        ),
        click.option("--negative-prompt", default="", help="Negative prompt text (with a .txt --prompts)."),
        click.option("--seeds", default="0", show_default=True, help="Seeds: 0 | 0,1,2 | 0-3."),
        click.option(
            "--steps", type=int, help="Denoising steps (default: the family's, 4 with --scheduler lightning)."
        ),
        click.option("--height", type=int, help="Height in pixels (default: the family's)."),
        click.option("--width", type=int, help="Width in pixels (default: the family's)."),
        click.option("--frames", type=int, help="Frames (video families; default: the family's)."),
        click.option("--guidance", type=float, help="Guidance scale (default: the family's)."),
        click.option(
            "--scheduler",
            default="default",
            show_default=True,
            help="default | euler | unipc | dpm++ | ddim | lightning | a diffusers scheduler class name.",
        ),
        click.option(
            "--image",
            type=click.Path(path_type=str),
            help="Image for image-to-video (default: one from the seed).",
        ),
        click.option(
            "--offload",
            type=click.Choice(["none", "model", "sequential"]),
            default="none",
            show_default=True,
            help="diffusers' CPU offload (GPU only), for big models on small GPUs.",
        ),
        click.option("--vae-tiling", is_flag=True, help="Decode with VAE tiling."),
        click.option(
            "--dtype",
            type=click.Choice(["fp32", "bf16", "fp16"]),
            default="fp32",
            show_default=True,
            help="Compute dtype.",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option(
            "--text-len", type=int, help="Tokens of seeded prompt embeddings (default: the pipeline's)."
        ),
    ]
    names = [
        "--vae",
        "--prompts",
        "--negative-prompt",
        "--seeds",
        "--steps",
        "--height",
        "--width",
        "--frames",
    ]
    names += [
        "--guidance",
        "--scheduler",
        "--image",
        "--offload",
        "--vae-tiling",
        "--dtype",
        "--device",
        "--text-len",
    ]
    return list(zip(names, opts))


def settings_from(kw: dict[str, Any]) -> GenerationSettings:
    """GenerationSettings from the shared options (popped from ``kw``), checked before any model
    is opened: a bad --height or --device ends at once, not after minutes of loading."""
    settings = GenerationSettings(
        height=kw.pop("height"),
        width=kw.pop("width"),
        frames=kw.pop("frames"),
        steps=kw.pop("steps"),
        guidance=kw.pop("guidance"),
        scheduler=kw.pop("scheduler"),
        seeds=parse_seeds(kw.pop("seeds")),
        dtype=kw.pop("dtype"),
        device=kw.pop("device"),
        offload=kw.pop("offload"),
        vae_tiling=kw.pop("vae_tiling"),
        text_len=kw.pop("text_len"),
        image=kw.pop("image"),
        prompts=kw.pop("prompts"),
        negative_prompt=kw.pop("negative_prompt"),
    )
    check_options(settings)
    return settings


def check_report_dir(report: str | None) -> None:
    """--report names a folder to write into: refuse a file there now, not after the generations."""
    if report is None:
        return
    from weightsmith.errors import OutputError

    p = Path(report)
    if p.exists() and not p.is_dir():
        raise OutputError(
            f"--report {p} is a file; a folder is expected", hint="pass a new or existing folder"
        )
    parent = p.parent if not p.exists() else p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(
            f"--report {p} cannot be created: {parent} is not a folder", hint="pass a folder path"
        )


def _cache_dir(cache_dir: str | None, no_cache: bool) -> Path | None:
    from weightsmith.verify.cache import default_cache_dir

    if no_cache:
        return None
    return Path(cache_dir) if cache_dir else default_cache_dir()


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
    settings, so a matrix of candidates runs the baseline once.

    \b
    Metrics (worst over prompts and seeds): latent_sqnr latent_cosine latent_psnr latent_max_abs
    step_sqnr_min step_cosine_min psnr psnr_frame_min ssim ssim_frame_min flicker size_ratio time_ratio.
    NaN/Inf and frames gone black or constant fail on their own. Exit 1 if any gate fails.

    \b
    Examples:
      weightsmith verify Wan2.1-T2V-1.3B-Diffusers/ wan-Q4_K_M.gguf wan-Q8_0.gguf \\
          --steps 20 --seeds 0,1 --gate 'psnr>=30' --gate 'ssim>=0.95' --report reports/wan
      torchrun --nproc-per-node 4 -m weightsmith verify base/ cand.gguf --seeds 0-7 --json
    """
    from weightsmith.verify.gates import failure_table, load_gates_toml, parse_gate
    from weightsmith.verify.results import check_gates, summary_table
    from weightsmith.verify.run import VerifyOptions, verify

    # Everything a user typed is checked before any model is opened: gates, report folder, settings.
    gates = [parse_gate(g) for g in gate] + (load_gates_toml(gates_file) if gates_file else [])
    check_report_dir(report)
    settings = settings_from(kw)
    opts = VerifyOptions(
        baseline,
        list(candidates),
        settings,
        vae=vae,
        gates=gates,
        cache_dir=_cache_dir(cache_dir, no_cache),
        consumers=consumer,
    )
    result = verify(opts)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    if report:
        from weightsmith.verify.report import write_report

        path = write_report(report, [result])
        click.echo(f"report: {path}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
        table = failure_table(result.gate_results())
        if table:
            click.echo(table, err=True)
    else:
        click.echo(summary_table(result))
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
    check_gates(result)


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
    from weightsmith.verify.sensitivity import format_ranking, run_sensitivity, write_sensitivity_report

    check_report_dir(report)
    settings = settings_from(kw)
    result = run_sensitivity(model, scheme, settings, vae=vae)
    if report:
        path = write_sensitivity_report(report, result)
        click.echo(f"report: {path}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
    else:
        click.echo(format_ranking(result, top))


@click.command("imatrix")
@click.argument("model", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@generation_options
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def imatrix_command(model: str, out: str, overwrite: bool, vae: str | None, **kw: Any) -> None:
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
    from weightsmith.verify.importance import collect_imatrix

    settings = settings_from(kw)
    result = collect_imatrix(model, out, settings, vae=vae, overwrite=overwrite)
    for line in result.summary_lines():
        click.echo(line, err=True)
    click.echo(str(result.path))
