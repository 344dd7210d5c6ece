"""Hostile GGUF files, torch pickles and SAT folders: one error line, exit 2, fast and small.

Each case goes through the CLI (``inspect``, and ``convert`` where a reader's data path is
involved) and greps the message's own words (``r.words``), never a temporary path.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hostile import timed

from weightsmith.io.base import CONFIG_METADATA_KEY
from weightsmith.kernels.ggml import quantize
from weightsmith.tiny import tiny_state

QUANTIZED = "condition_embedder.time_embedder.linear_1.weight"  # (24, 256): whole Q8_0 and K blocks


def _clean(r, needle: str) -> None:
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    assert needle.lower() in r.words.lower(), r.err


def _timed(run_cli, *args, seconds: float = 1.0, alloc: int = 8 * 2**20):
    r, elapsed, peak = timed(run_cli, *args)
    assert elapsed < seconds, f"took {elapsed:.2f}s: {r.err}"
    assert peak < alloc, f"allocated {peak} bytes: {r.err}"
    return r


def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _gguf(n_tensors: int, n_kv: int, body: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


def wan_gguf(
    path: Path,
    quant: dict[str, str] | None = None,
    meta: dict[str, object] | None = None,
    edit=None,
) -> Path:
    """The tiny Wan transformer as GGUF; ``quant`` maps tensor names to ggml types, ``edit`` may
    change a tensor's stored bytes (name, uint8 array) before writing."""
    state, config = tiny_state("wan", "transformer", "2.1-t2v", "diffusers")
    quant = {QUANTIZED: "Q8_0"} if quant is None else quant
    w = gguf.GGUFWriter(str(path), "wan")
    w.add_string(CONFIG_METADATA_KEY, json.dumps(config))  # convert needs the head count
    for k, v in (meta or {}).items():
        if isinstance(v, list):
            w.add_array(k, v)
        else:
            w.add_string(k, str(v))
    for name in sorted(state):
        t = state[name].float().contiguous()
        if name in quant:
            q = quantize(t, quant[name]).numpy()
            if edit is not None:
                q = edit(name, q.copy())
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType[quant[name]])
        else:
            w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- 1. a GGUF cut inside its data section ----------------------------------------------------


def test_gguf_cut_inside_data_section(tmp_path, run_cli):
    p = wan_gguf(tmp_path / "m.gguf")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 100])  # every tensor fits the file, the last one runs past it
    _clean(_timed(run_cli, "inspect", p), "lies past the end of the file (truncated)")
    r = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    _clean(r, "lies past the end of the file (truncated)")
    assert not (tmp_path / "out").exists()


# --- 2. header parsing cost bounded ----------------------------------------------------------


def test_gguf_too_many_metadata_strings_is_refused_at_once(tmp_path, run_cli):
    n = 2**20 + 1  # one over the limit: 8 MB of empty strings
    kv = _s(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n) + b"\0" * 8 * n
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf(0, 1, kv) + b"\0" * 32)
    r = _timed(run_cli, "inspect", p, alloc=4 * 2**20)
    _clean(r, "no real model has more than 1048576")


def test_gguf_long_string_array_below_the_limit_is_cheap(tmp_path, run_cli):
    n = 10_000  # walked, not materialised (tracemalloc makes this 50x slower than it is)
    kv = _s(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n) + _s(b"tok") * n
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf(0, 1, kv) + b"\0" * 32)
    r = _timed(run_cli, "inspect", p, alloc=2 * 2**20)
    assert r.code == 0, r.err
    assert "error" not in r.err


def test_gguf_too_many_tensors_is_refused_at_once(tmp_path, run_cli):
    n = 65537  # 1.6 MB of minimal tensor entries: one over the limit
    body = b"".join(_s(b"t") + struct.pack("<IIQ", 0, 0, 0) for _ in range(n))
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf(n, 0, body) + b"\0" * 64)
    _clean(_timed(run_cli, "inspect", p, alloc=2 * 2**20), "no real model has more than 65536 tensors")


def test_gguf_shared_tensor_data_is_refused(tmp_path, run_cli):
    body = b"".join(_s(b"t%d" % i) + struct.pack("<IQIQ", 1, 64, 0, 0) for i in range(50))
    p = tmp_path / "m.gguf"
    p.write_bytes(_gguf(50, 0, body) + b"\0" * 512)
    _clean(_timed(run_cli, "inspect", p), "overlap")


# --- 3. comfy.gguf.orig_shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "needle"),
    [(["a", "b"], "not a list"), ([24, 255], "holds 6144"), ([1.5, 2.0], "not a list")],
    ids=["strings", "wrong-count", "floats"],
)
def test_gguf_bad_orig_shape(tmp_path, run_cli, value, needle):
    key = f"comfy.gguf.orig_shape.{QUANTIZED}"
    p = wan_gguf(tmp_path / "m.gguf", meta={key: value})
    r = _timed(run_cli, "inspect", p)
    _clean(r, needle)
    assert QUANTIZED in r.err
    r = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    _clean(r, needle)


