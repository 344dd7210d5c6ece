"""The command line starts without torch: `--help`, `--version`, every `COMMAND --help` and
`inspect` of a GGUF and a safetensors file import none of torch, diffusers, transformers, torchao.

Counted in a fresh interpreter by the modules imported, not by time (bench/bench_startup.py
measures time; reports/startup.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from weightsmith.cli import cli
from weightsmith.families import components
from weightsmith.io.base import TensorInfo
from weightsmith.tiny import Fixture, save_fixture

HEAVY = ("torch", "diffusers", "transformers", "torchao")
ROOT = Path(__file__).resolve().parent.parent

# Runs each argv through the CLI's entry point in order, in one interpreter, and reports which
# heavy modules each one added (the first to import one is the one named).
_PROBE = """
import json, sys
from weightsmith.cli import main
heavy = {heavy!r}
out = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out.append([argv, code, [m for m in heavy if m in sys.modules]])
sys.stderr.write("PROBE " + json.dumps(out) + "\\n")
"""


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


def _probe(argvs: list[list[str]], expect_error: str = "") -> list[tuple[list[str], int, list[str]]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), json.dumps(argvs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    line = next((x for x in r.stderr.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, r.stderr[-2000:]
    assert expect_error in r.stderr, r.stderr[-2000:]
    return [tuple(x) for x in json.loads(line.removeprefix("PROBE "))]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """A tiny transformer as an original-layout safetensors file and a GGUF, both carrying the
    Diffusers config weightsmith embeds (so inspect also checks that config)."""
    from weightsmith.cli import main

    comp = next(c for c in components() if c.component == "transformer" and "original" in c.layouts)
    tmp = tmp_path_factory.mktemp("startup")
    src = save_fixture(
        Fixture(comp.family, comp.component, comp.variants[0], "diffusers", "diffusers-folder"), tmp
    )
    st, gguf = tmp / "model.safetensors", tmp / "model.gguf"
    for argv in (
        ["convert", str(src), str(st), "--to", "original"],
        ["quantize", str(src), str(gguf), "--scheme", "gguf:Q8_0"],
    ):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code in (0, None), argv
    return {"safetensors": st, "gguf": gguf}


def test_help_version_and_inspect_import_no_torch(artifacts):
    argvs = [["--help"], ["--version"]]
    argvs += [[*cmd, "--help"] for cmd in _commands(cli)]
    argvs += [["inspect", str(artifacts["gguf"])], ["inspect", "--json", str(artifacts["safetensors"])]]
    results = _probe(argvs)
    assert len(results) == len(argvs)
    for argv, code, heavy in results:
        assert code in (0, None), f"weightsmith {' '.join(argv)} exited {code}"
        assert heavy == [], f"weightsmith {' '.join(argv)} imported {', '.join(heavy)}"
    # every command was asked (a command added later is covered without editing this test)
    assert {tuple(a[:-1]) for a in argvs if a[-1] == "--help"} >= {(c,) for c in cli.commands}


def test_inspect_refuses_a_lying_config_without_torch(artifacts, tmp_path):
    """inspect's config check types each key by the diffusers class's fields (stored per family)
    and still refuses a config that lies, in a process that never imports torch."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from weightsmith.io.base import CONFIG_METADATA_KEY

    with safe_open(str(artifacts["safetensors"]), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta[CONFIG_METADATA_KEY])
    config["num_attention_heads"] = "abc"
    meta[CONFIG_METADATA_KEY] = json.dumps(config)
    bad = tmp_path / "lying.safetensors"
    save_file(state, str(bad), metadata=meta)
    ((_, code, heavy),) = _probe(
        [["inspect", str(bad)]], expect_error="num_attention_heads is 'abc', not int"
    )
    assert code == 2 and heavy == []


def test_tensor_info_names_dtypes_without_torch():
    """A reader may give a dtype by name; the torch dtype comes only when asked for, equal either way."""
    import pickle

    import torch

    by_name = TensorInfo("w", (2, 3), "BF16", "BF16", 12, "f")
    by_dtype = TensorInfo("w", (2, 3), torch.bfloat16, "BF16", 12, "f")
    assert by_name == by_dtype and hash(by_name) == hash(by_dtype)
    assert by_name.dtype is torch.bfloat16 and by_dtype.dtype_name == "BF16"
    assert pickle.loads(pickle.dumps(by_name)) == by_name
    odd = TensorInfo("e", (4,), torch.float8_e8m0fnu, "F8_E8M0", 4)
    assert odd.dtype is torch.float8_e8m0fnu
    with pytest.raises(AttributeError):
        by_name.shape = (1,)  # type: ignore[misc]


_BLAS_PROBE = """
import json, os, sys
before = os.environ.get("OPENBLAS_NUM_THREADS")
from weightsmith.threads import import_numpy_without_blas_threads
import_numpy_without_blas_threads()
print(json.dumps([len(os.listdir("/proc/self/task")), "numpy" in sys.modules, os.environ.get("OPENBLAS_NUM_THREADS"), before]))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
def test_numpy_loads_without_blas_threads_and_the_environment_is_given_back():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", _BLAS_PROBE], env=env, capture_output=True, text=True, check=True
    )
    threads, loaded, after, before = json.loads(out.stdout)
    assert loaded and threads == 1  # OpenBLAS started no thread of its own
    assert after is None and before is None
