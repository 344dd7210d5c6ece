"""The API as a library: it prints nothing, reports progress to a callback, leaves nothing behind
when interrupted, raises errors that are also the builtins, and ``import weightsmith`` stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from apikit import GEN

import weightsmith
from weightsmith.progress import Progress


def test_library_code_prints_nothing(tiny, tmp_path, capfd):
    capfd.readouterr()
    converted = weightsmith.convert(tiny["transformer"], tmp_path / "wan.safetensors", to="original")
    quantized = weightsmith.quantize(
        converted.dst, tmp_path / "wan-Q4_0.gguf", scheme="gguf:Q4_0", config=tiny["transformer"]
    )
    weightsmith.quantize(tiny["transformer"], tmp_path / "wan-fp8", scheme="fp8")
    result = weightsmith.verify(tiny["pipe"], [quantized.dst], no_cache=True, consumer="both", **GEN)
    assert result.passed
    assert capfd.readouterr() == ("", "")  # file descriptors 1 and 2: nothing from Python or C


def test_progress_goes_to_the_callback(tiny, tmp_path):
    seen: list[Progress] = []
    weightsmith.convert(tiny["transformer"], tmp_path / "wan", to="diffusers", progress=seen.append)
    assert seen[0].task == "convert" and seen[0].done == 0 and seen[0].total > 1
    done = [p.done for p in seen]
    assert done == sorted(done) and len(done) > seen[0].total // 2  # ticks as tensors are written
    assert seen[-1].finished and not any(p.finished for p in seen[:-1])
    seen.clear()
    weightsmith.verify(
        tiny["pipe"], [tiny["q8"]], no_cache=True, consumer="weightsmith", progress=seen.append, **GEN
    )
    assert {p.task for p in seen} == {"verify"} and seen[-1].finished and seen[-1].done == seen[-1].total > 0


class Interrupt:
    """A progress callback that presses Ctrl-C at the ``at``-th step."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, p: Progress) -> None:
        if p.done >= self.at and not p.finished:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "verb",
    [
        lambda src, dst, cb: weightsmith.convert(src, dst / "out", to="diffusers", progress=cb),
        lambda src, dst, cb: weightsmith.quantize(src, dst / "out.gguf", scheme="gguf:Q8_0", progress=cb),
        lambda src, dst, cb: weightsmith.quantize(src, dst / "out", scheme="int8", progress=cb),
    ],
    ids=["convert", "quantize-gguf", "quantize-int8"],
)
def test_keyboard_interrupt_leaves_no_partial_output(tiny, tmp_path, verb):
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(KeyboardInterrupt):
        verb(tiny["transformer"], dst, Interrupt(at=3))
    assert sorted(os.listdir(dst)) == []  # no output, no partial, no per-layer table


def test_errors_are_the_builtins_too(tiny, tmp_path):
    with pytest.raises(FileNotFoundError):
        weightsmith.inspect(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown GGUF recipe"):
        weightsmith.quantize(tiny["transformer"], tmp_path / "x.gguf", scheme="gguf:Q9_9_X")
    with pytest.raises(ValueError, match="unknown generation option"):
        weightsmith.verify(tiny["pipe"], [tiny["q8"]], stepz=1)  # type: ignore[call-arg]
    with pytest.raises(OSError):
        weightsmith.convert(tiny["transformer"], tiny["q8"], to="original")  # exists, no overwrite
    assert not list(tmp_path.iterdir())


def test_import_is_light_and_names_resolve():
    code = (
        "import sys, weightsmith; assert 'torch' not in sys.modules, 'torch imported'; "
        "weightsmith.load_model; weightsmith.QuantizeResult; "
        "assert 'torch' not in sys.modules, 'weightsmith.api imports torch'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    missing = [n for n in weightsmith.__all__ if getattr(weightsmith, n, None) is None]
    assert not missing and sorted(weightsmith.api.__all__) == sorted(
        set(weightsmith.__all__) - {"__version__"}
    )


def test_verbs_named_like_packages_stay_callable():
    import weightsmith.convert.run  # binds the package as weightsmith.convert
    import weightsmith.verify.gates  # noqa: F401
    from weightsmith import convert, inspect, publish, quantize, verify

    assert all(callable(v) for v in (convert, inspect, publish, quantize, verify))
    assert weightsmith.convert.run.convert is not None  # the package's modules are still there
    with pytest.raises(FileNotFoundError):
        weightsmith.inspect("/nonexistent/model.safetensors")


def _env() -> dict[str, str]:
    root = Path(weightsmith.__file__).parent.parent
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
