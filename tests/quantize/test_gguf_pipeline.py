"""The GGUF quantize pipeline (weightsmith/quantize/pipeline.py): the same bytes as the one-tensor-
at-a-time path for every recipe, stages bounded and in order, errors and signals ending the run with
no partial output."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from weightsmith.convert.engine import make_plan, resolve_detection, stream
from weightsmith.families import get_component
from weightsmith.families.base import DIFFUSION_PREFIX
from weightsmith.io import open_single
from weightsmith.io.gguf_writer import GGUFTensorSpec, write_gguf
from weightsmith.quantize.gguf.encode import encode
from weightsmith.quantize.gguf.recipes import RECIPES
from weightsmith.quantize.gguf.run import _metadata, file_sha256, quantize_gguf, recipe_plan
from weightsmith.quantize.pipeline import Background, ahead

REPO = Path(__file__).resolve().parents[2]


def _sequential(src: Path, dst: Path, recipe: str) -> None:
    """The path before the pipeline: hash the sources, write the header with their digests, then
    read, quantize and write one tensor at a time in this thread."""
    import torch

    ck = open_single(src)
    det = resolve_detection(ck)
    comp = get_component(det.family, det.component)
    plan = make_plan(ck, comp.quant.gguf_layout, detection=det, prefix="")
    types = recipe_plan(ck, det, recipe).types()
    names = {s.name: s.name.removeprefix(DIFFUSION_PREFIX) for s in plan.specs}
    specs = [GGUFTensorSpec(names[s.name], s.shape, types[names[s.name]]) for s in plan.specs]
    files = [p for p in ck.files if p.is_file()]
    meta = _metadata(recipe, det, ck, plan.source_config, None, files, [file_sha256(p) for p in files])
    arrays = (
        (names[n], encode(t, types[names[n]], torch.device("cpu"), None, n)[0]) for n, t in stream(plan)
    )
    write_gguf(dst, comp.quant.gguf_arch, specs, arrays, meta)
    ck.close()


def test_pipeline_writes_the_sequential_paths_bytes_for_every_recipe(tiny_wan, tmp_path, one_thread):
    for recipe in RECIPES:
        ours, ref = tmp_path / f"{recipe}.gguf", tmp_path / f"{recipe}-seq.gguf"
        result = quantize_gguf(tiny_wan, ours, f"gguf:{recipe}", progress=False, report=False)
        _sequential(tiny_wan, ref, recipe)
        assert ours.read_bytes() == ref.read_bytes(), recipe
        assert {"read", "quantize", "write", "hash"} <= set(result.phases), result.phases


def test_ahead_keeps_order_and_stays_bounded():
    made: list[int] = []

    def produce():
        for i in range(50):
            made.append(i)
            yield i

    got = []
    for item in ahead(produce(), depth=2):
        time.sleep(0.001)
        assert len(made) - len(got) <= 4, (len(made), len(got))  # queue (2) + in hand + this one
        got.append(item)
    assert got == list(range(50))


def test_ahead_reraises_the_workers_error_and_stops_early():
    class Boom(ValueError):
        pass

    def failing():
        yield 1
        raise Boom("tensor 2 is broken")

    it = ahead(failing())
    assert next(it) == 1
    with pytest.raises(Boom, match="tensor 2 is broken"):
        next(it)

    made = []
    done = threading.Event()

    def endless():
        try:
            for i in range(10_000):
                made.append(i)
                yield i
        finally:
            done.set()

    stage = ahead(endless(), depth=1)
    assert next(stage) == 0
    stage.close()  # the consumer gives up: the worker stops and closes its source
    assert done.wait(5) and len(made) < 10


def test_background_returns_or_reraises():
    assert Background(lambda: 41 + 1).result() == 42

    def fail():
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        Background(fail).result()


# The child quantizes with an encode that, on the second tensor, says so through a file and then
# waits in the pipeline's quantize stage: the signal arrives while the stages are running.
_CHILD = r"""
import pathlib, sys, time
import weightsmith.quantize.gguf.arrays as run  # the numpy path: a safetensors source on the CPU

ready = pathlib.Path(sys.argv[1])
real = run.encode
calls = []

def slow(*a, **k):
    calls.append(1)
    if len(calls) == 2:
        ready.write_text("quantizing")
        time.sleep(120)
    return real(*a, **k)

run.encode = slow
from weightsmith.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow  # a child process that imports torch: a few seconds
@pytest.mark.parametrize(
    ("sig", "code", "last"),
    [(signal.SIGTERM, 143, "terminated; no output was left behind"), (signal.SIGINT, 130, "aborted")],
    ids=["term", "int"],
)
def test_signal_during_the_pipeline_leaves_nothing(tmp_path, tiny_wan, sig, code, last):
    out = tmp_path / "out"
    out.mkdir()
    ready = tmp_path / "ready"
    cmd = [sys.executable, "-c", _CHILD, str(ready), "quantize", str(tiny_wan), str(out / "wan.gguf"),
           "--scheme", "gguf:Q4_K_M"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never started quantizing"
            time.sleep(0.02)
        assert any(p.name.startswith(".wan.gguf.") for p in out.iterdir())  # a partial is being written
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - t0 < 30  # the sleeping stage does not hold the exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == last, err  # Ctrl-C: click's own word
    assert "Traceback" not in err
    assert list(out.iterdir()) == []
