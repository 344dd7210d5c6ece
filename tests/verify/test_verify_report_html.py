"""report.html renders in headless Chromium (Debian's chromium package): every picture decodes, the
page script runs without errors, and the screenshot is not blank. Skipped without /usr/bin/chromium."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from verifykit import GEN

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(wan, run_cli, tmp_path):
    rep = tmp_path / "rep"
    r = run_cli(
        "verify",
        wan["pipe"],
        wan["Q2_K"],
        wan["transformer"],
        *GEN,
        "--report",
        rep,
        "--cache-dir",
        wan["cache"],
    )
    assert r.code == 0, r.err
    url = (rep / "report.html").resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="yes"' in dom.stdout  # the page script ran to its end
    assert (
        'data-broken="0"' in dom.stdout and 'data-images="6"' in dom.stdout
    )  # 3 candidates x (strip, animation)
    errors = [ln for ln in dom.stderr.splitlines() if "Uncaught" in ln or ("CONSOLE" in ln and "rror" in ln)]
    assert not errors, errors

    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, plots and frames, not a blank page
    white = max(colors)[0] / (img.size[0] * img.size[1])
    assert white < 0.97
