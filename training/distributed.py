"""Data-parallel training under ``torchrun``: the same ``training.train`` run on one process or many.

    python -m training.train --config training/configs/apple_defect.yaml --out DIR            # one process
    torchrun --nproc_per_node=2 -m training.train --config ... --out DIR                     # two CPU processes (gloo)
    torchrun --nproc_per_node=8 -m training.train --config ... --out DIR                     # eight GPUs (NCCL)

What changes with several processes (``training.train.run`` asks this module at each step):

* **Process group.** torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) starts
  it: NCCL with the process's own GPU (``cuda:LOCAL_RANK``) where CUDA is available, gloo on the CPU
  otherwise (``CUDA_VISIBLE_DEVICES=`` forces the CPU). Without torchrun nothing changes: one
  process on the CPU, the same results bit for bit as before this module existed.
* **Batches.** ``train.batch_size`` is the *global* batch: every step takes the same crops as the
  one-process run, divided among the processes (each takes a contiguous slice of the global batch, as
  even as the division allows). Every process draws the same seeded order (plain shuffling, or the
  weighted samplers of ``train.balance`` / ``train.session_weight``) and keeps its slice, so a
  weighted draw keeps its meaning and the epoch has as many steps as on one process.
* **Loss.** Each process's loss is scaled so that the gradient DistributedDataParallel averages is
  the gradient of the global batch's loss, class weights included (a weighted mean divides by the
  weights of the whole batch, not of a slice); the loss it reports is the global batch's.
* **BatchNorm.** Synchronised: every BatchNorm layer normalises with the mean and variance of the
  global batch and keeps the running statistics a one-process run would (torch's SyncBatchNorm on
  GPUs; on the CPU, where torch's does not run, the same computation with autograd-aware
  all-reduces). At the end the layers become plain BatchNorm again: the exported network is the one
  a one-process run builds.
* **Randomness.** The weights start equal on every process (and DistributedDataParallel broadcasts
  rank 0's); augmentation and dropout then draw from per-process streams (seed + rank), so the
  slices of one batch are not augmented alike. A run with ``augment.enabled: false`` and
  ``model.dropout: 0`` has no such draws: its weights equal the one-process run's up to float
  rounding (tests/test_distributed.py). MixStyle mixes styles within each process's slice.
* **Rank 0 alone** validates each epoch, keeps the best epoch, writes checkpoints, prints progress,
  calibrates, exports and writes the artifact; the others train, meet it at a barrier when training
  ends, and leave. Crops are cut and cached by rank 0 first, then read by the others.

``--resume`` reads the checkpoint on every process: keep ``--work-dir`` on storage all machines see.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

#: how long a process waits for the others at a collective (rank 0 cutting the crops, validating an
#: epoch) before the run is declared hung
TIMEOUT = dt.timedelta(minutes=60)


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


@dataclass
class Context:
    """Where this process stands: rank 0 of 1 on the CPU without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    active: bool = False  # a process group is up (launched by torchrun)

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates, prints and writes files."""
        return self.rank == 0

    # ------------------------------------------------------------------ data
    def data_loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = False,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """``DataLoader(dataset, batch_size, shuffle, sampler, drop_last, generator)`` with
        ``batch_size`` the global batch: one process gets exactly that loader, several get each its
        slice of the same global batches (:class:`ShardedBatchSampler`)."""
        if not self.active:
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=drop_last, generator=generator)
        if sampler is None:  # what DataLoader itself builds from shuffle and generator
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        batches = ShardedBatchSampler(BatchSampler(sampler, batch_size, drop_last), self.rank, self.world_size)
        return DataLoader(dataset, batch_sampler=batches, generator=generator)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (cutting and caching crops), the others after it (reading the cache)."""
        if self.active and not self.main:
            dist.barrier()
        yield
        if self.active and self.main:
            dist.barrier()

    # ------------------------------------------------------------------ model
    def wrap(self, model: nn.Module, seed: int, frozen_phases: bool = False) -> nn.Module:
        """The network to train with: ``model`` itself on one process; under torchrun its BatchNorm
        layers synchronised (in place: ``model`` stays the module to validate and export), moved to
        this process's device and wrapped in DistributedDataParallel. The random streams (augmentation,
        dropout) are then seeded per process. ``frozen_phases``: some parameters are frozen in some
        epochs (training/finetune.py), so DDP looks for the parameters a step did not use."""
        if not self.active:
            return model
        if isinstance(model, nn.modules.batchnorm._BatchNorm):
            raise ValueError("a network that is one BatchNorm layer cannot be synchronised in place")
        sync_batchnorm(model, self.device)
        model.to(self.device)
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None, find_unused_parameters=frozen_phases
        )
        seed_process(seed, self.rank)
        return ddp

    def criterion(self, criterion: nn.Module) -> nn.Module:
        """The loss to train with: ``criterion`` on one process, :class:`GlobalBatchLoss` under torchrun."""
        return criterion if not self.active else GlobalBatchLoss(criterion, self.world_size).to(self.device)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """Training is over: the processes meet at a barrier, the process group ends, and ``model``
        comes back with plain BatchNorm on the CPU (what rank 0 goes on to calibrate and export)."""
        if not self.active:
            return model
        dist.barrier()
        dist.destroy_process_group()
        self.active = False
        return plain_batchnorm(model).cpu()


_CONTEXT: Context | None = None


def setup() -> Context:
    """This process's :class:`Context`: under torchrun the process group is started (once) and the
    device chosen; otherwise rank 0 of 1 on the CPU, nothing started."""
    global _CONTEXT
    if _CONTEXT is not None and (_CONTEXT.active or not launched_by_torchrun()):
        return _CONTEXT
    if not launched_by_torchrun():
        _CONTEXT = Context()
        return _CONTEXT
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": device} if backend == "nccl" else {}))
    _CONTEXT = Context(rank=rank, world_size=world, local_rank=local, device=device, active=True)
    return _CONTEXT


