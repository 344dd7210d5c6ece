"""ONNX Runtime sessions on the provider ``--device`` names (CPU by default, CUDA with the
``gpu`` extra's onnxruntime-gpu)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weightsmith.errors import InputError, UsageError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def providers(device: str = "cpu") -> list[str]:
    """Providers for ``device`` (``cpu``, ``cuda`` or ``cuda:N``), CPU last as the fallback."""
    import onnxruntime as ort

    kind = device.split(":", 1)[0]
    if kind not in PROVIDERS:
        raise UsageError(f"no ONNX Runtime provider for device {device!r}", hint="use --device cpu or cuda")
    want = PROVIDERS[kind]
    if want not in ort.get_available_providers():
        raise UsageError(
            f"this onnxruntime has no {want}",
            hint="pip install 'weightsmith[gpu]' (onnxruntime-gpu) on a CUDA machine, or use --device cpu",
        )
    return [want] if want == PROVIDERS["cpu"] else [want, PROVIDERS["cpu"]]


def provider_options(device: str) -> list[dict[str, Any]] | None:
    if device.startswith("cuda:"):
        return [{"device_id": int(device.split(":", 1)[1])}, {}]
    return None


def session(path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession on ``path`` (external data beside it is found by ONNX Runtime)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=opts,
            providers=providers(device),
            provider_options=provider_options(device),
        )
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
        raise InputError(
            f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:300]}",
            hint="the graph is invalid or needs operators this onnxruntime lacks; export it again",
        ) from e


# The ops every exported transformer and VAE uses, in the order the probe chains them.
BF16_PROBE_OPS = ("MatMul", "Add", "Mul", "Sigmoid")


def bf16_gap(device: str = "cpu") -> str | None:
    """The first op of ``BF16_PROBE_OPS`` this onnxruntime cannot run in bfloat16 on ``device``
    (None when all run). A one-node-per-op graph is cheaper than tracing a model to find out:
    onnxruntime 1.31's CPU provider has no bfloat16 MatMul, Add, Mul or Sigmoid kernel."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["x"], ["v0"], to=TensorProto.BFLOAT16)]
    for i, op in enumerate(BF16_PROBE_OPS):
        ins = [f"v{i}"] if op == "Sigmoid" else [f"v{i}", f"v{i}"]
        nodes.append(helper.make_node(op, ins, [f"v{i + 1}"], name=op))
    nodes.append(helper.make_node("Cast", [f"v{len(BF16_PROBE_OPS)}"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "bf16_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=opts,
            providers=providers(device),
            provider_options=provider_options(device),
        )
        sess.run(None, {"x": np.ones((2, 2), dtype=np.float32)})
    except Exception as e:  # onnxruntime's NOT_IMPLEMENTED names the op it lacks
        text = str(e)
        return next((op for op in BF16_PROBE_OPS if f"for {op}(" in text), "(unnamed op)")
    return None
