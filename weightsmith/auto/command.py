"""The quantize command's ``auto:`` path: options checked, the search run, its report printed."""

from __future__ import annotations

import json
from typing import Any

import click

from weightsmith.errors import UsageError

# The generation options' values when a user gives none (what quantize without auto: expects).
_GEN_DEFAULTS: dict[str, Any] = {
    "vae": None,
    "prompts": None,
    "negative_prompt": "",
    "seeds": "0",
    "steps": None,
    "height": None,
    "width": None,
    "frames": None,
    "guidance": None,
    "scheduler": "default",
    "image": None,
    "offload": "none",
    "vae_tiling": False,
    "dtype": "fp32",
    "text_len": None,
}


def is_auto(scheme: str) -> bool:
    return scheme.lower().startswith("auto:")


def reject_auto_options(scheme: str, auto_kw: dict[str, Any], gen_kw: dict[str, Any]) -> None:
    """A plain scheme with --target, --max-size, --report, --json or generation options is a
    usage error (they mean something only to auto: schemes)."""
    given = [k for k, v in auto_kw.items() if v not in (None, False, ())]
    given += [k for k, v in gen_kw.items() if _GEN_DEFAULTS.get(k, v) != v]
    if given:
        shown = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
        raise UsageError(
            f"{shown} apply to --scheme auto:FORMAT only, not {scheme!r}",
            hint="drop them, or use e.g. --scheme auto:gguf --target 'psnr>=32'",
        )


def run_auto_command(
    src: str,
    dst: str,
    scheme: str,
    *,
    targets: tuple[str, ...],
    max_size: str | None,
    max_tries: int,
    report: str | None,
    as_json: bool,
    keep: tuple[str, ...],
    device: str,
    overwrite: bool,
    other: dict[str, Any],
    gen_kw: dict[str, Any],
) -> None:
    """Run ``--scheme auto:FORMAT`` for the quantize command; exit 1 (GateFailed) if no mix passes."""
    from weightsmith.api.scoring import settings_of
    from weightsmith.auto.report import format_summary, to_json, write_auto_report
    from weightsmith.auto.search import AutoOptions, run_auto
    from weightsmith.errors import GateFailed
    from weightsmith.io.writers import parse_size
    from weightsmith.verify.cache import default_cache_dir
    from weightsmith.verify.gates import parse_gate
    from weightsmith.verify.report import check_report_dir

    bad = [k for k, v in other.items() if v not in (None, False, ())]
    if bad:
        shown = ", ".join("--" + k.replace("_", "-") for k in sorted(bad))
        raise UsageError(
            f"{shown} do not apply to {scheme}", hint="auto: schemes choose the types themselves"
        )
    gates = [parse_gate(g) for g in targets]
    size = parse_size(max_size) if max_size is not None else None
    check_report_dir(report)
    vae = gen_kw.pop("vae")
    settings = settings_of({**gen_kw, "device": device})  # type: ignore[typeddict-item]
    result = run_auto(
        AutoOptions(
            src,
            dst,
            scheme,
            gates,
            size,
            settings,
            vae=vae,
            keep=keep,
            device=device,
            overwrite=overwrite,
            cache_dir=default_cache_dir(),
            max_tries=max_tries,
        )
    )
    if report:
        click.echo(f"report: {write_auto_report(report, result)}", err=True)
    if as_json:
        click.echo(json.dumps(to_json(result), indent=1))
    else:
        click.echo(format_summary(result), err=True)
    if result.final is None:
        raise GateFailed(
            f"no mix of {scheme} passed {' '.join(result.targets)} in {len(result.attempts)} tries",
            hint="loosen the target, allow a larger --max-size or more --max-tries",
        )
    if not as_json:
        click.echo(str(result.dst))
