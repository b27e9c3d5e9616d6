"""The little the workbench needs from torch.distributed: the world size and gathering small objects."""

from __future__ import annotations

from typing import Any


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (a one-item list outside DDP)."""
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
