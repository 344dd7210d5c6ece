"""``publish``: verified artifacts to the Hugging Face Hub, with a card of their measured fidelity."""

from __future__ import annotations

import os

from weightsmith.api.results import PublishResult
from weightsmith.progress import ProgressCallback, reporting

PathArg = str | os.PathLike[str]


def publish(
    folder: PathArg,
    *,
    repo_id: str,
    dry_run: bool = False,
    private: bool = False,
    revision: str | None = None,
    allow_unverified: bool = False,
    out: PathArg | None = None,
    name: str | None = None,
    base_model: str | None = None,
    license: str | None = None,  # noqa: A002 - the card key's name
    quantized_by: str | None = None,
    endpoint: str | None = None,
    progress: ProgressCallback | None = None,
) -> PublishResult:
    """Stage ``folder``'s verified artifacts (each must have passed every ``verify`` report that
    scored it, unless ``allow_unverified``) as a Hub folder with a card, and upload it to
    ``repo_id`` unless ``dry_run``. The token comes from HF_TOKEN or ``hf auth login``;
    ``endpoint``: another Hub than HF_ENDPOINT's (a mirror, a test server)."""
    from weightsmith.publish.run import publish as run_publish

    with reporting(progress):
        r = run_publish(
            os.fspath(folder),
            repo_id,
            dry_run=dry_run,
            private=private,
            revision=revision,
            allow_unverified=allow_unverified,
            out=None if out is None else os.fspath(out),
            name=name,
            base_model=base_model,
            license=license,
            quantized_by=quantized_by,
            endpoint=endpoint,
        )
    return PublishResult(repo_id, r.stage, dict(r.sizes), dry_run, r.url, tuple(r.lines))
