"""Inputs of the quantize hostile-input tests: the smallest Wan transformer whose Linear rows are
256 wide (so every K type applies), imatrix writers that can write what no tool would, and a reader
that decodes every tensor of a GGUF output to check it is finite."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

# One block, one head of 256: ten 256x256 Linear weights to quantize, 1.2M parameters in all.
TINY_WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=1,
    attention_head_dim=256,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=32,
    ffn_dim=256,
    num_layers=1,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
# Original-layout names of its weights that gguf:Q4_K_M stores as Q4_K (q) and Q6_K (v, ffn.2).
Q4K_NAMES = ("blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight")
Q6K_NAMES = ("blocks.0.self_attn.v.weight", "blocks.0.ffn.2.weight")
IM_NAMES = Q4K_NAMES + Q6K_NAMES


def importance(seed: int = 0, n: int = 256) -> np.ndarray:
    """A plausible importance vector: positive, within an order of magnitude of 1."""
    return (np.random.RandomState(seed).rand(n) + 0.1).astype(np.float32)


def dat_bytes(entries: Mapping[str, np.ndarray], ncall: int = 4, dataset: str = "tests") -> bytes:
    """The legacy .dat form, written as llama.cpp does (values are means times the call count)."""
    out = struct.pack("<i", len(entries))
    for name, values in entries.items():
        raw = name.encode()
        vals = np.asarray(values, dtype="<f4")
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, vals.size) + vals.tobytes()
    return out + struct.pack("<ii", ncall, len(dataset)) + dataset.encode()


def write_gguf_imatrix(path: Path, tensors: Mapping[str, np.ndarray]) -> Path:
    """A GGUF imatrix from raw tensors (any ``<name>.in_sum2`` / ``<name>.counts``, any shape,
    consistent or not), so that files no tool writes can be tested."""
    from weightsmith.io.gguf_writer import GGUFTensorSpec, write_gguf

    arrays = [(k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()]
    specs = [GGUFTensorSpec(k, tuple(a.shape), "F32") for k, a in arrays]
    meta = {"general.type": "imatrix", "imatrix.datasets": ["tests"], "imatrix.chunk_count": 1}
    return write_gguf(path, "", specs, iter(arrays), meta, overwrite=True)


def gguf_entries(values: Mapping[str, np.ndarray], count: float = 4.0) -> dict[str, np.ndarray]:
    """``<name>.in_sum2`` and ``<name>.counts`` tensors for importance ``values`` (as written)."""
    out: dict[str, np.ndarray] = {}
    for name, v in values.items():
        out[f"{name}.in_sum2"] = np.asarray(v, dtype=np.float32) * np.float32(count)
        out[f"{name}.counts"] = np.array([count], dtype=np.float32)
    return out


def decoded(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of a GGUF file decoded to float32: name -> (type, values)."""
    import gguf

    from weightsmith.kernels.ggml import dequantize

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        qt = t.tensor_type.name
        if qt in ("F32", "F16"):
            arr = np.array(t.data, dtype=np.float32)
        elif qt == "BF16":
            arr = (np.array(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            shape = tuple(int(s) for s in reversed(t.shape))
            arr = dequantize(torch.from_numpy(np.array(t.data)), qt, shape).numpy()
        out[t.name] = (qt, arr)
    return out


def assert_finite_gguf(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of the GGUF at ``path`` decodes to finite values, and no quantized tensor the
    imatrix touches decodes to all zeros (what a broken importance vector gives)."""
    tensors = decoded(path)
    for name, (qt, arr) in tensors.items():
        assert np.isfinite(arr).all(), f"{name} ({qt}) decodes to non-finite values"
        if name in IM_NAMES:
            assert np.abs(arr).max() > 0, f"{name} ({qt}) decodes to all zeros"
    return tensors