def test_gguf_good_orig_shape_reshapes(tmp_path):
    from weightsmith.io import open_checkpoint

    p = wan_gguf(tmp_path / "m.gguf", meta={f"comfy.gguf.orig_shape.{QUANTIZED}": [24, 16, 16]})
    with open_checkpoint(p) as ck:
        assert ck.info(QUANTIZED).shape == (24, 16, 16)
        assert ck.get(QUANTIZED).shape == (24, 16, 16)


# --- 4. non-finite dequantized weights -------------------------------------------------------


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_gguf_non_finite_block_scale_is_refused(tmp_path, run_cli, qtype, bad):
    def poison(name, q):
        # Q8_0 keeps its f16 scale first in each 34-byte block, Q4_K its d then dmin.
        q.reshape(-1)[0:2] = np.frombuffer(np.float16(bad).tobytes(), dtype=np.uint8)
        return q

    p = wan_gguf(tmp_path / "m.gguf", quant={QUANTIZED: qtype}, edit=poison)
    assert run_cli("inspect", p).code == 0  # the header is fine; the data is what is wrong
    r = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    _clean(r, "NaN or infinite")
    assert QUANTIZED in r.err and "block scale" in r.words
    assert not (tmp_path / "out").exists()


def test_gguf_plain_nan_weight_is_refused(tmp_path, run_cli):
    p = wan_gguf(tmp_path / "m.gguf", quant={})
    raw = bytearray(p.read_bytes())
    raw[-4:] = struct.pack("<f", float("nan"))  # last value of the last tensor
    p.write_bytes(bytes(raw))
    r = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    _clean(r, "stores NaN or infinite values")


def test_gguf_loader_refuses_nan_scales(tmp_path):
    from weightsmith.errors import CorruptFileError
    from weightsmith.load import load_gguf_model

    def poison(name, q):
        q.reshape(-1)[0:2] = np.frombuffer(np.float16("nan").tobytes(), dtype=np.uint8)
        return q

    p = wan_gguf(tmp_path / "m.gguf", edit=poison)
    with pytest.raises(CorruptFileError, match="NaN or infinite"):
        load_gguf_model(p)


# --- 5. torch pickles ------------------------------------------------------------------------


def test_pickle_with_compressed_record_is_refused(tmp_path, run_cli):
    src = tmp_path / "ok.pt"
    torch.save({"w": torch.zeros(4)}, src)
    p = tmp_path / "m.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data/0"):
                data = b"\0" * (16 * 2**20)  # deflates to 16 KB
            zout.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    _clean(_timed(run_cli, "inspect", p), "compressed")


def test_pickle_expanded_tensor_is_refused(tmp_path, run_cli):
    p = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(24, 1).expand(24, 2**24)}, p)
    r = _timed(run_cli, "inspect", p)
    _clean(r, "expanded or overlapping view")
    r = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    _clean(r, "expanded or overlapping view")
    assert not (tmp_path / "out").exists()


def test_pickle_many_aliases_of_one_storage_are_refused(tmp_path, run_cli):
    base = torch.zeros(1024)
    p = tmp_path / "m.pt"
    torch.save({f"w{i}": base for i in range(10)}, p)
    _clean(_timed(run_cli, "inspect", p), "sharing the same data")


def test_pickle_tied_weights_are_fine(tmp_path, run_cli):
    base = torch.ones(64)
    p = tmp_path / "m.pt"
    torch.save({"a": base, "b": base, "c": base[:32]}, p)
    assert run_cli("inspect", p).code == 0


