"""Distributed data parallel (DDP) plumbing for the trainer.

A run started with ``torchrun --nproc_per_node=N`` has ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
in its environment; :func:`setup` then joins the process group (``nccl`` on CUDA, ``gloo`` on the
CPU) and picks this process's device. A plain ``python`` run is a world of one and nothing here
does anything. Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "any_true",
    "barrier",
    "broadcast_object",
    "cleanup",
    "launched_distributed",
    "setup",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # True when setup() created the process group (cleanup destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_distributed() -> bool:
    """True when this process was started by torchrun (or similar) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: str | torch.device = "auto", timeout_s: float = 1800.0
          ) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched distributed; return the info and this rank's device.

    ``device="auto"`` means CUDA (GPU ``LOCAL_RANK``) when available, else the CPU. An already
    initialised process group (e.g. a test that called ``init_process_group`` itself) is used as
    it is.
    """
    from ..inference.device import select_device

    want = str(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        info = DistInfo(rank, world, local, dist.get_backend(), owns_group=False)
    elif launched_distributed():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = torch.cuda.is_available() and want in ("auto", "cuda")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        info = DistInfo(rank, world, local, backend, owns_group=True)
    else:
        return DistInfo(), select_device(device)
    # nccl ⇔ one GPU per process; gloo runs on the CPU
    if info.backend == "nccl":
        return info, torch.device("cuda", info.local_rank)
    return info, torch.device("cpu")


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small control values)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over all processes (a copy; single process returns it unchanged)."""
    if not info.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / info.world_size


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (used for cancel and early stop)."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
