"""The one device picker of weightsmith's kernels: ``--device`` to a torch device, checked up front."""

from __future__ import annotations

from typing import TYPE_CHECKING

from weightsmith.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"


def pick_device(device: str) -> torch.device:
    """The torch device for ``--device``: only CPU, an existing CUDA device or Apple's MPS; checked
    before any work, so that e.g. ``meta`` (no data) or a missing GPU never gets as far as a kernel."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError, OverflowError):
        raise UsageError(f"unknown device {device!r}", hint=DEVICE_HINT) from None
    if d.type == "cpu":
        return torch.device("cpu")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device} asked for, but no CUDA device is available", hint="use --device cpu"
            )
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise UsageError(
                f"--device {device}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}",
                hint="use --device cuda or a device index that exists",
            )
        return d
    if d.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(
                f"--device {device} asked for, but MPS is not available", hint="use --device cpu"
            )
        return d
    raise UsageError(f"--device {device}: the quantization kernels do not run on {d.type}", hint=DEVICE_HINT)


# Device files a GPU's driver creates (NVIDIA, AMD ROCm, WSL's GPU bridge).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def cpu_without_torch(device: str) -> str | None:
    """None when ``--device`` surely means the CPU, told without importing torch (``cpu``, or
    ``auto`` on a machine with no GPU device file); else why it may not (a job that needs to know
    then asks torch, through :func:`pick_device`)."""
    import os

    if device == "cpu":
        return None
    if device != "auto":
        return f"--device {device}"
    found = [f for f in GPU_DEVICE_FILES if os.path.exists(f)]
    return f"--device auto and {found[0]} exists (a GPU may be used)" if found else None
