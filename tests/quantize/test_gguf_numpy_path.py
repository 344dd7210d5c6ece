"""A GGUF quantize on numpy arrays (weightsmith/quantize/gguf/arrays.py) writes the torch path's
bytes and SQNR column, converts floats exactly as torch does, and starts without torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gguf_quantize import WIDE, _wide_model

from weightsmith.kernels.ggml import native
from weightsmith.kernels.ggml.native_arrays import f16_array
from weightsmith.quantize.gguf import arrays
from weightsmith.quantize.gguf.run import quantize_gguf

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ("Q4_K_M", "Q8_0", "Q5_K_S", "IQ4_XS", "F16", "BF16")
LOGGER = "weightsmith.quantize.gguf.run"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Every family's wide tiny transformer as a Diffusers folder, and Wan's also in bf16."""
    out = {}
    for family in WIDE:
        folder = tmp_path_factory.mktemp(family) / "transformer"
        model = _wide_model(family)
        model.save_pretrained(str(folder))
        out[family] = folder
        if family == "wan":
            folder = tmp_path_factory.mktemp("wan-bf16") / "transformer"
            model.to(torch.bfloat16).save_pretrained(str(folder))
            out["wan-bf16"] = folder
    return out


def _both(src: Path, tmp: Path, recipe: str, monkeypatch, caplog, **kw) -> str | None:
    """Quantize with the path the run picks, then forced onto torch tensors; the files and the
    SQNR column must be the same. Returns why the first run took torch tensors (None: it did not)."""
    ours, ref = tmp / f"{recipe}-auto.gguf", tmp / f"{recipe}-torch.gguf"
    caplog.clear()
    a = quantize_gguf(src, ours, f"gguf:{recipe}", progress=False, overwrite=True, **kw)
    why = next((r.getMessage() for r in caplog.records if r.name == LOGGER), None)
    with monkeypatch.context() as m:
        m.setattr(arrays, "refusal", lambda *args: "forced by the test")
        b = quantize_gguf(src, ref, f"gguf:{recipe}", progress=False, overwrite=True, **kw)
    assert ours.read_bytes() == ref.read_bytes(), recipe
    assert [(x.name, x.qtype, x.sqnr_db, x.bytes_before) for x in a.layers] == [
        (x.name, x.qtype, x.sqnr_db, x.bytes_before) for x in b.layers
    ], recipe
    return why


