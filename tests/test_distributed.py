"""Data-parallel runs on PyTorch's own engine: torchrun with 2 gloo processes on CPU gives
the masks and (to float tolerance) the weights of a one-process run with the same global
batch, writes the run directory once from rank 0, resumes exactly after a kill, and a user's
own DDP loop gets identical masks on every rank, checked rather than assumed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import ddp_user_loop
from processes import (
    assert_same_run,
    compress_args,
    describe,
    harness,
    killed,
    launch,
    tiny_recipe,
)
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.files import load_checkpoint
from prunekit.training import distributed
from prunekit.training.distributed import ShardSampler, fingerprint

RECIPE = tiny_recipe("ddp", 5, train=1, prune=3, retrain=2)
ARTIFACTS = ("dense.pt", "pruned.pt", "retrained.pt")
#: how often each file is written by a whole run: stage checkpoints once per epoch
WRITES = {"recipe.yaml": 1, "ckpt/pretrain.pt": 1, "ckpt/prune.pt": 3, "ckpt/retrain.pt": 2,
          **dict.fromkeys(ARTIFACTS, 1), "model.pkz": 1, "report.json": 1, "report.md": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same recipe in one process and under torchrun (2 ranks), writes logged."""
    root = tmp_path_factory.mktemp("ddp")
    recipe = root / "ddp.yaml"
    recipe.write_text(RECIPE)
    single, ddp = root / "single", root / "ddp"
    assert main(compress_args(recipe, single)) == 0
    result = harness(compress_args(recipe, ddp), nproc=2, log=root / "writes.jsonl")
    assert result.returncode == 0, describe(result)
    return {"recipe": recipe, "single": single, "ddp": ddp, "writes": root / "writes.jsonl"}


@pytest.mark.slow
def test_torchrun_gives_the_masks_and_weights_of_one_process(runs):
    for artifact in ARTIFACTS:
        one = load_checkpoint(runs["single"] / artifact, verified=True)
        two = load_checkpoint(runs["ddp"] / artifact, verified=True)
        for name, w in one["state_dict"].items():
            v = two["state_dict"][name]
            assert torch.equal(w == 0, v == 0), f"{artifact}: {name} has other zeros"
            assert torch.allclose(w, v, rtol=0, atol=1e-5), f"{artifact}: {name} differs"
        for name, c in one["constraints"].items():
            assert torch.equal(c["mask"], two["constraints"][name]["mask"])
    a = json.loads((runs["single"] / "report.json").read_text())
    b = json.loads((runs["ddp"] / "report.json").read_text())
    assert a["params"] == b["params"] and a["compression_ratio"] == b["compression_ratio"]
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1 / 64)


@pytest.mark.slow
def test_torchrun_writes_every_file_once_from_rank_0(runs):
    entries = [json.loads(line) for line in runs["writes"].read_text().splitlines()]
    assert {e["rank"] for e in entries} == {0}
    counts = Counter(str(Path(e["path"]).relative_to(runs["ddp"])) for e in entries)
    assert {k: counts[k] for k in WRITES} == WRITES
    assert all(n == 1 for k, n in counts.items() if k not in WRITES)  # plots: once each


@pytest.mark.slow
def test_torchrun_resume_after_a_kill_is_the_uninterrupted_run(runs, tmp_path):
    out = tmp_path / "killed"
    for point, victim in (("step:prune:2:3", 1), ("write:retrained.pt:1", 0)):
        result = harness(compress_args(runs["recipe"], out, resume=victim == 0), nproc=2,
                         kill=point, kill_rank=victim)
        assert killed(result), f"{point} on rank {victim} never reached: {describe(result)}"
    result = harness(compress_args(runs["recipe"], out, resume=True), nproc=2)
    assert result.returncode == 0, describe(result)
    assert_same_run(runs["ddp"], out, "retrained.pt")


@pytest.fixture(scope="module")
def user_loop(tmp_path_factory) -> Path:
    """tests/ddp_user_loop.py under torchrun, 2 ranks: a plain run and a drifted one."""
    out = tmp_path_factory.mktemp("user_loop")
    result = launch(Path(ddp_user_loop.__file__), [str(out)], nproc=2)
    assert result.returncode == 0, describe(result)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["admm", "reweighted"])
