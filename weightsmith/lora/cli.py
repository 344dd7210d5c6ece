"""`weightsmith lora ...`: a click group the main CLI registers with ``cli.add_command(lora_command)``.

Also the ``--lora`` / ``--lora-scale`` options for ``weightsmith convert`` (``lora_options``) and
their resolution into (path, strength) pairs (``resolve_lora_options``), for ``fused_stream``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from weightsmith.lora.fuse import parse_lora_option

_FAMILIES = click.Choice(["cogvideox", "wan", "sana"])


@click.group(name="lora", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def lora_command() -> None:
    """Convert LoRA files between formats, or inspect one.

    \b
    Formats weightsmith reads (detected from key names):
      diffusers      PEFT: transformer.<module>.lora_A.weight / lora_B.weight [/ lora_B.bias]
                     (Wan, CogVideoX, Sana; pytorch_lora_weights.safetensors or a folder holding it)
      wan-original   ComfyUI / Wan: diffusion_model.blocks.0.self_attn.q.lora_down.weight,
                     lora_up, .alpha, .diff, .diff_b
      wan-musubi     musubi-tuner: lora_unet_blocks_0_self_attn_q.lora_down.weight, .alpha
      cogvideox-sat  SwissArmyTransformer: ...attention.query_key_value.matrix_A.0/1/2, matrix_B.*,
                     attention.dense.matrix_A.0 (any layer count; also inside a LoRA-trained SAT
                     checkpoint folder)

    To fuse LoRAs into a base model while converting it, use
    `weightsmith convert SRC DST --to diffusers --lora PATH[:SCALE]`.
    """


@lora_command.command("convert")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Choice(["diffusers", "original", "sat"]),
    help="Target format: diffusers (PEFT, any family), original (Wan/ComfyUI), sat (CogVideoX).",
)
@click.option("--family", type=_FAMILIES, help="Insist on this family (CogVideoX and Sana share names).")
@click.option(
    "--sat-alpha",
    type=float,
    default=1.0,
    show_default=True,
    help="lora_alpha of a SAT LoRA read or written; SAT scales by lora_alpha/r and defaults to 1.",
)
@click.option(
    "--drop-diffs",
    is_flag=True,
    help="Leave out non-zero full-weight/bias diffs the target format cannot hold (changes the result).",
)
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
def convert_cmd(
    src: str, dst: str, to: str, family: str | None, sat_alpha: float, drop_diffs: bool, overwrite: bool
) -> None:
    """Rewrite the LoRA SRC in another format at DST; the effective weights stay the same.

    \b
    DST by format:
      diffusers  a .safetensors file, or a folder that gets pytorch_lora_weights.safetensors
                 (load it with pipe.load_lora_weights(DST))
      original   a .safetensors file with ComfyUI's diffusion_model. keys (Wan only)
      sat        a SAT folder (latest + 1/mp_rank_00_model_states.pt), a .pt file or a
                 .safetensors file (CogVideoX only)

    \b
    Scale (alpha/rank): a diffusers PEFT file stores no alpha, so Diffusers loads it at
    scale 1; weightsmith folds each module's alpha/rank into lora_A. The original format keeps
    alpha as it was. A SAT LoRA scales by lora_alpha/r (lora_alpha 1 unless --sat-alpha).

    \b
    Examples:
      weightsmith lora convert wan_style.safetensors out/ --to diffusers
      weightsmith lora convert out/pytorch_lora_weights.safetensors comfy.safetensors --to original
      weightsmith lora convert CogVideoX-5b-lora-sat/ cog_lora/ --to diffusers
    """
    from weightsmith.lora.convert import convert_lora

    lines = convert_lora(
        src, dst, to, family, overwrite=overwrite, drop_diffs=drop_diffs, sat_alpha=sat_alpha
    )
    for line in lines[:-1]:
        click.echo(line, err=True)
    click.echo(lines[-1])


@lora_command.command("inspect")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--family", type=_FAMILIES, help="Insist on this family.")
@click.option("--sat-alpha", type=float, default=1.0, show_default=True, help="lora_alpha of a SAT LoRA.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def inspect_cmd(path: str, family: str | None, sat_alpha: float, as_json: bool) -> None:
    """Tell a LoRA's family and format, and list the modules it changes (Diffusers names)."""
    from weightsmith.lora.read import read_lora

    lora = read_lora(path, family, sat_alpha=sat_alpha)
    report: dict[str, Any] = {
        "schema": "weightsmith.lora/1",
        "path": path,
        "family": lora.family,
        "candidates": list(lora.candidates),
        "format": lora.format,
        "ranks": lora.ranks(),
        "notes": lora.notes,
        "modules": [
            {
                "module": m.module,
                "rank": m.rank,
                "alpha": m.alpha,
                "scale": m.scale,
                "bias": m.bias is not None,
                "diff": m.diff is not None,
            }
            for m in lora.modules
        ],
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(lora.describe())
    for n in lora.notes:
        click.echo(f"  {n}")
    for m in lora.modules[:8]:
        click.echo(f"  {m.module}  rank {m.rank}  scale {m.scale:g}")
    if len(lora.modules) > 8:
        click.echo(f"  ... and {len(lora.modules) - 8} more modules")


def lora_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--lora PATH[:SCALE]`` (repeatable) and ``--lora-scale`` to a click command (e.g. convert)."""
    f = click.option(
        "--lora-scale",
        type=float,
        default=1.0,
        show_default=True,
        help="Strength of each --lora given without its own :SCALE.",
    )(f)
    f = click.option(
        "--lora",
        "lora",
        multiple=True,
        metavar="PATH[:SCALE]",
        help="Fuse this LoRA into the output (Diffusers layout); repeatable, e.g. --lora a.safetensors:0.8.",
    )(f)
    return f


def resolve_lora_options(lora: Sequence[str], lora_scale: float = 1.0) -> list[tuple[str, float]]:
    """The (path, strength) pairs ``fused_stream`` takes, from ``--lora`` values and ``--lora-scale``."""
    return [parse_lora_option(text, lora_scale) for text in lora]
