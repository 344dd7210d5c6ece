"""Helpers the publish tests share (a module of its own, not conftest.py, so other folders'
conftest files cannot shadow it)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REPO = "me/Wan-Tiny-GGUF"
BASE = "Org/Wan-Tiny-Diffusers"


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a folder whose files are hard links (fast; the tests never write into them)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report" / "report.json").read_text())


def write_report(folder: Path, body: dict) -> None:
    """Replace the report (unlinked first: the copy's files are hard links to the session's)."""
    path = folder / "report" / "report.json"
    path.unlink()
    path.write_text(json.dumps(body))


def front_matter(card: str) -> str:
    assert card.startswith("---\n")
    return card.split("---\n", 2)[1]
