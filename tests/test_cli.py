"""The main job end to end: `prunekit compress` on synthetic data, reports, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit.cli import main
from prunekit.io import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = ROOT / "recipes" / "lenet5-fashion-admm.yaml"

TINY = """\
name: tiny
seed: 3
model:
  name: lenet5
data:
  name: synthetic
  batch_size: 64
  test_batch_size: 256
  options: {n: 512, n_test: 256}
train:
  epochs: 1
  lr: 0.05
  progress: false
prune:
  method: admm
  rho: 0.01
  rho_schedule: geometric
  rho_growth: 2.0
  train: {epochs: %(prune_epochs)d, optimizer: adam, lr: 0.001, schedule: constant}
  targets:
    - layers: ["conv*", "fc*"]
      sparsity: 0.9
retrain:
  epochs: 1
  optimizer: adam
  lr: 0.0005
"""


def write_recipe(tmp_path: Path, prune_epochs: int = 2) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % {"prune_epochs": prune_epochs})
    return path


def test_compress_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compress", str(write_recipe(tmp_path)), "--out", str(out),
                 "--no-progress"]) == 0
    for name in ("report.json", "report.md", "recipe.yaml", "model.pt", "sparsity.png",
                 "training.png", "weights.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    for key in ("dense", "compressed"):
        assert 0.0 <= report["accuracy"][key] <= 1.0
    # figures are measured from the weights: irregular 90% on every weight
    weights = {layer["name"]: layer for layer in report["layers"]}
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"):
        assert weights[name]["sparsity"] == pytest.approx(0.9, abs=0.005)
    saved = load_checkpoint(out / "model.pt")
    nonzero = sum(int((v != 0).sum()) for k, v in saved["state_dict"].items()
                  if not k.endswith("_mask"))
    assert report["params"]["nonzero"] == nonzero
    assert report["compression_ratio"] == pytest.approx(report["params"]["total"] / nonzero)
    assert report["macs"]["compressed"] < report["macs"]["dense"]
    assert report["bytes"]["compressed"] < report["bytes"]["dense"]
    assert {r["stage"] for r in report["history"]} == {"pretrain", "prune", "retrain"}
    assert "conv1.weight" in (out / "report.md").read_text()
    assert "results:" in capsys.readouterr().out

    # `prunekit report` recomputes the same figures from the saved model
    assert main(["report", str(out / "model.pt"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["params"] == report["params"]
    assert again["bytes"] == report["bytes"]


def test_default_recipe_runs_on_synthetic_data(tmp_path):
    out = tmp_path / "default"
    code = main(["compress", str(DEFAULT_RECIPE), "--out", str(out), "--no-progress",
                 "--set", "data.name=synthetic", "--set", "data.options={n: 256, n_test: 128}",
                 "--set", "train.epochs=1", "--set", "prune.train.epochs=1",
                 "--set", "retrain.epochs=1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["compression_ratio_weights"] > 60  # the paper's per-layer table, ~71x


def test_bad_recipe_is_one_clear_error(tmp_path, capsys):
    path = write_recipe(tmp_path)
    path.write_text(path.read_text().replace("batch_size: 64", "batch_size: lots"))
    assert main(["compress", str(path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "tiny.yaml:7: data.batch_size: expected an integer" in err
    assert "Traceback" not in err


def test_unknown_method_option_and_layer_are_clear_errors(tmp_path, capsys):
    recipe = str(write_recipe(tmp_path))
    assert main(["compress", recipe, "--out", str(tmp_path / "a"),
                 "--set", "prune.rhoo=1"]) == 2
    assert "rhoo" in capsys.readouterr().err
    assert main(["compress", recipe, "--out", str(tmp_path / "b"),
                 "--set", "prune.targets=[{layers: nosuch, sparsity: 0.5}]"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "conv1" in err  # names what exists


def test_missing_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "nodata"))
    recipe = str(write_recipe(tmp_path))
    code = main(["compress", recipe, "--out", str(tmp_path / "c"),
                 "--set", "data.name=kmnist", "--set", "data.options={}",
                 "--set", f"data.root={tmp_path / 'empty'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "kmnist" in err and str(tmp_path / "empty") in err


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_resume_after_sigkill_gives_identical_model(tmp_path):
    recipe = write_recipe(tmp_path, prune_epochs=6)
    straight = tmp_path / "straight"
    assert main(["compress", str(recipe), "--out", str(straight), "--no-progress"]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "prunekit.cli", "compress", str(recipe), "--out", str(killed),
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "ckpt" / "prune.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.pt").exists()

    assert main(["compress", str(recipe), "--out", str(killed), "--no-progress",
                 "--resume"]) == 0
    a, b = _state(straight / "model.pt"), _state(killed / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_runs_on_synthetic_data(recipe, tmp_path):
    out = tmp_path / recipe.stem
    code = main(["compress", str(recipe), "--out", str(out), "--no-progress",
                 "--set", "data.name=synthetic", "--set", "data.options={n: 128, n_test: 64}",
                 "--set", "train.epochs=1", "--set", "prune.train.epochs=1",
                 "--set", "retrain.epochs=1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    pruned = [layer for layer in report["layers"] if layer["scheme"] not in (None, "dense")]
    assert pruned and all(layer["sparsity"] > 0.4 for layer in pruned)
