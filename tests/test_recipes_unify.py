"""Weight unification trained with ADMM, end to end: the shipped LeNet-5 recipe and a
ResNet-20 on synthetic data, each ending in a model file whose unified blocks share one
magnitude and whose size is the size the report prints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from prunekit import artifacts
from prunekit.cli import main
from prunekit.constraints import Unified

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "data.name=synthetic", "--set", "data.limit_train=256",
         "--set", "data.limit_test=128", "--set", "train.epochs=1",
         "--set", "prune.train.epochs=2", "--set", "retrain.epochs=1", "--no-progress"]


def unified_blocks_share_one_magnitude(w: torch.Tensor, constraint: Unified) -> bool:
    ids = constraint.block_ids(tuple(w.shape))
    for block in torch.nonzero(constraint.states == Unified.UNIFY).flatten().tolist():
        entries = w[(ids == block) & constraint.unified]
        if entries.abs().unique().numel() != 1:
            return False
    return True


def check_run(out: Path) -> None:
    report = json.loads((out / "report.json").read_text())
    assert report["bytes"]["compressed"] == os.path.getsize(out / "model.pkz")
    assert sum(report["bytes"]["parts"].values()) == report["bytes"]["compressed"]
    loaded = artifacts.load(out / "model.pkz")
    params = dict(loaded.model.named_parameters())
    unified = {n: c for n, c in loaded.constraints.items() if isinstance(c, Unified)}
    assert unified, "no layer was stored as unified"
    for name, constraint in unified.items():
        w = params[name].detach()
        assert constraint.contains(w)
        assert unified_blocks_share_one_magnitude(w, constraint)
        assert int((constraint.states == Unified.UNIFY).sum()) > 0
        row = next(r for r in report["layers"] if r["name"] == name)
        assert row["scheme"] == "unify" and row["bytes"] < row["bytes_dense"]


def test_lenet5_unify_recipe_runs_and_stores_unified_blocks(tmp_path):
    out = tmp_path / "lenet"
    recipe = ROOT / "recipes" / "lenet5-fashion-unify.yaml"
    assert main(["compress", str(recipe), "--out", str(out), *SMALL]) == 0
    check_run(out)


@pytest.mark.slow
def test_resnet20_unify_on_synthetic_data(tmp_path):
    recipe = tmp_path / "resnet20-unify.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "resnet20-unify", "model": {"name": "resnet20"},
        "data": {"name": "synthetic", "batch_size": 32,
                 "options": {"input_shape": [3, 16, 16]}},
        "train": {"epochs": 1, "lr": 0.05, "progress": False},
        "prune": {"method": "admm", "rho": 0.01,
                  "train": {"epochs": 2, "optimizer": "adam", "lr": 0.001,
                            "schedule": "constant"},
                  "targets": [{"layers": "*", "types": ["Conv2d"], "scheme": "unify",
                               "block": [1, 4], "unified": 0.3, "sparsity": 0.5}]},
        "retrain": {"epochs": 1, "optimizer": "adam", "lr": 0.0005},
    }))
    out = tmp_path / "resnet"
    assert main(["compress", str(recipe), "--out", str(out), "--no-progress",
                 "--set", "data.limit_train=128", "--set", "data.limit_test=64"]) == 0
    check_run(out)
