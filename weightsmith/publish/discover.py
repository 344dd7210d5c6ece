"""What a publish folder holds: the artifacts, and the verify reports that scored them.

The discovery rule (README "Publishing"): under DIR (hidden names skipped, at most ``MAX_DEPTH``
folders deep) every ``.gguf`` file is a GGUF artifact, every ``.safetensors`` file a single-file
(ComfyUI) artifact, every folder with a ``config.json`` a Diffusers component artifact (not looked
into further), and every ``report.json`` a verify report (its folder is not looked into further).
A report's candidate scored an artifact when the path it names is the artifact (taken as given,
relative to the report's folder, or relative to DIR), or else when exactly one artifact has that
file name; a single file must also still have the size the report recorded, so a report of an
older file of the same name does not vouch for a new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightsmith.errors import InputError, NotFoundError, UsageError
from weightsmith.io.structured import read_json_file
from weightsmith.publish.limits import check_file_size

MAX_DEPTH = 4
REPORT = "report.json"
SCHEMAS = ("weightsmith.verify/1", "weightsmith.verify-matrix/1")
GGUF, DIFFUSERS, SINGLE = "gguf", "diffusers", "single-file"


@dataclass
class Evidence:
    """One report candidate that scored an artifact: its verdict, worst metrics and settings."""

    report: Path
    label: str
    loader: str
    passed: bool
    metrics: dict[str, Any]
    settings: dict[str, Any]
    scheduler: str
    frames: bool
    gates: list[str]
    failed: list[str]
    baseline: dict[str, Any]
    experts: dict[str, str]


@dataclass
class Artifact:
    """One file or folder to publish and what is known about it."""

    path: Path
    kind: str
    files: list[Path]
    bytes: int
    family: str | None = None
    variant: str | None = None
    scheme: str = ""
    role: str | None = None  # the expert it is in a two-expert model (e.g. "transformer_2")
    partner: Path | None = None
    evidence: list[Evidence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """ "verified" (every report that scored it passed), "failed" or "missing"."""
        if not self.evidence:
            return "missing"
        return "verified" if all(e.passed for e in self.evidence) else "failed"


def _walk(root: Path, depth: int, artifacts: list[Path], reports: list[Path]) -> None:
    """Collect artifacts and reports under ``root``; a report folder below DIR is not entered."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"cannot list {root}: {e.strerror}", hint="check the folder's permissions") from e
    if any(e.name == REPORT and e.is_file() for e in entries):
        reports.append(root / REPORT)
        if depth > 0:
            return
    for e in entries:
        p = Path(e.path)
        if e.name.startswith("."):
            continue
        if e.is_dir():
            if (p / "config.json").is_file():
                artifacts.append(p)
            elif depth < MAX_DEPTH:
                _walk(p, depth + 1, artifacts, reports)
        elif e.is_file() and e.name.endswith((".gguf", ".safetensors")):
            artifacts.append(p)


