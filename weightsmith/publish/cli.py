"""The ``publish`` command: options parsed, ``weightsmith.api.publish`` called, its result printed."""

from __future__ import annotations

import json

import click


@click.command("publish")
@click.argument("folder", type=click.Path(path_type=str))
@click.option("--repo-id", required=True, help="The Hub repo to publish to, OWNER/NAME.")
@click.option("--dry-run", is_flag=True, help="Build the folder and list what would be uploaded; no network.")
@click.option(
    "--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility)."
)
@click.option("--revision", help="Branch to commit to (default: main).")
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Publish artifacts whose verification failed or is missing; the card says so in its first lines.",
)
@click.option(
    "--out", type=click.Path(path_type=str), help="Staging folder (default: <model>-hub beside FOLDER)."
)
@click.option("--name", help="Stem of the file names (default: the repo name without -GGUF).")
@click.option("--base-model", help="The base model's Hub id (default: read from a Hub-cache baseline path).")
@click.option("--license", "license_", help="License of the base model, when its card is not at hand.")
@click.option("--quantized-by", help="Who quantized it, for the card (default: the repo owner).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (schema weightsmith.publish/1)."
)
def publish_command(
    folder: str,
    repo_id: str,
    dry_run: bool,
    private: bool,
    revision: str | None,
    allow_unverified: bool,
    out: str | None,
    name: str | None,
    base_model: str | None,
    license_: str | None,
    quantized_by: str | None,
    as_json: bool,
) -> None:
    """Publish FOLDER's verified artifacts to the Hub with a card of their measured fidelity.

    FOLDER holds the artifacts (.gguf files, ComfyUI .safetensors files or Diffusers component
    folders) and the report.json of `weightsmith verify --report` runs that scored them. Each
    artifact must have passed every report that scored it (else exit 2, unless
    --allow-unverified). The Hub folder is staged beside FOLDER with files hard-linked, not
    copied: <model>-<TYPE>.gguf, HighNoise/ and LowNoise/ for two-expert models, SHA256SUMS and
    README.md. Files over the Hub's 500 GB limit are refused, never split. The token comes from
    HF_TOKEN or `hf auth login` and is never printed.

    \b
    Example:
      weightsmith verify Wan2.1-T2V-14B-Diffusers out/*.gguf --gate 'psnr>=30' --report out/report
      weightsmith publish out --repo-id me/Wan2.1-T2V-14B-GGUF --dry-run
    """
    from weightsmith.api import publish
    from weightsmith.cli_progress import bars
    from weightsmith.publish.run import listing

    result = publish(
        folder,
        repo_id=repo_id,
        dry_run=dry_run,
        private=private,
        revision=revision,
        allow_unverified=allow_unverified,
        out=out,
        name=name,
        base_model=base_model,
        license=license_,
        quantized_by=quantized_by,
        progress=bars(),
    )
    for line in result.notes:
        click.echo(line, err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
        return
    for line in listing(result.stage, result.files, repo_id, dry_run):
        click.echo(line)
    if result.url:
        click.echo(result.url)
