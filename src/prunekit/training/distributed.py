"""Data-parallel training on PyTorch's own engine (``torch.distributed``, launched by torchrun).

Under ``torchrun --nproc-per-node N`` every process (rank) holds the whole model and trains
on its share of each global batch; DistributedDataParallel averages the gradients, so every
rank takes the same optimizer step and its weights stay bitwise equal to every other rank's.
Everything prunekit derives from the weights (ADMM's Z and U, reweighted penalties, hardened
masks, quantization levels) is then computed on every rank from identical inputs, and so is
identical too. "Identical" is checked, not assumed: :func:`check_identical` compares a
digest of the tensors across ranks and stops the run when one rank has drifted.

The data split is chosen so that a run on N ranks sees exactly the batches of a one-process
run with the same (global) batch size: :class:`ShardSampler` draws the one-process
loader's permutation from the loader's own generator (which the trainer reseeds every
epoch, so each epoch is reshuffled) and deals it out round-robin, so the N per-rank batches
of step k together are the one-process batch k. Only rank 0 writes files; the others read
the run directory, which must therefore be on a filesystem every rank sees.

Every function here is a no-op (or the identity) in a plain one-process run, so callers do
not branch on whether they run distributed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import ConfigError, PrunekitError


class RankMismatchError(PrunekitError):
    """Two ranks disagree on something that must be identical (weights, masks, state)."""


# ------------------------------------------------------------------ who am I
def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the group's, else the launcher's ``RANK`` (before the group
    is joined or after it is left), else 0."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or any launcher that sets ``WORLD_SIZE``) started several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def session(device: str = "auto") -> Iterator[None]:
    """Join the launcher's process group for the duration of a run, if there is one.

    NCCL when the run trains on CUDA, gloo otherwise; each rank uses GPU ``LOCAL_RANK``. A
    group the caller already initialised (the Python API inside a user's own DDP script)
    is used as it is and left open.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = device != "cpu" and torch.cuda.is_available() and not str(device).startswith("cpu")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    seconds = int(os.environ.get("PRUNEKIT_DIST_TIMEOUT", "1800"))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=seconds))
    try:
        yield
        # a clean exit: no rank leaves while another still talks to it, and the DDP
        # wrappers (whose reducers hold the group) are gone before the group is, or gloo's
        # threads may abort the process at interpreter exit
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) when several ranks train on CUDA, whatever index the
    config names: two ranks on one GPU would make NCCL fail."""
    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK",
                                                       torch.cuda.current_device())))
    return device


def _device() -> torch.device:
    """Where collective tensors live: NCCL moves only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ the model
