"""safetensors headers, sharded indexes and Diffusers folders that lie: one line, exit 2, through
`inspect` and `convert` alike, and whatever `inspect` accepts the safetensors library loads."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from weightsmith.tiny import Fixture, save_fixture

DEEP = "[" * 100_000 + "]" * 100_000
BIG_INT = "1" + "0" * 5000
ENTRY = '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'


def _one_line_exit_2(r) -> None:
    assert r.code == 2, (r.code, r.err)
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and "internal error" not in r.err


def _raw_safetensors(path: Path, header: bytes, data: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _library_loads(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:  # noqa: BLE001 - any refusal by the library counts
        return False
    return True


def _both_commands(run_cli, path: Path, tmp_path: Path) -> tuple:
    a = run_cli("inspect", path)
    b = run_cli("convert", path, tmp_path / "out", "--to", "diffusers")
    return a, b


# --- 1. JSON the json module mishandles, in every JSON a checkpoint carries -----------------

BAD_JSON = {
    "deep": DEEP,
    "big-int": f'{{"x": {BIG_INT}}}',
    "nan": '{"x": NaN}',
    "infinity": '{"x": -Infinity}',
}


@pytest.mark.parametrize("kind", BAD_JSON)
def test_bad_json_in_safetensors_header(tmp_path, run_cli, kind):
    if kind == "deep":
        header = '{"__metadata__":{"x":"y"},' + ENTRY + ',"b":' + DEEP + "}"
    elif kind == "big-int":
        header = '{"a":{"dtype":"F32","shape":[' + BIG_INT + '],"data_offsets":[0,8]}}'
    else:
        header = (
            '{"a":{"dtype":"F32","shape":['
            + kind.replace("nan", "NaN").replace("infinity", "Infinity")
            + '],"data_offsets":[0,8]}}'
        )
    p = _raw_safetensors(tmp_path / "m.safetensors", header.encode(), b"\0" * 8)
    for r in _both_commands(run_cli, p, tmp_path):
        _one_line_exit_2(r)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", BAD_JSON)
def test_bad_json_in_sharded_index(tmp_path, run_cli, kind):
    save_file({"a": torch.ones(2)}, str(tmp_path / "s1.safetensors"))
    idx = tmp_path / "m.safetensors.index.json"
    idx.write_text('{"metadata": ' + BAD_JSON[kind] + ', "weight_map": {"a": "s1.safetensors"}}')
    for r in _both_commands(run_cli, idx, tmp_path):
        _one_line_exit_2(r)


def _wan_folder(tmp_path: Path) -> Path:
    return save_fixture(
        Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path / "fx"
    )


@pytest.mark.parametrize("kind", BAD_JSON)
def test_bad_json_in_config_json(tmp_path, run_cli, kind):
    src = _wan_folder(tmp_path)
    (src / "config.json").write_text(BAD_JSON[kind])
    for r in _both_commands(run_cli, src, tmp_path):
        _one_line_exit_2(r)


@pytest.mark.parametrize("kind", BAD_JSON)
def test_bad_json_in_model_index(tmp_path, run_cli, kind):
    pipe = tmp_path / "pipe"
    shutil.copytree(_wan_folder(tmp_path), pipe / "transformer")
    (pipe / "model_index.json").write_text(BAD_JSON[kind])
    for r in _both_commands(run_cli, pipe, tmp_path):
        _one_line_exit_2(r)


@pytest.mark.parametrize("kind", BAD_JSON)
def test_bad_json_in_config_option(tmp_path, run_cli, kind):
    src = _wan_folder(tmp_path)
    cfg = tmp_path / "given.json"
    cfg.write_text(BAD_JSON[kind])
    r = run_cli(
        "convert",
        src / "diffusion_pytorch_model.safetensors",
        tmp_path / "o",
        "--to",
        "original",
        "--config",
        cfg,
    )
    _one_line_exit_2(r)
    assert not (tmp_path / "o").exists()


def test_bad_json_in_embedded_config(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2)}, str(p), metadata={"weightsmith.diffusers_config": DEEP})
    for r in _both_commands(run_cli, p, tmp_path):
        _one_line_exit_2(r)


# --- 2. The header check is as strict as the safetensors library ------------------------------

HEADERS = {
    "metadata-int-value": ('{"__metadata__":{"x":1},' + ENTRY + "}", 8),
    "metadata-null-value": ('{"__metadata__":{"x":null},' + ENTRY + "}", 8),
    "metadata-list": ('{"__metadata__":[],' + ENTRY + "}", 8),
    "metadata-twice": ('{"__metadata__":{"a":"b"},"__metadata__":{"c":"d"},' + ENTRY + "}", 8),
    "metadata-escaped-key-int": ('{"__metad\\u0061ta__":{"x":1},' + ENTRY + "}", 8),
    "dim-true": ('{"a":{"dtype":"F32","shape":[true,2],"data_offsets":[0,8]}}', 8),
    "dim-nan": ('{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}', 0),
    "dim-1e999": ('{"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,0]}}', 0),
    "dim-minus-zero": ('{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', 0),
    "dim-2^64-next-to-0": ('{"a":{"dtype":"F32","shape":[18446744073709551616,0],"data_offsets":[0,0]}}', 0),
    "dim-2^64-1-next-to-0": (
        '{"a":{"dtype":"F32","shape":[18446744073709551615,0],"data_offsets":[0,0]}}',
        0,
    ),
    "dim-2^63-next-to-0": ('{"a":{"dtype":"F32","shape":[9223372036854775808,0],"data_offsets":[0,0]}}', 0),
    "dims-overflow-before-0": (
        '{"a":{"dtype":"U8","shape":[4611686018427387904,4,0],"data_offsets":[0,0]}}',
        0,
    ),
    "dims-fit-before-0": ('{"a":{"dtype":"U8","shape":[4611686018427387904,3,0],"data_offsets":[0,0]}}', 0),
    "offsets-false": ('{"a":{"dtype":"F32","shape":[0],"data_offsets":[false,false]}}', 0),
    "offsets-minus-zero": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}}', 8),
    "field-twice": ('{"a":{"dtype":"F32","shape":[2],"shape":[2],"data_offsets":[0,8]}}', 8),
    "lone-surrogate-name": ('{"\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8),
    "lone-surrogate-metadata": ('{"__metadata__":{"x":"\\udc00"},' + ENTRY + "}", 8),
    "surrogate-pair-name": ('{"\\ud83d\\ude00":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8),
    "extra-field": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}', 8),
    "name-twice": ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' + ENTRY + "}", 8),
    "bom": ("\ufeff{" + ENTRY + "}", 8),
    "trailing-nul": ("{" + ENTRY + "}\0", 8),
    "leading-space": (" {" + ENTRY + "}", 8),
    "dtype-f4": ('{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}', 1),
    "dtype-int": ('{"a":{"dtype":1,"shape":[2],"data_offsets":[0,8]}}', 8),
    "metadata-null": ('{"__metadata__":null,' + ENTRY + "}", 8),
}


@pytest.mark.parametrize("case", HEADERS)
def test_header_check_agrees_with_the_library(tmp_path, run_cli, case):
    header, n = HEADERS[case]
    p = _raw_safetensors(tmp_path / "m.safetensors", header.encode("utf-8", "surrogatepass"), b"\0" * n)
    loads = _library_loads(p)
    a = run_cli("inspect", p)
    # convert needs a model; a plain tensor is "unknown family" (exit 2) only once it was read.
    b = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    if a.code == 0:
        assert loads, f"inspect accepted what the safetensors library refuses: {case}"
        assert b.code == 2 and "no known family" in b.words, b.err
    else:
        _one_line_exit_2(a)
        _one_line_exit_2(b)
        assert "no known family" not in b.words, b.err


def test_library_errors_on_read_are_one_line(tmp_path, run_cli):
    """A shard swapped for a different file after the header was read: CorruptFileError, not exit 3."""
    from weightsmith.errors import CorruptFileError
    from weightsmith.io import open_checkpoint

    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4)}, str(p))
    ck = open_checkpoint(p)
    assert ck.keys() == ["a"]
    p.write_bytes(b"\0" * 16)
    with pytest.raises(CorruptFileError, match="reading tensor 'a' failed"):
        ck.get("a")


# --- 4. Component names in model_index.json stay inside the pipeline ------------------------


@pytest.mark.parametrize("name", ["../outside", "/abs/transformer", "a/../../x", "..", "sub/transformer"])
def test_pipeline_component_name_not_a_folder_name(tmp_path, run_cli, name):
    pipe = tmp_path / "deep" / "pipe"
    shutil.copytree(_wan_folder(tmp_path), pipe / "transformer")
    shutil.copytree(_wan_folder(tmp_path), tmp_path / "deep" / "outside")
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}
    index[name] = ["diffusers", "WanTransformer3DModel"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    for r in _both_commands(run_cli, pipe, tmp_path):
        _one_line_exit_2(r)
        assert "not a folder name" in r.words


# --- 5. Paths that are not what was expected -------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_not_opened(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    os.mkfifo(p)  # reading it would block forever
    for r in _both_commands(run_cli, p, tmp_path):
        _one_line_exit_2(r)
        assert "FIFO" in r.words and "not a regular file" in r.words
        assert "unsupported" not in r.words


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_symlink_to_device_is_not_read(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    p.symlink_to("/dev/zero")
    for r in _both_commands(run_cli, p, tmp_path):
        _one_line_exit_2(r)
        assert "character device" in r.words and "not a regular file" in r.words


def test_broken_symlink(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    p.symlink_to(tmp_path / "gone")
    r = run_cli("inspect", p)
    _one_line_exit_2(r)
    assert "broken symbolic link" in r.words


def test_config_option_folder_without_config(tmp_path, run_cli):
    src = _wan_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    r = run_cli(
        "convert", src / "diffusion_pytorch_model.safetensors", tmp_path / "o", "--to", "original",
        "--config", tmp_path / "empty",
    )  # fmt: skip
    _one_line_exit_2(r)
    assert "holds no config.json" in r.words and "does not exist" not in r.words


def test_config_option_not_a_regular_file(tmp_path, run_cli):
    src = _wan_folder(tmp_path)
    cfg = tmp_path / "config.json"
    cfg.mkdir()
    (cfg / "config.json").mkdir()
    r = run_cli(
        "convert", src / "diffusion_pytorch_model.safetensors", tmp_path / "o", "--to", "original",
        "--config", cfg,
    )  # fmt: skip
    _one_line_exit_2(r)
    assert "is a folder, not a regular file" in r.words


def test_sharded_index_shard_name_outside_folder(tmp_path, run_cli):
    (tmp_path / "sub").mkdir()
    save_file({"a": torch.ones(2)}, str(tmp_path / "s1.safetensors"))
    idx = tmp_path / "sub" / "m.safetensors.index.json"
    for bad in ("../s1.safetensors", "/etc/passwd", "..", ""):
        idx.write_text(json.dumps({"weight_map": {"a": bad}}))
        r = run_cli("inspect", idx)
        _one_line_exit_2(r)
        assert "not a plain file name" in r.words
