"""docs/api.md's examples run as written (in order, in one namespace, in a scratch folder), on the
tiny pipeline its first block writes. A block after a ``<!-- not run`` line needs a real model."""

from __future__ import annotations

import re
from pathlib import Path

import weightsmith

DOC = Path(weightsmith.__file__).parent.parent / "docs" / "api.md"
BLOCK = re.compile(r"(<!-- not run[^\n]*\n)?```python\n(.*?)```", re.S)


def test_every_example_in_the_api_doc_runs(tmp_path, monkeypatch, private_cache):
    blocks = [code for skip, code in BLOCK.findall(DOC.read_text()) if not skip]
    assert len(blocks) >= 11  # setup, progress and one per verb
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name} block {i}", "exec"), namespace)  # noqa: S102 - our own doc
    assert (tmp_path / "out" / "report" / "report.json").is_file()