def teardown() -> None:
    """Ends the process group if a run left it up (an exception in training); a no-op otherwise."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def seed_process(seed: int, rank: int) -> None:
    """Python's, numpy's and torch's global random streams seeded for this process (``seed + rank``)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


# ---------------------------------------------------------------------------- batches
class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s slice of every batch of ``batches`` (the global batches, drawn alike on every
    process from the same seeded sampler): contiguous, sizes differing by at most one, every index
    of a global batch in exactly one slice. Every process gets as many batches as ``batches`` holds."""

    def __init__(self, batches: BatchSampler, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not among {world_size} processes")
        if batches.batch_size < world_size:
            raise ValueError(f"train.batch_size {batches.batch_size} (the global batch) is smaller than the {world_size} processes")
        n = len(batches.sampler)  # type: ignore[arg-type]
        last = n % batches.batch_size
        if not batches.drop_last and 0 < last < world_size:
            raise ValueError(
                f"the last batch of an epoch would hold {last} crops for {world_size} processes: "
                "change train.batch_size or the number of processes"
            )
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield shard(batch, self.rank, self.world_size)


def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous slice of one global batch (sizes differ by at most one)."""
    n = len(batch)
    return list(batch[n * rank // world_size : n * (rank + 1) // world_size])


# ---------------------------------------------------------------------------- loss
class GlobalBatchLoss(nn.Module):
    """A loss of :class:`torch.nn.CrossEntropyLoss`'s kind (mean reduction, optional class weights)
    computed on a slice so that DistributedDataParallel's averaged gradient is the global batch's.

    The global weighted mean is sum_i w_i l_i / sum_i w_i over the whole batch; each process returns
    ``world_size`` times its own numerator over the global denominator (DistributedDataParallel
    divides the summed gradients by ``world_size``). The value it returns is the global mean itself
    (the gradient is the scaled slice's), so the loss printed and recorded is the one-process run's."""

    def __init__(self, criterion: nn.Module, world_size: int) -> None:
        super().__init__()
        if not isinstance(criterion, nn.CrossEntropyLoss) or criterion.reduction != "mean" or criterion.ignore_index != -100:
            raise ValueError("GlobalBatchLoss needs a CrossEntropyLoss with mean reduction and no ignored index")
        self.criterion, self.world_size = criterion, world_size

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.criterion.weight
        summed = nn.functional.cross_entropy(logits, target, weight=weight, reduction="sum", label_smoothing=self.criterion.label_smoothing)
        # a weighted mean divides by the weights of the batch's targets (label smoothing included)
        denom = weight[target].sum() if weight is not None else torch.tensor(float(len(target)), device=logits.device)
        totals = torch.stack([summed.detach(), denom.to(summed.dtype)])
        dist.all_reduce(totals)
        scaled = summed * (self.world_size / totals[1])
        return scaled + (totals[0] / totals[1] - scaled).detach()  # the value: the global mean; the gradient: scaled's


# ---------------------------------------------------------------------------- BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """The sum over the processes of a tensor, differentiable: each process's gradient is the sum of
    all processes' gradients of the result (every process's loss depends on every input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """What torch's SyncBatchNorm computes, on the CPU (torch's runs on GPUs only, and
    DistributedDataParallel refuses it on the CPU): in training under a process group of several,
    inputs are normalised with the global batch's mean and (biased) variance, summed over the
    processes by all-reduces that autograd differentiates, and the running statistics are updated as
    BatchNorm updates them (unbiased variance; momentum, or the cumulative average when momentum is
    None). Otherwise (evaluation, one process) it is BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / input.size(1)], dtype=input.dtype)
        sums = all_reduce(torch.cat([input.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = input - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (n / max(float(n) - 1, 1.0)), alpha=f)
        return out


def _bn_args(bn: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    return {
        "num_features": bn.num_features,
        "eps": bn.eps,
        "momentum": bn.momentum,
        "affine": bn.affine,
        "track_running_stats": bn.track_running_stats,
    }


def _replace(module: nn.Module, swap) -> None:
    for name, child in module.named_children():
        new = swap(child)
        if new is not child:
            setattr(module, name, new)
        else:
            _replace(child, swap)


def _convert(bn: nn.Module, cls: type[nn.Module]) -> nn.Module:
    new = cls(**_bn_args(bn))
    new.load_state_dict(bn.state_dict())
    held = next(iter(bn.state_dict().values()), None)  # a layer with neither parameters nor statistics has no device
    if held is not None:
        new.to(held.device)
    new.train(bn.training)
    return new


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``model`` (in place) becomes a synchronised one with the same
    parameters and statistics (torch's SyncBatchNorm on a GPU, :class:`CpuSyncBatchNorm` on the CPU),
    remembering its class in ``plain_class``; ``model``."""
    cls = CpuSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm

    def swap(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not hasattr(m, "plain_class"):
            new = _convert(m, cls)
            new.plain_class = type(m)
            return new
        return m

    _replace(model, swap)
    return model


def plain_batchnorm(model: nn.Module) -> nn.Module:
    """The inverse of :func:`sync_batchnorm` (in place): every synchronised layer becomes the
    BatchNorm class it replaced, parameters and statistics kept; ``model``."""

    def swap(m: nn.Module) -> nn.Module:
        return _convert(m, m.plain_class) if hasattr(m, "plain_class") else m

    _replace(model, swap)
    return model