def _zip_pickle(path: Path, pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/data.pkl", pkl)
        z.writestr("a/version", "3\n")
        z.writestr("a/byteorder", "little")
    return path


def _call(mod: str, name: str, arg: bytes) -> bytes:
    """A pickle of {'w': mod.name(arg)} in protocol 2 opcodes."""
    return b"\x80\x02}X\x01\x00\x00\x00wc" + f"{mod}\n{name}\n".encode() + arg + b"\x85Rs."


@pytest.mark.parametrize(
    ("mod", "name", "arg", "needle"),
    [
        ("builtins", "bytearray", b"J\xff\xff\xff\x7f", "does not read"),  # 2 GB from 60 bytes
        ("torch", "FloatTensor", b"J\xff\xff\xff\x7f", "does not read"),
        ("torch._utils", "_rebuild_meta_tensor_no_storage", b"N", "does not read"),
        ("torch", "_dynamo", b"N", "does not read"),  # never looked up: it would import a subpackage
        ("collections", "OrderedDict", b"K\x05", "TypeError"),  # allowed global, bad argument
        ("torch", "Size", b"X\x01\x00\x00\x00a", "could not be read"),
        ("torch", "device", b"X\x03\x00\x00\x00bad", "could not be read"),
    ],
    ids=["bytearray", "tensor-class", "meta", "lazy-submodule", "ordereddict-int", "size-str", "device-bad"],
)
def test_pickle_globals_with_bad_arguments(tmp_path, run_cli, mod, name, arg, needle):
    p = _zip_pickle(tmp_path / "m.pt", _call(mod, name, arg))
    _clean(_timed(run_cli, "inspect", p), needle)


def test_pickle_untyped_storage_built_by_the_pickle_is_refused(tmp_path, run_cli):
    # {'w': _rebuild_tensor_v2(UntypedStorage(4096), 0, (1024,), (1,), False, OrderedDict())}
    pkl = (
        b"\x80\x02}X\x01\x00\x00\x00w"
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        b"ctorch.storage\nUntypedStorage\nM\x00\x10\x85R"
        b"K\x00M\x00\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs."
    )
    p = _zip_pickle(tmp_path / "m.pt", pkl)
    r = _timed(run_cli, "inspect", p)
    assert r.code == 2, r.err
    assert r.err.count("\n") == 1


@pytest.mark.parametrize(
    "pkl",
    [
        b"\x80\x02}X\x01\x00\x00\x00wh\x07s.",  # BINGET of a memo slot never set
        b"\x80\x02}X\x01\x00\x00\x00w]s]s.",  # an unhashable key
        b"\x80\x02(.",  # MARK then STOP
        b"\x80\x02}\x94.",  # a protocol-4 opcode in a protocol-2 pickle
    ],
    ids=["bad-memo", "unhashable", "mark-stop", "memoize"],
)
def test_pickle_bad_structure(tmp_path, run_cli, pkl):
    p = _zip_pickle(tmp_path / "m.pt", pkl)
    r = _timed(run_cli, "inspect", p)
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err


def test_plain_protocol4_pickle_one_line(tmp_path, run_cli):
    p = tmp_path / "m.pth"
    with open(p, "wb") as f:
        pickle.dump({"w": torch.zeros(3)}, f, protocol=4)
    _clean(_timed(run_cli, "inspect", p), "legacy")
    _clean(run_cli("convert", p, tmp_path / "out", "--to", "diffusers"), "legacy")


# --- 6. SAT folders --------------------------------------------------------------------------


def _sat(tmp_path: Path) -> Path:
    from weightsmith.tiny import Fixture, save_fixture

    return save_fixture(Fixture("cogvideox", "transformer", "2b", "sat", "sat"), tmp_path / "sat")


@pytest.mark.parametrize(
    ("latest", "needle"),
    [
        ("\u0663", "not an iteration number"),
        ("1" * 5000, "bytes"),
        ("9" * 4400, "bytes"),
        ("1" * 30, "20 ASCII"),
    ],
    ids=["arabic-indic-digit", "5000-digits", "4400-digits", "30-digits"],
)
def test_sat_latest_bad_number(tmp_path, run_cli, latest, needle):
    folder = _sat(tmp_path)
    (folder / "latest").write_text(latest, encoding="utf-8")
    _clean(_timed(run_cli, "inspect", folder), needle)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[" * 100000 + "]" * 100000, "nested"),
        ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
        ('{"a": NaN}', "NaN"),
    ],
    ids=["deep", "huge-int", "nan"],
)
def test_sat_model_config_bad_json(tmp_path, run_cli, text, needle):
    folder = _sat(tmp_path)
    (folder / "model_config.json").write_text(text)
    _clean(_timed(run_cli, "inspect", folder), needle)


def test_sat_tiny_folder_still_reads(tmp_path, run_cli):
    folder = _sat(tmp_path)
    r = run_cli("inspect", folder)
    assert r.code == 0, r.err


# --- 7. not a regular file -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".gguf"])
def test_fifo_is_not_opened(tmp_path, run_cli, suffix):
    from weightsmith.errors import InputError
    from weightsmith.io.gguf_io import GGUFCheckpoint
    from weightsmith.io.torch_io import TorchCheckpoint

    p = tmp_path / f"m{suffix}"
    os.mkfifo(p)
    r = _timed(run_cli, "inspect", p)
    assert r.code == 2, r.err
    assert r.err.count("\n") == 1
    reader = GGUFCheckpoint if suffix == ".gguf" else TorchCheckpoint
    with pytest.raises(InputError, match="not a regular file"):
        reader(p)


@pytest.mark.parametrize("suffix", [".pt", ".gguf"])
def test_symlink_to_dev_zero_is_not_opened(tmp_path, run_cli, suffix):
    from weightsmith.errors import InputError
    from weightsmith.io.gguf_io import GGUFCheckpoint
    from weightsmith.io.torch_io import TorchCheckpoint

    p = tmp_path / f"m{suffix}"
    p.symlink_to("/dev/zero")
    r = _timed(run_cli, "inspect", p)
    assert r.code == 2, r.err
    reader = GGUFCheckpoint if suffix == ".gguf" else TorchCheckpoint
    with pytest.raises(InputError, match="not a regular file"):
        reader(p)


def test_sat_latest_fifo_is_not_opened(tmp_path, run_cli):
    from weightsmith.errors import InputError
    from weightsmith.io.torch_io import SatCheckpoint

    folder = _sat(tmp_path)
    (folder / "latest").unlink()
    os.mkfifo(folder / "latest")
    r = _timed(run_cli, "inspect", folder)
    assert r.code == 2, r.err
    with pytest.raises(InputError, match="not a regular file"):
        SatCheckpoint(folder)
