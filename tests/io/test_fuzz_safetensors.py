"""Fuzzing the safetensors reader: mutated headers and mutated sharded indexes end in exit 0 or a
one-line exit 2, within a second, allocating no more than the file; whatever `inspect` accepts,
the safetensors library loads."""

from __future__ import annotations

import json

import torch
from hostile import fuzz_count, fuzz_file, mutants
from safetensors import safe_open
from safetensors.torch import save_file


def _small_file(path) -> bytes:
    # A data section of a few bytes, so that mutations land mostly in the length and header.
    save_file(
        {"w": torch.arange(3, dtype=torch.float16), "b": torch.tensor([1, 2], dtype=torch.uint8),
         "s": torch.zeros((), dtype=torch.float32), "e": torch.zeros(0, 4)},
        str(path), metadata={"format": "pt", "note": "x"},
    )  # fmt: skip
    return path.read_bytes()


def test_fuzz_safetensors_header(tmp_path, run_cli):
    target = tmp_path / "m.safetensors"
    raw = _small_file(target)
    assert run_cli("inspect", target).code == 0  # warm: timings measure reading, not imports
    failures = fuzz_file(run_cli, raw, target, seed=1001, count=fuzz_count(200))
    assert not failures, "\n".join(failures[:10])


def test_fuzz_inspect_accepts_only_what_the_library_loads(tmp_path, run_cli):
    target = tmp_path / "m.safetensors"
    raw = _small_file(target)
    disagreements = []
    for label, data in mutants(raw, seed=1002, count=fuzz_count(200)):
        target.write_bytes(data)
        if run_cli("inspect", target).code != 0:
            continue
        try:
            with safe_open(str(target), framework="pt") as f:
                for k in f.keys():
                    f.get_tensor(k)
        except Exception as e:  # noqa: BLE001 - any refusal is a disagreement
            disagreements.append(f"{label}: {type(e).__name__}: {str(e)[:120]}")
    assert not disagreements, "\n".join(disagreements[:10])


def test_fuzz_sharded_index(tmp_path, run_cli):
    save_file({"a": torch.ones(2), "b": torch.zeros(3)}, str(tmp_path / "s-1.safetensors"))
    save_file({"c": torch.ones(1)}, str(tmp_path / "s-2.safetensors"))
    index = {
        "metadata": {"total_size": 24},
        "weight_map": {"a": "s-1.safetensors", "b": "s-1.safetensors", "c": "s-2.safetensors"},
    }
    target = tmp_path / "m.safetensors.index.json"
    raw = json.dumps(index).encode()
    failures = fuzz_file(run_cli, raw, target, seed=1003, count=fuzz_count(200))
    assert not failures, "\n".join(failures[:10])
