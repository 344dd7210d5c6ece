"""Every malformed or hostile input gets one line on stderr and exit 2, fast, without a big allocation."""

from __future__ import annotations

import json
import os
import struct
import time
import tracemalloc
from pathlib import Path

import gguf  # noqa: F401 - imported up front so the timings below measure reading, not imports
import pytest
import torch
from safetensors.torch import save_file

from weightsmith.errors import CorruptFileError, NotFoundError, UnsafeFileError, UnsupportedFormatError
from weightsmith.inspect import describe  # noqa: F401 - same: warm imports
from weightsmith.io import open_checkpoint


def _expect_clean_failure(run_cli, path: Path, needle: str) -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    r = run_cli("inspect", path)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.code == 2, r.err
    assert r.err.startswith("error: "), r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert needle.lower() in r.words.lower(), r.err  # the message's own words, never a tmp path
    assert r.out == ""
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    size = path.stat().st_size if path.is_file() else 0
    assert peak < size + 4 * 2**20, f"allocated {peak} bytes for a {size}-byte input"


def _good_safetensors(path: Path) -> bytes:
    save_file({"a": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(16)}, str(path))
    return path.read_bytes()


def _rewrite_header(raw: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    return struct.pack("<Q", len(new)) + new + raw[8 + n :]


def test_truncated_safetensors(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    raw = _good_safetensors(p)
    p.write_bytes(raw[:-40])
    _expect_clean_failure(run_cli, p, "truncated")


def test_wrong_magic_safetensors(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"\xff" * 8 + b"not json at all" * 10)
    _expect_clean_failure(run_cli, p, "header length")


def test_safetensors_header_not_json(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    p.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 16)
    _expect_clean_failure(run_cli, p, "not valid JSON")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda h: h["a"].__setitem__("data_offsets", [0, 10**12]), "claims bytes"),
        (lambda h: h["a"].__setitem__("shape", [8, 9]), "needs 288 bytes"),
        (lambda h: h["a"].__setitem__("shape", [10**9, 10**9]), "needs"),
        (lambda h: h["b"].__setitem__("data_offsets", [0, 64]), "overlaps"),
        (lambda h: h["a"].__setitem__("dtype", "Q9"), "dtype"),
        (lambda h: h["a"].__setitem__("shape", [-1, 8]), "invalid shape"),
    ],
    ids=["offsets-past-end", "size-vs-shape", "huge-shape", "overlap", "unknown-dtype", "negative-dim"],
)
def test_safetensors_header_lies(tmp_path, run_cli, edit, needle):
    p = tmp_path / "m.safetensors"
    raw = _good_safetensors(p)
    p.write_bytes(_rewrite_header(raw, edit))
    _expect_clean_failure(run_cli, p, needle)


def test_safetensors_hole_in_data(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    raw = _good_safetensors(p)

    def shift(h):
        for v in h.values():
            if isinstance(v, dict) and "data_offsets" in v:
                v["data_offsets"] = [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]

    p.write_bytes(_rewrite_header(raw, shift) + b"\0" * 4)
    _expect_clean_failure(run_cli, p, "hole")


def _gguf_bytes(n_tensors: int, n_kv: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


def test_gguf_wrong_magic(tmp_path, run_cli):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGML" + b"\0" * 100)
    _expect_clean_failure(run_cli, p, "wrong magic")


def test_gguf_absurd_tensor_count(tmp_path, run_cli):
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf_bytes(2**60, 0) + b"\0" * 64)
    _expect_clean_failure(run_cli, p, "more than")


def test_gguf_absurd_array_length(tmp_path, run_cli):
    key = b"tokenizer.ggml.tokens"
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 2**40)  # array of 2**40 strings
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf_bytes(0, 1, kv) + b"\0" * 64)
    _expect_clean_failure(run_cli, p, "past the end")


def _gguf_tensor_info(name: bytes, dims: list[int], ttype: int = 0, offset: int = 0) -> bytes:
    return (
        struct.pack("<Q", len(name))
        + name
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ttype, offset)
    )


def test_gguf_too_many_dims(tmp_path, run_cli):
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf_bytes(1, 0, _gguf_tensor_info(b"w", [2] * 12)) + b"\0" * 512)
    _expect_clean_failure(run_cli, p, "dimensions")


def test_gguf_absurd_dims(tmp_path, run_cli):
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf_bytes(1, 0, _gguf_tensor_info(b"w", [2**31, 2**31])) + b"\0" * 512)
    _expect_clean_failure(run_cli, p, "more than the file holds")


def test_gguf_truncated(tmp_path, run_cli):
    import numpy as np

    p = tmp_path / "ok.gguf"
    w = gguf.GGUFWriter(str(p), "wan")
    w.add_tensor("w", np.ones((64, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 1000])
    _expect_clean_failure(run_cli, p, "truncated")


def test_pickle_that_runs_code_is_refused(tmp_path, run_cli):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": Evil()}, p)
    _expect_clean_failure(run_cli, p, "never runs code")
    assert not marker.exists()
    with pytest.raises(UnsafeFileError):
        open_checkpoint(p)


def test_legacy_pickle_is_refused(tmp_path, run_cli):
    p = tmp_path / "old.pt"
    torch.save({"w": torch.zeros(2)}, p, _use_new_zipfile_serialization=False)
    _expect_clean_failure(run_cli, p, "legacy")


def test_truncated_pickle(tmp_path, run_cli):
    p = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(4096)}, p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    _expect_clean_failure(run_cli, p, "corrupt")


def test_garbage_pickle(tmp_path, run_cli):
    p = tmp_path / "m.ckpt"
    p.write_bytes(b"this is not a checkpoint" * 4)
    _expect_clean_failure(run_cli, p, "not a torch checkpoint")


def test_empty_folder(tmp_path, run_cli):
    d = tmp_path / "empty"
    d.mkdir()
    _expect_clean_failure(run_cli, d, "empty folder")
    with pytest.raises(NotFoundError):
        open_checkpoint(d)


def test_missing_path(tmp_path, run_cli):
    _expect_clean_failure(run_cli, tmp_path / "nope.safetensors", "does not exist")


def test_missing_shard(tmp_path, run_cli):
    save_file({"a": torch.zeros(4)}, str(tmp_path / "m-00001-of-00002.safetensors"))
    index = {
        "metadata": {},
        "weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00002-of-00002.safetensors"},
    }
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    _expect_clean_failure(run_cli, tmp_path / "m.safetensors.index.json", "m-00002-of-00002.safetensors")


def test_index_with_path_traversal(tmp_path, run_cli):
    index = {"weight_map": {"a": "../../etc/passwd"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    _expect_clean_failure(run_cli, tmp_path / "m.safetensors.index.json", "not a plain file name")


def test_sat_folder_pointing_nowhere(tmp_path, run_cli):
    (tmp_path / "latest").write_text("1000\n")
    _expect_clean_failure(run_cli, tmp_path, "does not exist")


def test_unsupported_suffix(tmp_path, run_cli):
    p = tmp_path / "model.onnx2"
    p.write_bytes(b"\0" * 10)
    _expect_clean_failure(run_cli, p, "unsupported file type")


def test_errors_are_typed():
    assert issubclass(CorruptFileError, UnsupportedFormatError.__mro__[1])