@pytest.mark.parametrize("family", ["wan", "cogvideox", "wan-bf16"])
def test_numpy_path_writes_the_torch_paths_bytes(sources, family, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WEIGHTSMITH_GGML_BACKEND", raising=False)  # `=torch` refuses the numpy path
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    recipes = RECIPES + (("F32",) if family == "wan-bf16" else ())
    for recipe in recipes:
        why = _both(sources[family], tmp_path, recipe, monkeypatch, caplog, report=False)
        assert why is None, f"{family} {recipe} took the torch path: {why}"


def test_plans_with_torch_only_steps_and_imatrix_fall_back(sources, tmp_path, monkeypatch, caplog):
    """Sana's original layout derives a sincos table (a torch step): the run takes torch tensors
    and says why in the debug log; so does a run with an importance matrix."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    why = _both(sources["sana"], tmp_path, "Q4_K_M", monkeypatch, caplog, report=False)
    assert why is not None and "derived step" in why
    from weightsmith.quantize.gguf.imatrix import write_imatrix

    im = tmp_path / "wan.imatrix.gguf"
    write_imatrix(im, {"blocks.0.ffn.0.weight": torch.rand(256) + 0.5}, {"blocks.0.ffn.0.weight": 4})
    why = _both(sources["wan"], tmp_path, "Q4_K_M", monkeypatch, caplog, imatrix=im, report=False)
    assert why is not None and "importance matrix" in why


def _bits() -> np.ndarray:
    """Random float32 bit patterns plus the edges: NaNs with payloads and either sign, infinities,
    F16/BF16 overflow and rounding ties, subnormals, zeros."""
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2**32, size=200_003, dtype=np.uint64).astype(np.uint32)
    nans = rng.integers(1, 2**23, size=4099, dtype=np.uint64).astype(np.uint32) | np.uint32(0x7F800000)
    nans[::2] |= np.uint32(0x80000000)
    edges = np.array(
        [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFFFFFFFF, 0x7F7FFFFF,
         0x477FEFFF, 0x477FF000, 0x477FFFFF, 0x33000000, 0x33000001, 0x387FC000, 0x00000001,
         0x80000000, 0x00000000, 0x3F808000, 0x3F818000, 0x3F80C000],
        dtype=np.uint32,
    )  # fmt: skip
    return np.concatenate([edges, rand, nans, edges])


def _torch_bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().copy()


def _ours_bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.int16 if a.itemsize == 2 else np.int32)


@pytest.mark.parametrize("n", [1, 7, 33, None])
def test_float_encodings_match_torch_bit_for_bit(n):
    """F32/F16/BF16 from float32, float16 and BF16 sources, as torch's ``.to`` writes them, short
    tensors (torch's scalar loop) and long ones (its vector loop), NaNs and rounding ties included."""
    bits = _bits()[:n]
    f32 = bits.view(np.float32)
    sources = {
        "f32": (f32, torch.from_numpy(f32.copy())),
        "f16": ((bits & 0xFFFF).astype(np.uint16).view(np.float16), None),
        "bf16": ((bits >> 16).astype(np.uint16), None),
    }
    sources["f16"] = (sources["f16"][0], torch.from_numpy(sources["f16"][0].copy()))
    sources["bf16"] = (
        sources["bf16"][0],
        torch.from_numpy(sources["bf16"][0].view(np.int16).copy()).view(torch.bfloat16),
    )
    for kind, (a, t) in sources.items():
        for qtype, dtype in (("F32", torch.float32), ("BF16", torch.bfloat16), ("F16", torch.float16)):
            if qtype == "F16":  # values beyond F16 are refused (tested elsewhere): keep the rest
                keep = ~(np.abs(arrays.to_float32(a)) > 65504.0)
                a, t = a[keep], t[torch.from_numpy(keep)]
            got, _ = arrays.encode(a, qtype, None, "w")
            assert np.array_equal(_ours_bits(got), _torch_bits(t.to(dtype))), (kind, qtype, n)


@pytest.mark.skipif(native.library() is None, reason="no C compiler: the C kernels are not built")
def test_f16_and_bf16_rounding_match_torch_without_nan():
    """The NaN-free casts on every kind of float32 (overflow to inf, ties, subnormals)."""
    bits = _bits()
    x = bits.view(np.float32)
    x = x[~np.isnan(x)]
    t = torch.from_numpy(x.copy())
    half, amax, nan = f16_array(x, native.library(required=True))
    assert np.array_equal(_ours_bits(half), _torch_bits(t.to(torch.float16)))
    assert amax == np.abs(x).max() and not nan
    assert f16_array(np.array([1.0, np.nan, -3.0], np.float32), native.library())[1:] == (3.0, True)
    assert np.array_equal(_ours_bits(arrays.bf16_bits(x)), _torch_bits(t.to(torch.bfloat16)))


_PROBE = """
import json, sys
from weightsmith.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "diffusers", "transformers", "torchao") if m in sys.modules]
sys.stderr.write("PROBE " + json.dumps([code, heavy]) + "\\n")
"""


def test_gguf_quantize_of_safetensors_imports_no_torch(sources, tmp_path):
    dst = tmp_path / "wan-Q4_K_M.gguf"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = ["quantize", str(sources["wan-bf16"]), str(dst), "--scheme", "gguf:Q4_K_M"]
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    line = next((x for x in r.stderr.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, r.stderr[-2000:]
    code, heavy = json.loads(line.removeprefix("PROBE "))
    assert code in (0, None), r.stderr[-2000:]
    assert heavy == [], f"a GGUF quantize of safetensors imported {', '.join(heavy)}"
    assert dst.read_bytes()[:4] == b"GGUF"


def test_source_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    from weightsmith.quantize import hashing

    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 100)
    assert hashing.file_sha256(f) == hashlib.sha256(b"x" * 100).hexdigest()
    cache = tmp_path / "cache" / "sha256.json"
    assert not cache.exists()  # just written: its times may not show the next write yet
    monkeypatch.setattr(hashing, "RACY_SECONDS", 0.0)
    digest = hashing.file_sha256(f)
    stamps = json.loads(cache.read_text())
    assert list(stamps.values()) == [digest]
    cache.write_text(json.dumps(dict.fromkeys(stamps, "0" * 64)))
    assert hashing.file_sha256(f) == "0" * 64  # what is remembered is what the run records
    f.write_bytes(b"y" * 101)
    assert hashing.file_sha256(f) == hashlib.sha256(b"y" * 101).hexdigest()
    f.write_bytes(b"z" * 102)  # hashed early (as the command line starts), then taken by the run
    hashing.start([f])
    assert hashing.file_sha256(f) == hashlib.sha256(b"z" * 102).hexdigest()
