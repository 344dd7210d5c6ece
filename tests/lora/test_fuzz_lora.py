"""Fuzzing the LoRA reader: mutants of small valid LoRA files through `weightsmith lora convert`.

Each case must end in exit 0, or exit 2 with one ``error:`` line, within a second and without
allocating more than the file's size plus a small slack (tests/hostile.py). The seeds are fixed:
the same cases run on every machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hostile import fuzz_count, fuzz_file
from safetensors.torch import save_file

DIM, FFN = 24, 32  # the tiny Wan transformer


def _wan_original() -> dict[str, torch.Tensor]:
    """ComfyUI-style: lora_down/lora_up, alpha, a diff_b and a zero norm diff."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, fin, fout in (("self_attn.q", DIM, DIM), ("cross_attn.o", DIM, DIM), ("ffn.0", DIM, FFN)):
        key = f"diffusion_model.blocks.0.{name}"
        sd[f"{key}.lora_down.weight"] = torch.randn(2, fin, generator=gen).to(torch.bfloat16)
        sd[f"{key}.lora_up.weight"] = torch.randn(fout, 2, generator=gen).to(torch.bfloat16)
        sd[f"{key}.alpha"] = torch.tensor(1.0)
    sd["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.randn(DIM, generator=gen)
    sd["diffusion_model.blocks.0.norm3.diff"] = torch.zeros(DIM)
    return sd


def _peft() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    sd = {}
    for name, fin, fout in (("attn1.to_q", DIM, DIM), ("attn2.to_k", DIM, DIM), ("ffn.net.2", FFN, DIM)):
        key = f"transformer.blocks.1.{name}"
        sd[f"{key}.lora_A.weight"] = torch.randn(2, fin, generator=gen)
        sd[f"{key}.lora_B.weight"] = torch.randn(fout, 2, generator=gen)
    sd["transformer.blocks.1.attn1.to_q.lora_B.bias"] = torch.randn(DIM, generator=gen)
    return sd


def _sat() -> dict[str, torch.Tensor]:
    """CogVideoX SAT: qkv in three partitions, dense in one, one block (width 16)."""
    gen = torch.Generator().manual_seed(2)
    layer = "model.diffusion_model.transformer.layers.1.attention"
    sd = {}
    for j in range(3):
        sd[f"{layer}.query_key_value.matrix_A.{j}"] = torch.randn(2, 16, generator=gen)
        sd[f"{layer}.query_key_value.matrix_B.{j}"] = torch.randn(16, 2, generator=gen)
    sd[f"{layer}.dense.matrix_A.0"] = torch.randn(2, 16, generator=gen).half()
    sd[f"{layer}.dense.matrix_B.0"] = torch.randn(16, 2, generator=gen).half()
    return sd


_PEFT_META = {
    "lora_adapter_metadata": json.dumps(
        {"transformer.r": 2, "transformer.lora_alpha": 4, "transformer.alpha_pattern": {"ffn.net.2": 2}}
    )
}
FILES: dict[str, tuple[Callable[[], dict[str, torch.Tensor]], dict[str, str] | None, str, int]] = {
    # name: (state, metadata, --to, seed)
    "wan-original": (_wan_original, None, "diffusers", 1001),
    "peft": (_peft, _PEFT_META, "original", 1002),
    "cogvideox-sat": (_sat, None, "diffusers", 1003),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_mutated_lora_files_fail_cleanly(tmp_path: Path, run_cli, name: str) -> None:
    make, metadata, to, seed = FILES[name]
    src = tmp_path / "lora.safetensors"
    save_file(make(), str(src), metadata=metadata)
    raw = src.read_bytes()
    out = tmp_path / "out.safetensors"
    # The valid file converts. With a CogVideoX/Sana-named LoRA this also warms the imports
    # (diffusers' model classes for the module-name templates, built once per process), so the
    # cases time reading, not importing.
    assert run_cli("lora", "convert", src, out, "--to", to).code == 0
    warm = tmp_path / "warm.safetensors"
    save_file(
        {
            "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 16),
            "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(16, 2),
        },
        str(warm),
    )
    assert run_cli("lora", "inspect", warm).code == 0

    def command(path: Path) -> tuple[object, ...]:
        out.unlink(missing_ok=True)
        return ("lora", "convert", path, out, "--to", to)

    failures = fuzz_file(run_cli, raw, tmp_path / "case.safetensors", seed, fuzz_count(200), command=command)
    assert not failures, "\n".join(failures[:20])
