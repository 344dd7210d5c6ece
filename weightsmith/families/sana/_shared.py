"""Helpers both Sana components use: prefix finding, plan checks, op ordering."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from weightsmith.convert.ops import Op
from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.base import PlanOptions
from weightsmith.io.base import TensorInfo

# The default of ``Component.plan``'s ``options`` (PlanOptions is frozen, so one shared instance is safe).
NO_OPTIONS = PlanOptions()


def candidate_prefixes(keys: Iterable[str], suffix: str) -> list[str]:
    """Every prefix under which ``suffix`` appears as a whole dotted tail, shortest first.

    Checkpoints arrive under many wrappers (``model.diffusion_model.``, ``vae.``, ``module.``,
    a pipeline dump's component name); finding the prefix from a marker key beats a fixed list.
    """
    found = {k[: len(k) - len(suffix)] for k in keys if k == suffix or k.endswith("." + suffix)}
    return sorted(found, key=lambda p: (len(p), p))


def find_prefix_all(keys: Iterable[str], markers: Sequence[str]) -> str | None:
    """The shortest prefix under which *every* marker key exists (one marker alone can be a coincidence)."""
    keyset = set(keys)
    for p in candidate_prefixes(keyset, markers[0]):
        if all(p + m in keyset for m in markers):
            return p
    return None


def check_target(layouts: Sequence[str], target: str, what: str) -> None:
    """Refuse a target layout this component does not have, naming the ones it has."""
    if target not in layouts:
        raise UsageError(
            f"{what} has no layout {target!r}",
            hint=f"choose one of: {', '.join(layouts)}",
        )


def _first_few(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:n])
    return shown if len(names) <= n else f"{shown} (+{len(names) - n} more)"


def raise_unknown(names: Iterable[str], what: str) -> None:
    """ConversionError naming the first few keys no rule accounts for (nothing is dropped silently)."""
    names = list(names)
    if names:
        raise ConversionError(
            f"{len(names)} unexpected key(s) for {what}: {_first_few(names)}",
            hint="the checkpoint holds tensors this family does not know; check --family or remove them",
        )


def raise_missing(names: Iterable[str], what: str) -> None:
    """ConversionError naming the first few keys the target model needs but the source lacks."""
    names = list(names)
    if names:
        raise ConversionError(
            f"{len(names)} required key(s) missing for {what}: {_first_few(names)}",
            hint="the checkpoint is incomplete or not this model; check that every shard was given",
        )


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