def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` inside DistributedDataParallel when several ranks train, else itself.

    DDP broadcasts rank 0's weights and buffers when it is built, so every rank starts from
    the same model even if the ranks initialised theirs differently.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Each rank updates its buffers from its own share of the batch; DDP overwrites them with
    rank 0's at the next forward, but evaluation and checkpoints come first, so they are
    made equal here.
    """
    if not active():
        return
    for buffer in model.buffers():
        if buffer.is_floating_point() or buffer.dtype in (torch.long, torch.int):
            moved = buffer.data.to(_device())
            dist.broadcast(moved, 0)
            buffer.data.copy_(moved)


# ------------------------------------------------------------------ the data
class ShardSampler(DistributedSampler):
    """This rank's share of the one-process order (module docstring).

    ``generator`` is the loader's generator: reseeding it at each epoch (as the trainer
    does) reshuffles, and the permutation is the one a one-process ``shuffle=True`` loader
    would draw from it. With ``shuffle=False`` the order is the data set's. With ``pad``,
    the head of the order is repeated so that every rank gets the same number of samples
    (training needs that: a rank that runs out of batches first would wait forever for the
    others' gradients); evaluation leaves it off so that no sample is counted twice.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, *,
                 generator: torch.Generator | None, shuffle: bool, pad: bool) -> None:
        if shuffle and not isinstance(generator, torch.Generator):
            # the global generator differs between ranks: their shards would overlap
            raise ConfigError("ShardSampler(shuffle=True) needs the loader's torch.Generator")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle)
        self.generator = generator
        self.pad = pad
        n = len(dataset)
        self.num_samples = math.ceil(n / num_replicas) if pad else len(range(rank, n,
                                                                             num_replicas))
        self.total_size = self.num_samples * num_replicas if pad else n

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).tolist()
        else:
            order = list(range(n))
        if self.pad and self.total_size > n:
            order += (order * math.ceil(self.total_size / n))[: self.total_size - n]
        return iter(order[self.rank:self.total_size:self.num_replicas])


def shard_loader(loader: DataLoader, *, train: bool) -> DataLoader:
    """A loader over this rank's share of ``loader``'s data, or ``loader`` itself outside a
    distributed run.

    A training loader keeps its global batch size: each rank gets ``batch_size / N`` (which
    must divide evenly), its collate function (augmentation) and its generator; its order
    becomes :class:`ShardSampler`'s. A test loader is split without shuffling or padding.
    """
    if not active() or isinstance(loader.sampler, ShardSampler):
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise ConfigError("distributed training needs a torch DataLoader with a batch_size")
    n = world_size()
    batch = loader.batch_size
    if train and batch % n:
        raise ConfigError(f"data.batch_size ({batch}) must be a multiple of the number of "
                          f"processes ({n}): it is the global batch, split evenly over them")
    plain = (torch.utils.data.RandomSampler, torch.utils.data.SequentialSampler)
    if not isinstance(loader.sampler, plain):
        raise ConfigError(f"distributed training splits loaders that shuffle or keep the data "
                          f"set's order; this one's {type(loader.sampler).__name__} would be "
                          f"dropped: give each rank its own share instead")
    shuffle = train and isinstance(loader.sampler, torch.utils.data.RandomSampler)
    generator = loader.generator
    if shuffle and generator is None:
        generator = torch.Generator().manual_seed(0)
    sampler = ShardSampler(loader.dataset, n, rank(), generator=generator, shuffle=shuffle,
                           pad=train)
    return DataLoader(loader.dataset, batch_size=batch // n if train else batch,
                      sampler=sampler, generator=generator, collate_fn=loader.collate_fn,
                      drop_last=loader.drop_last, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory)


def is_sharded(loader: Any) -> bool:
    """Whether ``loader`` yields only this rank's share (its metrics must be summed)."""
    return active() and isinstance(getattr(loader, "sampler", None), ShardSampler)


# ------------------------------------------------------------------ collectives
def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one: the ranks then take the
    same branch (a rank that skipped a step alone would leave the others waiting)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank0_says(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (decisions that read the run directory)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier() -> None:
    """Wait until every rank gets here (rank 0 has finished writing a file the others read)."""
    if active():
        dist.barrier()


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-serialisable ``obj`` on every rank (sent as bytes; no pickle)."""
    if not active():
        return obj
    data = json.dumps(obj).encode() if is_main() else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=_device())
    dist.broadcast(size, 0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=_device())
    if is_main():
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, 0)
    return json.loads(buffer.cpu().numpy().tobytes().decode())


# ------------------------------------------------------------------ checks
def fingerprint(obj: Any) -> bytes:
    """SHA-256 of a nest of dicts, lists, tensors and plain values: equal digests mean
    bitwise equal contents (a tensor's dtype and shape included)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.digest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def check_identical(obj: Any, what: str) -> None:
    """Raise :class:`RankMismatchError` on every rank unless ``obj`` is bitwise the same on
    all of them (rank 0's digest is broadcast; each rank compares; the verdict is shared).

    Call it on every rank at the same point: it is a collective.
    """
    if not active():
        return
    mine = torch.tensor(list(fingerprint(obj)), dtype=torch.uint8, device=_device())
    theirs = mine.clone()
    dist.broadcast(theirs, 0)
    differs = not torch.equal(mine, theirs)
    ranks = torch.zeros(world_size(), dtype=torch.int32, device=_device())
    ranks[rank()] = int(differs)
    dist.all_reduce(ranks)
    bad = [r for r, d in enumerate(ranks.tolist()) if d]
    if bad:
        raise RankMismatchError(
            f"{what} differ between rank 0 and rank(s) {', '.join(map(str, bad))}; a "
            f"distributed run must compute them identically everywhere (same code, same "
            f"data, same torch on every rank)"
        )