def find(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(artifact paths, report.json paths) under ``folder`` by the discovery rule."""
    root = Path(folder)
    if not root.exists():
        raise NotFoundError(f"{root} does not exist", hint="give the folder holding the artifacts")
    if not root.is_dir():
        raise UsageError(
            f"{root} is not a folder", hint="give a folder holding the artifacts and their verify reports"
        )
    artifacts: list[Path] = []
    reports: list[Path] = []
    _walk(root, 0, artifacts, reports)
    if not artifacts:
        raise InputError(
            f"{root} holds no artifact to publish (.gguf, .safetensors or a Diffusers component folder)",
            hint="quantize into this folder first, or give the folder the artifacts are in",
        )
    return artifacts, reports


def _folder_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return out


def _scheme(meta: dict[str, Any], dtypes: dict[str, Any]) -> str:
    """The quantization type a file name carries (Q4_K_M, int8, fp8-tensor...)."""
    scheme = str(meta.get("weightsmith.scheme") or "")
    if scheme:
        return scheme.split(":", 1)[-1]
    ftype = meta.get("general.file_type")
    if ftype is not None:
        try:
            import gguf

            return gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_")
        except (ValueError, TypeError):
            pass
    quantized = [k for k in dtypes if k not in ("F32", "F16", "BF16")]
    return (quantized or sorted(dtypes, key=lambda k: -dtypes[k].get("bytes", 0)) or ["unknown"])[0]


def describe_artifact(path: Path) -> Artifact:
    """Kind, files, size, detection and scheme of one artifact; a file over the Hub's limit is
    refused here, before its header is read."""
    from weightsmith.inspect import describe

    files = _folder_files(path) if path.is_dir() else [path]
    for f in files:
        check_file_size(f)
    kind = DIFFUSERS if path.is_dir() else GGUF if path.suffix == ".gguf" else SINGLE
    info = describe(path)
    det = info.get("detection") or {}
    art = Artifact(path, kind, files, sum(f.stat().st_size for f in files))
    art.family, art.variant = det.get("family"), det.get("variant")
    art.scheme = _scheme(info.get("metadata") or {}, info.get("dtypes") or {})
    if art.family is None:
        art.notes.append(f"{path.name}: family not detected")
    return art


def _runs(report: Path) -> list[dict[str, Any]]:
    body = read_json_file(report, what=str(report), hint="re-run verify --report", allow_nonfinite=True)
    if not isinstance(body, dict) or body.get("schema") not in SCHEMAS:
        raise InputError(
            f"{report} is not a weightsmith verify report (schema {SCHEMAS[0]})",
            hint="remove it from the folder or re-run verify --report",
        )
    runs = body.get("runs") if body["schema"] == SCHEMAS[1] else [body]
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise InputError(f"{report} has no runs", hint="re-run verify --report")
    return runs


def _locate(p: str, report: Path, root: Path, arts: list[Artifact]) -> Artifact | None:
    given = Path(p)
    tries = [given] if given.is_absolute() else [given, report.parent / given, root / given]
    tries = [t for t in tries if t.exists()]
    for t in tries:  # the same path first, then the same file under another name (a link)
        for a in arts:
            if t.resolve() == a.path.resolve():
                return a
    for t in tries:
        for a in arts:
            try:
                if os.path.samefile(t, a.path):
                    return a
            except OSError:
                continue
    named = [a for a in arts if a.path.name == given.name]
    return named[0] if len(named) == 1 else None


def _evidence(report: Path, run: dict[str, Any], c: dict[str, Any]) -> Evidence:
    failed = [g.get("gate", "?") for g in c.get("gates", []) if isinstance(g, dict) and not g.get("passed")]
    return Evidence(
        report=report,
        label=str(c.get("label", "")),
        loader=str(c.get("loader", "")),
        passed=bool(c.get("passed")),
        metrics=dict(c.get("metrics") or {}),
        settings=dict(run.get("settings") or {}),
        scheduler=str((run.get("scheduler") or {}).get("name", "")),
        frames=bool(run.get("frames_decoded")),
        gates=[str(g) for g in run.get("gates") or []],
        failed=[str(f) for f in failed],
        baseline=dict(run.get("baseline") or {}),
        experts={str(k): str(v) for k, v in (c.get("paths") or {}).items()},
    )


def match(arts: list[Artifact], reports: list[Path], root: Path) -> list[str]:
    """Attach each report candidate to the artifacts it scored; returns notes on what was skipped."""
    notes: list[str] = []
    for report in reports:
        for run in _runs(report):
            for c in run.get("candidates") or []:
                if not isinstance(c, dict) or not isinstance(c.get("paths"), dict):
                    continue
                found = {e: _locate(str(p), report, root, arts) for e, p in c["paths"].items()}
                if not all(found.values()):
                    continue
                hit = [a for a in found.values() if a is not None]
                if all(a.kind != DIFFUSERS for a in hit) and sum(a.bytes for a in hit) != c.get("bytes"):
                    notes.append(
                        f"{report}: candidate {c.get('label')} was scored at {c.get('bytes')} bytes; "
                        f"the file now has {sum(a.bytes for a in hit)}: not counted"
                    )
                    continue
                ev = _evidence(report, run, c)
                for expert, a in found.items():
                    assert a is not None
                    if len(found) > 1:
                        _set_role(a, expert, [b.path for e, b in found.items() if e != expert and b])
                    a.evidence.append(ev)
    return notes


def _set_role(a: Artifact, expert: str, partners: list[Path]) -> None:
    if a.role is not None and a.role != expert:
        raise InputError(
            f"{a.path} was verified as {a.role} in one report and as {expert} in another",
            hint="keep only the reports of the pair you publish",
        )
    a.role = expert
    a.partner = partners[0] if partners else None


def discover(folder: str | Path) -> tuple[list[Artifact], list[str]]:
    """Every artifact under ``folder`` with the report candidates that scored it, and notes."""
    root = Path(folder)
    paths, reports = find(root)
    arts = [describe_artifact(p) for p in paths]
    notes = match(arts, reports, root)
    for a in arts:
        notes += a.notes
    return arts, notes
