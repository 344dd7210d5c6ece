"""The publish command's flow: discover, refuse what must not go out, stage, then upload or
(``--dry-run``) say what would be uploaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from weightsmith.errors import InputError
from weightsmith.inspect import human_size
from weightsmith.publish.card import base_facts, card, plot
from weightsmith.publish.discover import Artifact, discover
from weightsmith.publish.folder import build, default_stage, plan
from weightsmith.publish.limits import size_warnings


@dataclass
class PublishResult:
    stage: Path
    sizes: dict[str, int]
    lines: list[str] = field(default_factory=list)
    url: str | None = None


def refuse_unverified(arts: list[Artifact], allow: bool) -> list[str]:
    """Exit 2 for an artifact without a passing report, unless ``allow``; else warning lines."""
    bad = [a for a in arts if a.status != "verified"]
    if not bad:
        return []
    what = "; ".join(
        f"{a.path.name}: "
        + ("no verify report scored it" if a.status == "missing" else "verification failed")
        for a in bad
    )
    if not allow:
        raise InputError(
            f"{len(bad)} artifact(s) not verified: {what}",
            hint="run weightsmith verify BASE ARTIFACT... --gate ... --report DIR/report (inside DIR), "
            "or pass --allow-unverified to publish them with a warning on the card",
        )
    return [f"warning: publishing unverified artifacts (the card says so first): {what}"]


def publish(
    folder: str | Path,
    repo_id: str,
    *,
    dry_run: bool = False,
    private: bool = False,
    revision: str | None = None,
    allow_unverified: bool = False,
    out: str | Path | None = None,
    name: str | None = None,
    base_model: str | None = None,
    license: str | None = None,  # noqa: A002 - the card key's name
    quantized_by: str | None = None,
    endpoint: str | None = None,
) -> PublishResult:
    """Build the Hub folder of ``folder``'s artifacts and upload it (unless ``dry_run``)."""
    folder = Path(folder)
    arts, notes = discover(folder)
    p = plan(arts, repo_id, name)
    lines = [f"note: {n}" for n in notes]
    lines += refuse_unverified(arts, allow_unverified)
    base = base_facts(arts, base_model, license)
    if base.model is None:
        lines.append(
            "warning: the base model is not known (no --base-model and the baseline is not a Hub download); "
            "the card has no base_model link"
        )
    svg = plot(p)
    text = card(p, base, quantized_by or repo_id.split("/")[0], has_plot=svg is not None)
    stage = Path(out) if out is not None else default_stage(folder, p.model)
    sizes = build(p, stage, text, svg, folder)
    lines += [f"warning: {w}" for w in size_warnings(sizes)]
    result = PublishResult(stage, sizes, lines)
    if dry_run:
        return result
    from weightsmith.publish.upload import upload_folder_to_hub

    n = sum(1 for k in sizes if k.endswith((".gguf", ".safetensors")))
    result.url = upload_folder_to_hub(
        stage,
        repo_id,
        private=private,
        revision=revision,
        commit_message=f"weightsmith publish: {n} weight file(s) of {p.model}",
        progress=True,
        endpoint=endpoint,
    )
    return result


def listing(stage: Path, sizes: Mapping[str, int], repo_id: str, dry_run: bool) -> list[str]:
    """What is (or would be) uploaded, with sizes."""
    width = max(len(k) for k in sizes)
    head = f"{'would upload' if dry_run else 'uploaded'} to {repo_id} from {stage}:"
    rows = [f"  {k:<{width}}  {human_size(v):>10}" for k, v in sizes.items()]
    total = f"  {'total':<{width}}  {human_size(sum(sizes.values())):>10}"
    return [head, *rows, total]
