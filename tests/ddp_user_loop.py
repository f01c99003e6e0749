"""A user's own DDP training loop with prunekit's ADMM (no prunekit trainer), for
tests/test_distributed.py: under torchrun every rank trains its shard and hardens; alone,
the same loop is the one-process reference.

    torchrun --nproc-per-node 2 tests/ddp_user_loop.py DIR

writes ``DIR/plain.rankR.pt`` (masks, weights of ADMM), ``DIR/reweighted.rankR.pt`` (the
same with reweighted penalties) and ``DIR/drift.rankR.pt``: the ADMM run in which rank 1
changes one weight before hardening, with whether
:func:`prunekit.training.distributed.check_identical` caught it on that rank; and
``DIR/stop.rankR.pt``, ``DIR/skip_batch.rankR.pt`` from :func:`trainer_run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

import prunekit
from prunekit.files import save_checkpoint
from prunekit.training import TrainConfig, Trainer, distributed
from prunekit.training.trainer import TrainingDiverged

GLOBAL_BATCH = 16
EPOCHS = 3


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % 4
    x = torch.randn(128, 12, generator=g) + torch.eye(4).repeat(1, 3)[y] * 2.0
    return TensorDataset(x, y)


def train(drift: bool = False, method: str = "admm") -> dict:
    """Train, prune and harden; returns the masks and weights (and the drift verdict)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    targets = prunekit.resolve(model, [{"layers": "*", "sparsity": 0.75}])
    admm = (prunekit.ADMM(model, targets, rho=0.05) if method == "admm" else
            prunekit.Reweighted(model, targets, lam=1e-3))
    forward = DistributedDataParallel(model) if distributed.active() else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = dataset()
    g = torch.Generator()
    sampler = distributed.ShardSampler(data, distributed.world_size(), distributed.rank(),
                                       generator=g, shuffle=True, pad=True)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // distributed.world_size(),
                        sampler=sampler, generator=g)
    for epoch in range(EPOCHS):
        g.manual_seed(epoch)  # same order on every rank, a new one every epoch
        for x, y in loader:
            loss = F.cross_entropy(forward(x), y) + admm.penalty()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            admm.after_step()
        admm.end_epoch()
    if drift and distributed.rank() == 1:
        with torch.no_grad():
            model[0].weight[0, 0] += 1e-3
    caught = False
    try:
        distributed.check_identical(dict(model.named_parameters()), "weights before hardening")
    except distributed.RankMismatchError:
        caught = True
    masks = {name: frozen.mask for name, frozen in admm.freeze().items()}
    if not drift:
        distributed.check_identical(masks, "hardened masks")
    return {"masks": masks, "weights": {k: v.detach().clone() for k, v in
                                        model.state_dict().items()}, "caught": caught}


def trainer_run(on_nan: str) -> dict:
    """prunekit's Trainer in the user's script, on data with one NaN sample that only rank 1
    sees (global batch 2 of every epoch): with ``on_nan="stop"`` every rank must stop at
    that step (none may wait for the other), with ``"skip_batch"`` every rank skips it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = dataset().tensors
    x = x.clone()
    x[33, 0] = float("nan")  # in order, rank r gets samples r, r + 2, ...: 33 is rank 1's
    loader = DataLoader(TensorDataset(x, y), batch_size=2 * GLOBAL_BATCH)
    config = TrainConfig(epochs=2, lr=0.05, schedule="constant", progress=False,
                         on_nan=on_nan)
    trainer = Trainer(model, config, distributed.shard_loader(loader, train=True))
    try:
        history = trainer.fit()
    except TrainingDiverged as exc:
        return {"stopped": [exc.epoch, exc.step]}
    return {"skipped": [r["skipped_batches"] for r in history],
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        for name in ("plain", "drift", "reweighted"):
            result = train(drift=name == "drift", method="admm" if name != "reweighted"
                           else "reweighted")
            save_checkpoint(result, out / f"{name}.rank{dist.get_rank()}.pt")
        for on_nan in ("stop", "skip_batch"):
            save_checkpoint(trainer_run(on_nan), out / f"{on_nan}.rank{dist.get_rank()}.pt")
        dist.barrier()  # leave together: see prunekit.training.distributed.session
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
