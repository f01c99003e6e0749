"""Runs that survive faults: SIGKILL anywhere, then ``--resume``, ends bitwise where an
uninterrupted run ends; a file that fails its check is never trusted (NaN: see
test_faults_nan.py)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from processes import assert_same_run, compress_args, describe, forked, killed, tiny_recipe
from prunekit import artifacts
from prunekit.cli import main
from prunekit.files import CorruptFileError, load_checkpoint

# Every stage, each a few epochs of 4 steps on 128 synthetic 8x8 images, so a kill can land
# in the first, a middle and the last epoch of each.
RECIPE = tiny_recipe("faults", 2, train=2, prune=3, retrain=2, quantize=True)
FINAL = "qretrained.pt"
FREEZE = "call:prunekit.methods.base:PruningMethod.freeze:1"

# One chain of kills per stage: each process is killed at the next point, the next one
# resumes; counts are per process (see tests/harness.py), and the last one runs to the end.
CHAINS = {
    "pretrain": ["step:pretrain:1:2", "write:pretrain.pt:1", "step:pretrain:2:4",
                 "after-write:dense.pt:1"],
    "prune": ["step:prune:1:1", "step:prune:2:4", "write:prune.pt:1", "step:prune:3:2"],
    "harden": [FREEZE, "write:pruned.pt:1", "after-write:pruned.pt:1"],
    "retrain": ["step:retrain:1:3", "write:retrain.pt:1", "step:retrain:2:1",
                "write:retrained.pt:1"],
    "quantize": ["step:quantize:1:2", FREEZE, "step:qretrain:1:2", "step:qretrain:2:4",
                 "write:qretrained.pt:1"],
    "export": ["write:model.pkz:1", "after-write:model.pkz:1", "write:report.json:1",
               "after-write:report.md:1"],
}
#: epochs of each training stage in RECIPE (4 steps each)
EPOCHS = {"pretrain": 2, "prune": 3, "retrain": 2, "quantize": 2, "qretrain": 2}


def random_chain(seed: int, per_stage: int = 2) -> list[str]:
    """Kill points drawn at random, ``per_stage`` steps in every training stage, in the
    order a run reaches them (so each resumed process reaches the next one). The seed is
    fixed for a repeatable suite; set PRUNEKIT_KILL_SEED to explore others."""
    rng = random.Random(seed)
    chain = []
    for stage, epochs in EPOCHS.items():
        steps = [(e, s) for e in range(1, epochs + 1) for s in range(1, 5)]
        chain += [f"step:{stage}:{e}:{s}" for e, s in sorted(rng.sample(steps, per_stage))]
    return chain


CHAINS["random"] = random_chain(int(os.environ.get("PRUNEKIT_KILL_SEED", "0")))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "faults.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def straight(recipe) -> Path:
    out = recipe.parent / "straight"
    assert main(compress_args(recipe, out)) == 0
    return out


def assert_every_file_checks(run: Path) -> None:
    """What a kill leaves behind: each checkpoint and model file whole (a temp file may be
    half written; nothing reads it)."""
    for path in run.rglob("*.pt"):
        load_checkpoint(path, verified=True)
    if (run / "model.pkz").exists():
        artifacts.load(run / "model.pkz")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(CHAINS))
def test_sigkill_anywhere_then_resume_is_bitwise_the_uninterrupted_run(stage, recipe,
                                                                       straight, tmp_path):
    out = tmp_path / "run"
    for i, point in enumerate(CHAINS[stage]):
        result = forked(compress_args(recipe, out, resume=i > 0), kill=point)
        assert killed(result), f"{point} was never reached: {describe(result)}"
        assert not (out / "report.json").exists() or point.endswith("report.md:1")
        assert_every_file_checks(out)
    result = forked(compress_args(recipe, out, resume=True))
    assert result.returncode == 0, describe(result)
    assert_same_run(straight, out, FINAL)
    assert not list(out.rglob(".*.tmp")), "a resumed run removes half-written temp files"


# ------------------------------------------------------------------ files that fail a check
def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["pruned.pt", "ckpt/prune.pt", "model.pkz"])
def test_a_damaged_file_is_set_aside_and_its_stage_redone(victim, recipe, straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    if victim == "ckpt/prune.pt":  # the stage must start again from its first epoch
        for later in ("pruned.pt", "retrained.pt", "quantized.pt", FINAL, "model.pkz"):
            (out / later).unlink()
    flip_byte(out / victim, (out / victim).stat().st_size // 2)
    assert main(compress_args(recipe, out, resume=True)) == 0
    assert (out / (victim + ".corrupt")).exists()
    assert_same_run(straight, out, FINAL)


def test_load_checkpoint_refuses_changed_truncated_and_unsigned_files(tmp_path, straight):
    path = tmp_path / "x.pt"
    shutil.copy(straight / "dense.pt", path)
    assert load_checkpoint(path, verified=True)["stage"] == "dense"
    flip_byte(path, 200)
    with pytest.raises(CorruptFileError, match="SHA-256"):
        load_checkpoint(path)
    path.write_bytes((straight / "dense.pt").read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match="trailer"):
        load_checkpoint(path, verified=True)
    torch.save({"w": torch.ones(2)}, path)  # a user's plain torch file
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    with pytest.raises(CorruptFileError, match="trailer"):
        load_checkpoint(path, verified=True)
