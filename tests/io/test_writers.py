"""Writers: streaming, atomic, deterministic, readable by the real libraries."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from weightsmith.errors import ConversionError, OutputError, UsageError
from weightsmith.io import open_checkpoint
from weightsmith.io.writers import parse_size, write_diffusers_component, write_safetensors, write_sat


def _state():
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": torch.randn(16, 8, generator=g),
        "b.weight": torch.randn(3, 3, generator=g).to(torch.float16),
        "c.scale": torch.randn(5, generator=g).to(torch.bfloat16),
        "d.empty": torch.zeros(0, 4),
        "e.fp8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
    }


def _specs(state):
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items()]


def test_safetensors_roundtrip_through_the_library(tmp_path):
    state = _state()
    write_safetensors(tmp_path / "m.safetensors", _specs(state), state.items(), {"x": "y"})
    back = load_file(str(tmp_path / "m.safetensors"))
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == state[k].dtype
        assert torch.equal(back[k].view(torch.uint8), state[k].contiguous().view(torch.uint8))
    assert open_checkpoint(tmp_path / "m.safetensors").metadata == {"format": "pt", "x": "y"}


def test_output_is_deterministic(tmp_path):
    state = _state()
    write_safetensors(tmp_path / "1.safetensors", _specs(state), state.items())
    write_safetensors(tmp_path / "2.safetensors", _specs(state), state.items())
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()


def test_failed_stream_leaves_nothing(tmp_path):
    state = _state()

    def broken():
        yield "a.weight", state["a.weight"]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_safetensors(tmp_path / "m.safetensors", _specs(state), broken())
    with pytest.raises(RuntimeError):
        write_diffusers_component(tmp_path / "c", _specs(state), broken(), {})
    with pytest.raises(RuntimeError):
        write_sat(tmp_path / "s", _specs(state), broken())
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_refused_unless_overwrite(tmp_path):
    state = _state()
    (tmp_path / "m.safetensors").write_text("keep me")
    with pytest.raises(OutputError):
        write_safetensors(tmp_path / "m.safetensors", _specs(state), state.items())
    assert (tmp_path / "m.safetensors").read_text() == "keep me"
    write_safetensors(tmp_path / "m.safetensors", _specs(state), state.items(), overwrite=True)
    assert set(load_file(str(tmp_path / "m.safetensors"))) == set(state)


def test_sharded_index_follows_diffusers(tmp_path):
    state = _state()
    write_diffusers_component(
        tmp_path / "c", _specs(state), state.items(), {"_class_name": "X"}, max_shard_size=300
    )
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    index = json.loads((tmp_path / "c" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    n = len(set(index["weight_map"].values()))
    assert n > 1
    assert f"diffusion_pytorch_model-00001-of-{n:05d}.safetensors" in files
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in state.values())
    assert list(index["weight_map"]) == sorted(index["weight_map"])
    assert load_file(str(tmp_path / "c" / index["weight_map"]["a.weight"]))["a.weight"].equal(
        state["a.weight"]
    )


def test_sat_writer(tmp_path):
    state = _state()
    del state["e.fp8"]
    write_sat(tmp_path / "sat", _specs(state), state.items())
    assert (tmp_path / "sat" / "latest").read_text().strip() == "1"
    raw = torch.load(tmp_path / "sat" / "1" / "mp_rank_00_model_states.pt", weights_only=True)
    assert set(raw) == {"module"}
    ck = open_checkpoint(tmp_path / "sat")
    assert ck.container == "sat"
    for k in state:
        assert torch.equal(ck.get(k), state[k])


def test_stream_order_is_checked(tmp_path):
    state = _state()
    with pytest.raises(ConversionError, match="tensor stream gave"):
        write_safetensors(tmp_path / "m.safetensors", _specs(state), reversed(list(state.items())))
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    ("text", "n"), [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("123", 123)]
)
def test_parse_size(text, n):
    assert parse_size(text) == n


def test_parse_size_rejects_nonsense():
    with pytest.raises(UsageError):
        parse_size("five gigs")


def _tracked_stream(state, alive):
    """Yields the tensors as fresh copies, and checks the writer let go of the previous one."""
    import gc
    import weakref

    prev = None
    for k, v in state.items():
        if prev is not None:
            gc.collect()
            alive.append(prev() is not None)
        t = v.clone()
        prev = weakref.ref(t)
        yield k, t
        del t


@pytest.mark.parametrize("writer", ["safetensors", "sat"])
def test_writers_hold_one_tensor_at_a_time(tmp_path, writer):
    state = _state()
    del state["e.fp8"]
    alive: list[bool] = []
    if writer == "sat":
        write_sat(tmp_path / "out", _specs(state), _tracked_stream(state, alive))
        back = torch.load(tmp_path / "out" / "1" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    else:
        write_safetensors(tmp_path / "out.safetensors", _specs(state), _tracked_stream(state, alive))
        back = load_file(str(tmp_path / "out.safetensors"))
    assert alive and not any(alive), "a previous tensor was still referenced when the next was made"
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_streamed_torch_file_loads_like_torch_save(tmp_path):
    from weightsmith.io.writers import write_torch_file

    state = _state()
    del state["e.fp8"]
    write_torch_file(tmp_path / "a.pt", _specs(state), state.items(), wrap="state_dict", side={"note": "x"})
    torch.save({"state_dict": state, "note": "x"}, tmp_path / "b.pt")
    a = torch.load(tmp_path / "a.pt", weights_only=True, mmap=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True, mmap=True)
    assert a.keys() == b.keys() and a["note"] == "x"
    for k in state:
        assert a["state_dict"][k].dtype == b["state_dict"][k].dtype
        assert torch.equal(a["state_dict"][k], b["state_dict"][k])


def test_float8_torch_file_falls_back_to_torch_save(tmp_path):
    from weightsmith.io.writers import write_torch_file

    state = {"w": torch.randn(4, 4).to(torch.float8_e4m3fn)}
    write_torch_file(tmp_path / "f8.pt", _specs(state), state.items())
    back = torch.load(tmp_path / "f8.pt", weights_only=True)
    assert torch.equal(back["w"].view(torch.uint8), state["w"].view(torch.uint8))
