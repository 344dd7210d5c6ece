"""`weightsmith lora ...`: a click group the main CLI registers with ``cli.add_command(lora_command)``.

Also the ``--lora`` / ``--lora-scale`` options for ``weightsmith convert`` (``lora_options``) and
their resolution into (path, strength) pairs (``resolve_lora_options``), for ``fused_stream``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from weightsmith.lora.names import adapters, lora_families, targets, titles
from weightsmith.lora.options import parse_lora_option

_HELP = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_COL = 15  # width of the name column in the format tables


def _table(rows: list[tuple[str, tuple[str, ...]]], width: int = _COL) -> str:
    """Two-column help text (click keeps it as written after a \\b line)."""
    lines = []
    for name, text in rows:
        first, *rest = text or ("",)
        lines.append(f"  {name:<{width}}{first}")
        lines += [" " * (width + 2) + line for line in rest]
    return "\n".join(lines)


def _group_help() -> str:
    peft = (
        "PEFT: transformer.<module>.lora_A.weight / lora_B.weight [/ lora_B.bias]",
        f"({titles(joiner=', ')}; pytorch_lora_weights.safetensors or a folder holding it)",
    )
    rows = [("diffusers", peft)] + [row for a in adapters() for row in a.format_help]
    return (
        "Convert LoRA files between formats, or inspect one.\n\n\b\nFormats weightsmith reads "
        "(detected from key names):\n" + _table(rows) + "\n\nTo fuse LoRAs into a base model while "
        "converting it, use\n`weightsmith convert SRC DST --to diffusers --lora PATH[:SCALE]`."
    )


def _convert_help() -> str:
    own = [(t.name, t.dst_help) for a in adapters() for t in a.targets]
    rows = [
        (
            "diffusers",
            (
                "a .safetensors file, or a folder that gets pytorch_lora_weights.safetensors",
                "(load it with pipe.load_lora_weights(DST))",
            ),
        ),
        *sorted(own),
    ]
    examples = ["weightsmith lora convert style.safetensors out/ --to diffusers"]
    examples += [
        f"weightsmith lora convert out/pytorch_lora_weights.safetensors {t.example_dst} --to {t.name}"
        for a in adapters()
        for t in a.targets
    ]
    return (
        "Rewrite the LoRA SRC in another format at DST; the effective weights stay the same.\n\n"
        "\b\nDST by format:\n" + _table(rows, 11) + "\n\n\b\nScale (alpha/rank): a diffusers PEFT "
        "file stores no alpha, so Diffusers loads it at\nscale 1; weightsmith folds each module's "
        "alpha/rank into lora_A. The original format keeps\nalpha as it was. A SAT LoRA scales by "
        "lora_alpha/r (lora_alpha 1 unless --sat-alpha).\n\n\b\nExamples:\n"
        + "\n".join("  " + e for e in examples)
    )


def _to_help() -> str:
    own = sorted((t.name, t.choice_help) for a in adapters() for t in a.targets)
    return "Target format: diffusers (PEFT, any family), " + ", ".join(f"{n} ({h})" for n, h in own) + "."


def _family_help() -> str:
    shared = [a for a in adapters() if not a.exclusive]
    if len(shared) < 2:
        return "Insist on this family."
    return f"Insist on this family ({titles(joiner=' and ', of=shared)} share names)."


_FAMILIES = click.Choice(lora_families())


@click.group(name="lora", context_settings=_HELP, help=_group_help())
def lora_command() -> None:
    pass


@lora_command.command("convert", help=_convert_help())
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--to", "to", required=True, type=click.Choice(targets()), help=_to_help())
@click.option("--family", type=_FAMILIES, help=_family_help())
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
