"""One helper for distributed set-up, so one process and `torchrun --nproc_per_node N
[--nnodes M ...]` run the same code.

torchrun exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
run is a single process and nothing is initialised. The backend is nccl when the processes
use CUDA devices and gloo on CPUs. Also here: a CPU-capable synchronised BatchNorm (torch's
SyncBatchNorm only runs on GPUs) so a CPU run under torchrun normalises over the whole batch
like the official GPU run.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lavt.errors import LAVTUserError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, world size, device, and whether it set up the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> this process's GPU when CUDA is available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LAVTUserError(f"device {device!r} was requested but CUDA is not available; use --device cpu")
        if device == "cuda":
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(device)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Initialise torch.distributed from torchrun's environment (no-op for one process).

    Reuses a process group that the caller already initialised (then it is not destroyed by
    `cleanup`): a program that calls `train` and then `evaluate` in the same torchrun
    processes initialises once with this function, runs both, and calls `cleanup` itself
    (a destroyed group cannot be created again under torchrun's store). Returns the
    process's `DistEnv`.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = resolve_device(device, local)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistEnv(rank, world, local, dev, dist.get_backend(), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world <= 1:
        return DistEnv(0, 1, 0, dev, None, owns_group=False)
    if not dist.is_available():
        raise LAVTUserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s), **kwargs
    )
    return DistEnv(rank, world, local, dev, backend, owns_group=True)


def cleanup(env: DistEnv, synchronize: bool = True) -> None:
    """Destroy the process group if `init_distributed` created it.

    With `synchronize` (the normal end of a run) every process first meets at a barrier, so
    none tears its gloo connections down while a peer still finishes its last collective or
    writes its files; after an exception the barrier is skipped (the peers may never arrive).
    """
    if env.owns_group and dist.is_available() and dist.is_initialized():
        if synchronize:
            barrier(env)
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistEnv]:
    """`init_distributed` for the body, then `cleanup`: synchronised after a normal end, at
    once after an exception (a peer that failed never reaches the barrier)."""
    env = init_distributed(device)
    try:
        yield env
    except BaseException:
        cleanup(env, synchronize=False)
        raise
    cleanup(env)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place sum over processes (identity for one process); returns the tensor."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every process's `obj`, in rank order."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---------------------------------------------------------------------------------------
# Synchronised BatchNorm that also runs on CPU (gloo)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is again a sum over processes: every process's
    statistics depend on every process's inputs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        g = grad.clone()
        dist.all_reduce(g)
        return g


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the whole batch across processes.

    Mean and variance come from all-reduced per-channel sums (differentiable, so gradients
    flow through the statistics as in torch's SyncBatchNorm); running statistics are updated
    with the unbiased global variance. In eval mode, or in one process, it is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xd = x.double()  # sums of squares in float64: E[x^2] - E[x]^2 keeps its precision
        count = torch.tensor([x.numel() // c], dtype=xd.dtype, device=x.device)
        stats = torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)), count])
        stats = _AllReduceSum.apply(stats)
        n = stats[-1]
        mean64 = stats[:c] / n
        var64 = (stats[c : 2 * c] / n - mean64 * mean64).clamp_min(0)
        mean, var = mean64.float(), var64.float()
        xf = x.float()
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                nd = float(n.detach())
                unbiased = var.detach() * nd / max(nd - 1.0, 1.0)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """torch's SyncBatchNorm on GPUs, `CPUSyncBatchNorm` on CPUs (2-d BatchNorm layers)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        if module.affine:
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
