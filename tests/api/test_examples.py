"""The three scripts in examples/ run as a user runs them (subprocesses) on a tiny Wan: the CI
matrix fails on its failing gate, the passing artifact is published to a loopback Hub, and the
quantized transformer generates in a diffusers pipeline. ``make test`` type-checks them (mypy)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import weightsmith

sys.path.insert(0, str(Path(__file__).parents[1] / "publish"))
from hub_server import hub  # noqa: E402, F401, F811 - the loopback Hub fixture

ROOT = Path(weightsmith.__file__).parent.parent
EXAMPLES = ROOT / "examples"
SIZE = ["--steps", "1", "--height", "32", "--width", "32", "--frames", "5", "--text-len", "8"]


def run(script: str, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1", "CI": "1"}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    base.pop("HF_ENDPOINT", None)  # the publish example is pointed at the Hub by --endpoint
    cmd = [sys.executable, str(EXAMPLES / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=base, timeout=600)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("examples")
    r = run(
        "ci_quantize_matrix.py", root / "pipe", root / "out", "--tiny", "wan", *SIZE,
        "--scheme", "gguf:Q8_0", "--scheme", "gguf:Q2_K", "--gate", "latent_sqnr>=10",
        env={"WEIGHTSMITH_CACHE": str(root / "cache")},
    )  # fmt: skip
    return root / "pipe", root / "out", r


def test_ci_matrix_fails_the_job_on_a_failed_gate(matrix):
    _, out, r = matrix
    assert r.returncode == 1, r.stderr  # Q2_K misses latent_sqnr>=10 on the tiny Wan
    assert "pass  model-Q8_0.gguf" in r.stdout and "FAIL  model-Q2_K.gguf" in r.stdout
    assert "gate failed: model-Q2_K.gguf: latent_sqnr>=10" in r.stderr
    assert (out / "report" / "report.json").is_file() and (out / "model-Q8_0.gguf.layers.json").is_file()


def test_publish_sends_only_the_passing_artifact(matrix, hub, tmp_path):  # noqa: F811
    _, out, _ = matrix
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": os.environ["HF_TOKEN"], "HF_HUB_DISABLE_XET": "1"}
    r = run("publish_passing.py", out, "--repo", "tester/tiny-wan-GGUF", "--endpoint", hub.url, env=env)
    assert r.returncode == 0, r.stderr
    files = hub.state.files("tester/tiny-wan-GGUF")
    assert "tiny-wan-Q8_0.gguf" in files and not any("Q2_K" in f for f in files)
    assert files["tiny-wan-Q8_0.gguf"] == (out / "model-Q8_0.gguf").read_bytes()
    assert r.stdout.strip().splitlines()[-1].startswith(hub.url)  # the commit's URL


def test_quantized_transformer_generates_in_a_diffusers_pipeline(matrix):
    pipe, out, _ = matrix
    r = run("load_into_pipeline.py", pipe, out / "model-Q8_0.gguf", *SIZE, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "WanTransformer3DModel from model-Q8_0.gguf: 5 frames of (32, 32, 3)" in r.stdout
