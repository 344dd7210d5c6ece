"""The module torch traces for an export: the family's model called with the plan's inputs in order.

Apart from ``families/export.py`` because it subclasses ``nn.Module``: the registry (and the command
line's start-up) reads export plans without importing torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class Forward(nn.Module):
    """``forward(*inputs)`` in plan order, calling ``call(model, named inputs)``: the traced module."""

    def __init__(self, model: nn.Module, names: Sequence[str], call: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.call = call

    def forward(self, *args: torch.Tensor) -> Any:
        return self.call(self.model, dict(zip(self.names, args, strict=True)))
