"""Several processes under ``torchrun``: rank 0 makes the prompts, every rank takes its share of the
(prompt, seed) items, and rank 0 merges the scores and writes the report.

Outside torchrun (no ``WORLD_SIZE`` or 1) everything here is a no-op. The backend is NCCL on CUDA
and gloo on CPU; objects travel with ``broadcast_object_list`` / ``gather_object`` (which on NCCL
need each rank's current CUDA device set, done in ``setup``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup() -> World:
    """Join the process group torchrun describes in the environment (if any)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), False)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, size, True)


def teardown(world: World) -> None:
    if world.initialized_here:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def share(world: World, obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not world.active:
        return obj
    import torch.distributed as dist

    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def share_call(world: World, fn: Any) -> Any:
    """``fn()`` computed on rank 0 and handed to every rank; an error there is raised on every rank."""
    if not world.active:
        return fn()
    payload: tuple[str, Any] = ("ok", None)
    if world.is_main:
        try:
            payload = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            payload = ("error", e)
    kind, value = share(world, payload)
    if kind == "error":
        raise value
    return value


def gather(world: World, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
    if not world.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def my_share(world: World, items: list[T]) -> list[T]:
    """This rank's items: every ``size``-th one starting at ``rank``."""
    return items[world.rank :: world.size]
