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
