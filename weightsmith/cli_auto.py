"""`weightsmith quantize --scheme auto:FORMAT`'s printing: the search runs in the API; this prints
its report path, summary or JSON and turns a failed gate into exit 1."""

from __future__ import annotations

import json
from typing import Any

import click

from weightsmith.cli_progress import bars


def quantize_auto(
    src: str,
    dst: str,
    scheme: str,
    targets: tuple[str, ...],
    max_size: str | None,
    max_tries: int,
    report: str | None,
    as_json: bool,
    keep: tuple[str, ...],
    device: str,
    overwrite: bool,
    gen: dict[str, Any],
) -> None:
    """quantize --scheme auto:FORMAT through the API; exit 1 (GateFailed) if no mix passes."""
    from weightsmith.api import quantize as api_quantize
    from weightsmith.auto.report import format_summary

    vae = gen.pop("vae")
    result = api_quantize(
        src,
        dst,
        scheme=scheme,  # an auto: scheme: the API returns an AutoQuantizeResult
        target=targets,
        max_size=max_size,
        max_tries=max_tries,
        report=report,
        vae=vae,
        generation=gen,
        keep=keep,
        device=device,
        overwrite=overwrite,
        progress=bars(),
    )
    if result.report_path is not None:
        click.echo(f"report: {result.report_path}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
    else:
        click.echo(format_summary(result._internal), err=True)
    result.raise_for_gates()
    if not as_json:
        click.echo(str(result.dst))
