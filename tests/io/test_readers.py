"""Readers: lazy metadata, one tensor on demand, unwrapping, every container."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weightsmith.io import PipelineCheckpoint, open_checkpoint, open_single
from weightsmith.io.safetensors_io import ShardedSafetensorsCheckpoint
from weightsmith.io.writers import write_diffusers_component


def _state(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(64, 32, generator=g).to(torch.bfloat16) for i in range(n)} | {
        "bias": torch.randn(7, generator=g)
    }


def _stream(state):
    specs = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    return specs, iter(state.items())


def test_single_safetensors(tmp_path):
    state = _state()
    save_file(state, str(tmp_path / "m.safetensors"), metadata={"format": "pt", "who": "test"})
    ck = open_checkpoint(tmp_path / "m.safetensors")
    assert ck.container == "safetensors"
    assert ck.metadata == {"format": "pt", "who": "test"}
    assert ck.info("layer.0.weight").shape == (64, 32)
    assert ck.info("layer.0.weight").dtype == torch.bfloat16
    assert ck.info("layer.0.weight").storage == "BF16"
    for k, v in state.items():
        assert torch.equal(ck.get(k), v)


def test_sharded_read_touches_only_its_shard(tmp_path):
    state = _state(8)
    specs, stream = _stream(state)
    write_diffusers_component(tmp_path / "c", specs, stream, {"_class_name": "X"}, max_shard_size=10_000)
    index = tmp_path / "c" / "diffusion_pytorch_model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) >= 4
    ck = open_checkpoint(index)
    assert isinstance(ck, ShardedSafetensorsCheckpoint)
    name = "layer.5.weight"
    own = weight_map[name]
    # Every other shard is replaced by garbage: a reader that touched them would fail.
    for shard in set(weight_map.values()) - {own}:
        (tmp_path / "c" / shard).write_bytes(b"\xde\xad" * 100)
    assert torch.equal(ck.get(name), state[name])
    assert set(ck.shards) == {own}
    assert ck.shards[own].opened == 1
    assert sorted(ck.keys()) == sorted(state)
    # The same through the component folder.
    folder = open_checkpoint(tmp_path / "c")
    assert torch.equal(folder.get(name), state[name])


def test_diffusers_component_folder(tmp_path):
    state = _state()
    specs, stream = _stream(state)
    write_diffusers_component(
        tmp_path / "c", specs, stream, {"_class_name": "X", "a": 1}, max_shard_size="1GB"
    )
    assert (tmp_path / "c" / "diffusion_pytorch_model.safetensors").is_file()
    ck = open_checkpoint(tmp_path / "c")
    assert ck.config == {"_class_name": "X", "a": 1}
    assert ck.container.startswith("diffusers-folder")
    assert torch.equal(ck.get("bias"), state["bias"])


def test_pipeline_folder(tmp_path):
    (tmp_path / "p").mkdir()
    for comp in ("transformer", "vae"):
        specs, stream = _stream(_state(2))
        write_diffusers_component(tmp_path / "p" / comp, specs, stream, {"_class_name": comp})
    (tmp_path / "p" / "scheduler").mkdir()
    (tmp_path / "p" / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "WanPipeline",
                "transformer": ["diffusers", "X"],
                "vae": ["diffusers", "Y"],
                "scheduler": ["diffusers", "Z"],
                "transformer_2": [None, None],
            }
        )
    )
    ck = open_checkpoint(tmp_path / "p")
    assert isinstance(ck, PipelineCheckpoint)
    assert set(ck.components) == {"transformer", "vae"}
    assert open_single(tmp_path / "p", "vae").config == {"_class_name": "vae"}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s},
        lambda s: {"module": s, "iteration": 7},
        lambda s: {"model": {"module": s}},
    ],
    ids=["flat", "state_dict", "module", "model-module"],
)
def test_torch_pickle_unwrapping(tmp_path, wrap):
    state = _state(3)
    torch.save(wrap(state), tmp_path / "m.pt")
    ck = open_checkpoint(tmp_path / "m.pt")
    assert sorted(ck.keys()) == sorted(state)
    assert torch.equal(ck.get("layer.1.weight"), state["layer.1.weight"])


def test_pickle_side_data_is_metadata(tmp_path):
    torch.save({"module": _state(1), "iteration": 7}, tmp_path / "m.pt")
    ck = open_checkpoint(tmp_path / "m.pt")
    assert ck.metadata["iteration"] == 7
    assert ck.metadata["wrapped_in"] == "module"


@pytest.mark.parametrize("latest", ["release", "1000"])
def test_sat_folder(tmp_path, latest):
    state = _state(2)
    sub = "release" if latest == "release" else "1000"
    (tmp_path / sub).mkdir()
    torch.save({"module": state}, tmp_path / sub / "mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text(latest + "\n")
    ck = open_checkpoint(tmp_path)
    assert ck.container == "sat"
    assert ck.metadata["iteration"] == sub
    assert torch.equal(ck.get("bias"), state["bias"])


def test_gguf_reader_torch_order_and_dequant(tmp_path):
    from gguf.constants import GGMLQuantizationType as Q

    g = np.random.default_rng(0)
    w = g.standard_normal((8, 64)).astype(np.float32)
    p = tmp_path / "m.gguf"
    wr = gguf.GGUFWriter(str(p), "wan")
    wr.add_string("general.name", "tiny")
    wr.add_tensor("f32", w)
    wr.add_tensor("f16", w.astype(np.float16))
    q = gguf.quants.quantize(w, Q.Q8_0)
    wr.add_tensor("q8", q, raw_shape=q.shape, raw_dtype=Q.Q8_0)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    ck = open_checkpoint(p)
    assert ck.container == "gguf"
    assert ck.metadata["general.architecture"] == "wan"
    assert ck.metadata["general.name"] == "tiny"
    assert ck.info("f32").shape == (8, 64)
    assert ck.info("q8").shape == (8, 64) and ck.info("q8").storage == "Q8_0"
    assert torch.equal(ck.get("f32"), torch.from_numpy(w))
    assert ck.get("f16").dtype == torch.float16
    expect = gguf.quants.dequantize(q, Q.Q8_0)
    assert torch.equal(ck.get("q8"), torch.from_numpy(expect))
