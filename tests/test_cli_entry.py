"""The `weightsmith` program ends without the interpreter's teardown, yet with the command's exit
code, its output flushed and the exit handlers run."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import atexit, sys
from pathlib import Path
marker = Path(sys.argv[1])
atexit.register(lambda: marker.write_text("ran"))
sys.argv = ["weightsmith", *sys.argv[2:]]
print("before", end="")  # buffered: must still come out
from weightsmith.cli_entry import entry
entry()
"""


def _run(tmp_path, *argv):
    marker = tmp_path / "atexit.txt"
    out = subprocess.run([sys.executable, "-c", _PROBE, str(marker), *argv], capture_output=True, text=True)
    return out, marker.read_text() if marker.exists() else None


def test_success_flushes_output_and_runs_exit_handlers(tmp_path):
    out, marker = _run(tmp_path, "--version")
    assert out.returncode == 0 and out.stdout.startswith("before") and "weightsmith, version" in out.stdout
    assert marker == "ran"


def test_errors_keep_their_exit_code_and_one_line(tmp_path):
    out, marker = _run(tmp_path, "inspect", str(tmp_path / "missing.safetensors"))
    assert out.returncode == 2 and marker == "ran"
    assert out.stderr.count("\n") == 1 and "does not exist" in out.stderr


def test_python_dash_m_uses_the_same_entry():
    out = subprocess.run([sys.executable, "-m", "weightsmith", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "weightsmith, version" in out.stdout