def test_a_users_own_ddp_loop_gets_identical_masks_on_every_rank(user_loop, method):
    run = "plain" if method == "admm" else method
    ranks = [load_checkpoint(user_loop / f"{run}.rank{r}.pt", verified=True) for r in (0, 1)]
    assert fingerprint(ranks[0]["masks"]) == fingerprint(ranks[1]["masks"])
    assert not ranks[0]["caught"] and not ranks[1]["caught"]
    alone = ddp_user_loop.train(method=method)  # one process, the same global batch
    for name, mask in alone["masks"].items():
        assert torch.equal(mask, ranks[0]["masks"][name])
        assert mask.float().mean().item() == pytest.approx(0.25, abs=0.01)
    for name, w in alone["weights"].items():
        assert torch.allclose(w, ranks[0]["weights"][name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_rank_that_drifted_is_caught_on_every_rank(user_loop):
    assert all(load_checkpoint(user_loop / f"drift.rank{r}.pt")["caught"] for r in (0, 1))


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_or_skips_on_every_rank(user_loop):
    stop = [load_checkpoint(user_loop / f"stop.rank{r}.pt") for r in (0, 1)]
    assert stop[0] == stop[1] == {"stopped": [1, 2]}
    skip = [load_checkpoint(user_loop / f"skip_batch.rank{r}.pt") for r in (0, 1)]
    assert skip[0]["skipped"] == skip[1]["skipped"] == [1, 1]
    assert fingerprint(skip[0]["weights"]) == fingerprint(skip[1]["weights"])
    alone = ddp_user_loop.trainer_run("skip_batch")
    assert alone["skipped"] == [1, 1]
    for name, w in alone["weights"].items():
        assert torch.allclose(w, skip[0]["weights"][name], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ no processes needed
def test_the_shards_of_a_step_are_the_one_process_batch():
    data = list(range(100))
    g = torch.Generator()
    one = [ShardSampler(data, 1, 0, generator=g, shuffle=True, pad=True)]
    two = [ShardSampler(data, 2, r, generator=g, shuffle=True, pad=True) for r in (0, 1)]
    g.manual_seed(7)
    order = list(one[0])
    g.manual_seed(7)
    first = list(two[0])
    g.manual_seed(7)
    second = list(two[1])
    assert order == torch.randperm(100, generator=torch.Generator().manual_seed(7)).tolist()
    for k in range(0, 50, 16):  # batch 32 = 2 x 16
        assert sorted(first[k:k + 16] + second[k:k + 16]) == sorted(order[2 * k:2 * k + 32])
    g.manual_seed(8)
    assert list(two[0]) != first  # another epoch, another order


def test_training_shards_are_padded_evaluation_shards_are_not():
    data = list(range(7))
    train = [list(ShardSampler(data, 2, r, generator=torch.Generator(), shuffle=True,
                               pad=True)) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == 4 and set(train[0] + train[1]) == set(data)
    test = [list(ShardSampler(data, 2, r, generator=None, shuffle=False, pad=False))
            for r in (0, 1)]
    assert test == [[0, 2, 4, 6], [1, 3, 5]]


def test_fingerprint_sees_one_changed_bit():
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": [torch.ones(2, dtype=torch.bool), 3]}
    same = {"b": [torch.ones(2, dtype=torch.bool), 3], "a": torch.arange(6.0).reshape(2, 3)}
    assert fingerprint(state) == fingerprint(same)
    changed = {**same, "a": same["a"].clone()}
    changed["a"].view(torch.int32)[0, 0] ^= 1
    assert fingerprint(state) != fingerprint(changed)
    assert fingerprint(torch.zeros(6)) != fingerprint(torch.zeros(2, 3))


def test_shard_loader_splits_the_global_batch_or_says_why_not(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 2)
    data = list(range(90))
    g = torch.Generator()
    with pytest.raises(ConfigError, match=r"batch_size \(32\) must be a multiple of .* \(3\)"):
        distributed.shard_loader(DataLoader(data, batch_size=32, shuffle=True, generator=g),
                                 train=True)
    train = distributed.shard_loader(DataLoader(data, batch_size=30, shuffle=True, generator=g),
                                     train=True)
    assert train.batch_size == 10 and train.generator is g
    assert isinstance(train.sampler, ShardSampler) and train.sampler.rank == 2
    weighted = torch.utils.data.WeightedRandomSampler([1.0] * 90, 90)
    with pytest.raises(ConfigError, match="WeightedRandomSampler would be dropped"):
        distributed.shard_loader(DataLoader(data, batch_size=30, sampler=weighted), train=True)
    test = distributed.shard_loader(DataLoader(data, batch_size=50), train=False)
    assert test.batch_size == 50 and [int(x) for b in test for x in b] == list(range(2, 90, 3))
