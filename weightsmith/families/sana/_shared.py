"""Helpers both Sana components use: stray keys and op ordering."""

from __future__ import annotations

from collections.abc import Mapping

from weightsmith.families.ops import Op
from weightsmith.io.base import TensorInfo


def stray_keys(infos: Mapping[str, TensorInfo], prefix: str) -> list[str]:
    """Keys that do not carry the detected prefix: they belong to no known part of the model."""
    return [k for k in infos if not k.startswith(prefix)]


def order_by_input(ops: list[Op], infos: Mapping[str, TensorInfo]) -> list[Op]:
    """Ops sorted by where their first input lies in the source, so a stream reads the file in order.

    Ops without inputs (derived tensors) come first, in the order given. The sort is stable, so the
    plan is deterministic for a given input.
    """
    position = {k: i for i, k in enumerate(infos)}
    return sorted(ops, key=lambda op: min((position[k] for k in op.inputs), default=-1))
