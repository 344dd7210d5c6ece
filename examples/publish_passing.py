"""Publish the artifacts that passed verification (examples/ci_quantize_matrix.py's output) to
the Hugging Face Hub, with a model card of their measured fidelity.

    python examples/publish_passing.py out/ --repo me/Wan2.1-T2V-1.3B-GGUF [--endpoint URL] [--dry-run]

The passing artifacts of one format (a Hub repo lists one library: ``--format gguf`` files or
``diffusers`` folders) and the verify report are hard-linked into OUT/publish/ (failed ones are
left out) and that folder is published. The token comes from HF_TOKEN or ``hf auth login``;
``--endpoint`` points at another Hub (a mirror, or a local test server).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import weightsmith


def link_tree(src: Path, dst: Path) -> None:
    """``src`` (a file or a folder) at ``dst`` as hard links: no bytes copied."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        os.link(src, dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("out", type=Path, help="the CI job's folder: artifacts and report/report.json")
    ap.add_argument("--repo", required=True, help="the Hub repo, OWNER/NAME")
    ap.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    ap.add_argument("--dry-run", action="store_true", help="stage the folder and list it; no upload")
    ap.add_argument("--format", choices=["gguf", "diffusers"], default="gguf", help="which artifacts")
    args = ap.parse_args(argv)

    report = args.out / "report"
    document = json.loads((report / "report.json").read_text())
    passed = [Path(c["paths"]["transformer"]) for c in document["candidates"] if c["passed"]]
    passing = [p for p in passed if (p.suffix == ".gguf") == (args.format == "gguf")]
    if not passing:
        print(f"no {args.format} artifact passed its gates; nothing to publish", file=sys.stderr)
        return 1
    folder = args.out / "publish"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    link_tree(report, folder / "report")
    for artifact in passing:
        link_tree(artifact, folder / artifact.name)

    result = weightsmith.publish(
        folder,
        repo_id=args.repo,
        dry_run=args.dry_run,
        out=args.out / "hub",
        endpoint=args.endpoint,
    )
    for name, size in result.files.items():
        print(f"{name}  {size:,} bytes")
    print(result.url or f"staged in {result.stage} (dry run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
