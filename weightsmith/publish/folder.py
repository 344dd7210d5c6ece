"""The Hub folder: the names users expect, linked (not copied) into an atomic staging folder,
with a sha256 list.

Names follow the repos users already know: ``<model>-<TYPE>.gguf`` in one flat folder, and for
a model whose pipeline runs two experts of one transformer (the family's ``expert_pairs``) one
folder per expert, ``HighNoise/<model>-HighNoise-<TYPE>.gguf`` and ``LowNoise/...``. Files are
hard-linked into the staging folder (symlinked across devices): a 100 GB GGUF is never copied or
read whole; its sha256 is computed in 1 MiB chunks.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from weightsmith.errors import OutputError, UsageError
from weightsmith.families import get_component
from weightsmith.io.atomic import atomic_dir
from weightsmith.publish.discover import DIFFUSERS, GGUF, SINGLE, Artifact
from weightsmith.publish.upload import check_repo_id
from weightsmith.quantize.gguf.run import file_sha256
from weightsmith.verify.family import generation

# The folder of each expert, by its place in the family's pipeline components (the transformer
# that runs the high-noise steps comes first).
EXPERT_FOLDERS = ("HighNoise", "LowNoise")
SUMS = "SHA256SUMS"
CARD = "README.md"
PLOT = "fidelity.svg"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,150}")


@dataclass
class Entry:
    """One file of the Hub folder: its path in the repo and the file it is linked from."""

    name: str
    source: Path
    bytes: int
    artifact: Artifact


@dataclass
class Plan:
    repo_id: str
    model: str
    library: str | None
    kind: str
    artifacts: list[Artifact]
    entries: list[Entry]

    def name_of(self, art: Artifact) -> str:
        """The repo path of an artifact (a folder artifact: its folder)."""
        first = next(e.name for e in self.entries if e.artifact is art)
        return first.rsplit("/", 1)[0] if art.kind == DIFFUSERS else first


def model_name(repo_id: str, name: str | None) -> str:
    """``--name``, or the repo's name without a trailing -GGUF (the file names' stem)."""
    out = name if name is not None else re.sub(r"[-_.]gguf$", "", repo_id.split("/")[-1], flags=re.I)
    if not _NAME.fullmatch(out):
        raise UsageError(
            f"{out!r} cannot start a file name", hint="give --name with letters, digits, '.', '_', '+' or '-'"
        )
    return out


def expert_folder(art: Artifact) -> str | None:
    """HighNoise/LowNoise for an expert of a two-expert model, None for a model of its own."""
    if art.role is None or art.family is None:
        return None
    if not get_component(art.family, "transformer").expert_pairs:
        return None
    comps = generation(art.family).expert_components
    if art.role not in comps or comps.index(art.role) >= len(EXPERT_FOLDERS):
        return None
    return EXPERT_FOLDERS[comps.index(art.role)]


def pair_variant(art: Artifact) -> str | None:
    """The pipeline's variant of an expert pair (the registry's ``expert_pairs``), else None."""
    if art.role is None or art.family is None:
        return None
    pairs = get_component(art.family, "transformer").expert_pairs or {}
    return pairs.get(art.variant or "")


def _library(arts: list[Artifact]) -> tuple[str, str | None]:
    kinds = {a.kind for a in arts}
    if len(kinds) > 1:
        raise UsageError(
            "the folder mixes " + ", ".join(sorted(kinds)) + " artifacts",
            hint="publish each format to its own repo (the Hub lists a repo under one library)",
        )
    kind = kinds.pop()
    return kind, {GGUF: "gguf", DIFFUSERS: "diffusers", SINGLE: None}[kind]


def plan(arts: list[Artifact], repo_id: str, name: str | None = None) -> Plan:
    """Repo names for every artifact; two artifacts given the same name are refused."""
    repo_id = check_repo_id(repo_id)
    if "/" not in repo_id:  # the card names the owner (quantized_by); the Hub's namespace is it
        raise UsageError(
            f"--repo-id {repo_id!r} names no owner",
            hint="give OWNER/NAME, e.g. --repo-id me/Wan2.1-T2V-1.3B-GGUF",
        )
    model = model_name(repo_id, name)
    kind, library = _library(arts)
    entries: list[Entry] = []
    for a in arts:
        folder = expert_folder(a)
        stem = f"{model}-{folder}-{a.scheme}" if folder else f"{model}-{a.scheme}"
        prefix = f"{folder}/" if folder else ""
        if a.kind == DIFFUSERS:
            for f in a.files:
                rel = f.relative_to(a.path).as_posix()
                entries.append(Entry(f"{prefix}{stem}/{rel}", f, f.stat().st_size, a))
        else:
            entries.append(Entry(f"{prefix}{stem}{a.path.suffix}", a.path, a.bytes, a))
    seen: dict[str, Entry] = {}
    for e in entries:
        if e.name in seen:
            raise UsageError(
                f"{seen[e.name].artifact.path} and {e.artifact.path} would both be published as {e.name}",
                hint="verify two experts as a pair (verify BASE transformer=HIGH,transformer_2=LOW --report DIR) "
                "so their roles are known, or publish them to separate repos",
            )
        seen[e.name] = e
    entries.sort(key=lambda e: e.name)
    return Plan(repo_id, model, library, kind, arts, entries)


def default_stage(folder: Path, model: str) -> Path:
    """Beside DIR (same device, so files hard-link): ``<DIR parent>/<model>-hub``."""
    return folder.resolve().parent / f"{model}-hub"


def _is_previous_stage(stage: Path) -> bool:
    return (stage / SUMS).is_file() and (stage / CARD).is_file()


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another device, or links not allowed: a symlink, still no copy
        os.symlink(src.resolve(), dst)


def build(p: Plan, stage: Path, card: str, plot: str | None, folder: Path) -> dict[str, int]:
    """Write the staging folder atomically; returns {repo path: bytes} of everything in it."""
    stage = Path(stage)
    root = folder.resolve()
    if stage.resolve() == root or root in stage.resolve().parents:
        raise UsageError(f"the staging folder {stage} is inside {folder}", hint="give --out outside DIR")
    if stage.exists():
        if not _is_previous_stage(stage):
            raise OutputError(
                f"{stage} exists and is not a staging folder publish wrote",
                hint="give another --out or remove it yourself",
            )
        shutil.rmtree(stage)  # links and a card: the artifacts themselves are untouched
    sizes: dict[str, int] = {}
    with atomic_dir(stage) as tmp:
        sums = []
        for e in p.entries:
            _link(e.source, tmp / e.name)
            sums.append((e.name, file_sha256(e.source)))
            sizes[e.name] = e.bytes
        (tmp / CARD).write_text(card, encoding="utf-8")
        sizes[CARD] = (tmp / CARD).stat().st_size
        if plot is not None:
            (tmp / PLOT).write_text(plot, encoding="utf-8")
            sizes[PLOT] = (tmp / PLOT).stat().st_size
        lines = [f"{h}  {n}\n" for n, h in sorted(sums)]
        (tmp / SUMS).write_text("".join(lines), encoding="utf-8")
        sizes[SUMS] = (tmp / SUMS).stat().st_size
    return dict(sorted(sizes.items()))
