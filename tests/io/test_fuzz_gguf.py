"""Fuzzing the GGUF reader: mutated and truncated valid files, ``inspect`` and ``convert``.

Every case must end in exit 0 or 2 with one line, within a second, allocating no more than the
file plus tests/hostile.py's slack. Seeds are fixed: the same cases on every run.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from hostile import fuzz_count, fuzz_file

from weightsmith.io.base import CONFIG_METADATA_KEY
from weightsmith.kernels.ggml import quantize
from weightsmith.tiny import tiny_state


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def small_gguf(path: Path) -> bytes:
    """A GGUF whose header and tensor table make up most of its bytes: every value type, short
    and long arrays, an orig_shape entry, and plain, BF16 and quantized tensors."""
    w = gguf.GGUFWriter(str(path), "wan")
    w.add_string("general.name", "fuzz")
    w.add_uint32("wan.block_count", 2)
    w.add_float32("wan.eps", 1e-6)
    w.add_bool("wan.flag", True)
    w.add_int64("wan.big", -(2**40))
    w.add_array("tokenizer.ggml.tokens", ["a", "bc", "", "déf", "g" * 20])
    w.add_array("wan.long", list(range(100)))
    w.add_array("wan.floats", [0.5, -1.0, 2.25])
    w.add_array("comfy.gguf.orig_shape.c", [2, 8, 8])
    g = torch.Generator().manual_seed(0)
    w.add_tensor("a", torch.randn(4, 8, generator=g).numpy())
    w.add_tensor("b", torch.randn(8, generator=g).half().numpy())
    c = torch.randn(2, 64, generator=g)
    w.add_tensor("c", quantize(c, "Q8_0").numpy(), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    d = torch.randn(1, 256, generator=g)
    w.add_tensor("d", quantize(d, "Q4_K").numpy(), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    e = torch.randn(2, 4, generator=g).bfloat16().view(torch.uint8).numpy()
    w.add_tensor("e", e, raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.add_tensor("f", np.arange(6, dtype=np.int32).reshape(2, 3))
    _finish(w)
    return path.read_bytes()


def wan_gguf(path: Path) -> bytes:
    """The tiny Wan transformer as GGUF with its config, one Linear in Q8_0 and one in Q4_K."""
    state, config = tiny_state("wan", "transformer", "2.1-t2v", "diffusers")
    quant = {"condition_embedder.time_embedder.linear_1.weight": "Q4_K", "blocks.0.attn1.to_q.weight": "F16"}
    w = gguf.GGUFWriter(str(path), "wan")
    w.add_string(CONFIG_METADATA_KEY, json.dumps(config))
    for name in sorted(state):
        t = state[name].float().contiguous()
        if name in quant:
            q = quantize(t, quant[name]).numpy()
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType[quant[name]])
        else:
            w.add_tensor(name, t.numpy())
    _finish(w)
    return path.read_bytes()


def test_small_gguf_reads(tmp_path, run_cli):
    from weightsmith.io import open_checkpoint

    small_gguf(tmp_path / "m.gguf")
    r = run_cli("inspect", tmp_path / "m.gguf")
    assert r.code == 0, r.err
    with open_checkpoint(tmp_path / "m.gguf") as ck:
        assert ck.info("c").shape == (2, 8, 8)
        assert ck.metadata["tokenizer.ggml.tokens"] == ["a", "bc", "", "déf", "g" * 20]
        assert ck.metadata["wan.long"] == "<array of 100>"
        assert ck.metadata["wan.big"] == -(2**40)
        assert ck.get("f").tolist() == [[0, 1, 2], [3, 4, 5]]
        assert ck.get("e").dtype == torch.bfloat16 and ck.get("d").shape == (1, 256)


def test_fuzz_gguf_header_inspect(tmp_path, run_cli):
    raw = small_gguf(tmp_path / "seed.gguf")
    failures = fuzz_file(run_cli, raw, tmp_path / "m.gguf", seed=1001, count=fuzz_count(200))
    assert not failures, "\n".join(failures[:20])


def test_fuzz_gguf_header_region_inspect(tmp_path, run_cli):
    # The same engine on a real model's GGUF: most bytes are data, so mutate only the header and
    # tensor table (everything before the data section) and keep the data as is.
    raw = wan_gguf(tmp_path / "seed.gguf")
    from weightsmith.io.gguf_io import parse_header

    head = parse_header(tmp_path / "seed.gguf").data_start
    data = raw[head:]

    def write(p: Path, mutant: bytes) -> None:
        p.write_bytes(mutant + data)

    failures = fuzz_file(
        run_cli, raw[:head], tmp_path / "m.gguf", seed=1002, count=fuzz_count(200) // 2, write=write
    )
    assert not failures, "\n".join(failures[:20])


def test_fuzz_gguf_convert(tmp_path, run_cli):
    raw = wan_gguf(tmp_path / "seed.gguf")
    n = itertools.count()

    def command(p: Path) -> tuple[object, ...]:
        return ("convert", p, tmp_path / f"out{next(n)}", "--to", "diffusers")

    failures = fuzz_file(
        run_cli, raw, tmp_path / "m.gguf", seed=1003, count=fuzz_count(200) // 4, command=command
    )
    assert not failures, "\n".join(failures[:20])
