"""The main job end to end: `prunekit compress` on synthetic data, reports, resume, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from prunekit import artifacts
from prunekit.cli import main

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
    for name in ("report.json", "report.md", "recipe.yaml", "model.pkz", "sparsity.png",
                 "training.png", "weights.png", "dense.pt", "pruned.pt", "retrained.pt"):
        assert (out / name).is_file(), name
    assert not (out / "model.pt").exists() and not (out / "quantized.pt").exists()
    report = json.loads((out / "report.json").read_text())
    for key in ("dense", "compressed"):
        assert 0.0 <= report["accuracy"][key] <= 1.0
    # figures are measured from the file's weights: irregular 90% on every weight, plus the
    # weights of channels nothing reads, which the export zeroes (exactly: same outputs)
    weights = {layer["name"]: layer for layer in report["layers"]}
    loaded = artifacts.load(out / "model.pkz")
    params = dict(loaded.model.named_parameters())
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"):
        zeros = float((params[name] == 0).float().mean())
        assert weights[name]["sparsity"] == pytest.approx(zeros) and zeros >= 0.895
    assert report["extra"]["dead_channels"].get("fc1", 0) > 0  # 10% of 10 fc2 rows kept
    nonzero = sum(int((p != 0).sum()) for p in loaded.model.parameters())
    assert report["params"]["nonzero"] == nonzero
    assert report["bytes"]["compressed"] == os.path.getsize(out / "model.pkz")
    assert sum(report["bytes"]["parts"].values()) == report["bytes"]["compressed"]
    assert report["compression_ratio"] == pytest.approx(report["params"]["total"] / nonzero)
    assert report["macs"]["compressed"] < report["macs"]["dense"]
    assert report["bytes"]["compressed"] < report["bytes"]["dense"]
    assert {r["stage"] for r in report["history"]} == {"pretrain", "prune", "retrain"}
    assert "conv1.weight" in (out / "report.md").read_text()
    # ADMM's per-layer residuals per Z/U update reach the report and its convergence plot
    updates = [r for r in report["prune_updates"] if r["event"] == "update"]
    assert updates and set(updates[-1]["layers"]) >= {"conv1.weight", "fc2.weight"}
    assert (out / "admm_convergence.png").is_file()
    assert "Z/U updates; at the last one" in (out / "report.md").read_text()
    assert "results:" in capsys.readouterr().out

    # `prunekit report` recomputes the same figures from the saved model
    assert main(["report", str(out / "model.pkz"), "--out", str(tmp_path / "again")]) == 0
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


def test_updates_per_epoch_takes_the_epoch_length_from_the_data(tmp_path, capsys):
    """512 training images in batches of 64: 8 steps per epoch, so 4 updates per epoch
    land after steps 2, 4 and 6 and at the epoch's end."""
    out = tmp_path / "run"
    assert main(["compress", str(write_recipe(tmp_path)), "--out", str(out), "--no-progress",
                 "--set", "prune.rho_schedule=support", "--set", "prune.rho_growth=null",
                 "--set", "prune.updates_per_epoch=4"]) == 0
    report = json.loads((out / "report.json").read_text())
    steps = [r["step"] for r in report["prune_updates"] if r["event"] == "update"]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16]

    # more updates than an epoch has steps: refused before the dense training starts
    again = tmp_path / "again"
    assert main(["compress", str(write_recipe(tmp_path)), "--out", str(again),
                 "--no-progress", "--set", "prune.updates_per_epoch=9"]) == 2
    err = capsys.readouterr().err
    assert "prune.updates_per_epoch" in err and "exceeds the 8 steps" in err
    assert "Traceback" not in err and not (again / "dense.pt").exists()


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


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_runs_on_synthetic_data(recipe, tmp_path):
    """Each recipe shortened to one epoch per stage it has (a --set into a section the
    recipe lacks would create that section)."""
    out = tmp_path / recipe.stem
    sections = yaml.safe_load(recipe.read_text())
    shorter = [f"{key}=1" for key in ("train.epochs", "prune.train.epochs", "retrain.epochs")
               if key.split(".")[0] in sections]
    code = main(["compress", str(recipe), "--out", str(out), "--no-progress",
                 "--set", "data.name=synthetic", "--set", "data.options={n: 128, n_test: 64}",
                 *[arg for option in shorter for arg in ("--set", option)]])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    pruned = [layer for layer in report["layers"] if layer["scheme"] not in (None, "dense")]
    assert pruned and all(layer["sparsity"] > 0.4 for layer in pruned)


# ------------------------------------------------------------ joint prune + quantize
JOINT = """\
name: joint
seed: 1
model: {name: lenet5}
data: {name: synthetic, batch_size: 64, test_batch_size: 128, options: {n: 128, n_test: 64}}
train: {epochs: 1, lr: 0.05, progress: false}
prune:
  method: admm
  rho: 0.01
  train: {epochs: 1, optimizer: adam, lr: 0.001, schedule: constant}
  targets:
    - layers: ["conv*", "fc*"]
      sparsity: 0.8
retrain:
  epochs: 1
  optimizer: adam
  lr: 0.0005
quantize:
  method: admm
  bits: {conv1: 7, conv2: 6, fc1: 4, fc2: 6}
  rho: 0.01
  train: {epochs: 1, optimizer: adam, lr: 0.0005, schedule: constant}
  retrain:
    mode: progressive
    fix_fraction: 0.5
    epochs: 2
    optimizer: adam
    lr: 0.0002
"""
JOINT_BITS = {"conv1.weight": 7, "conv2.weight": 6, "fc1.weight": 4, "fc2.weight": 6}
STAGE_FILES = ("dense.pt", "pruned.pt", "retrained.pt", "quantized.pt", "qretrained.pt",
               "model.pkz", "report.json")


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    recipe = root / "joint.yaml"
    recipe.write_text(JOINT)
    out = root / "run"
    assert main(["compress", str(recipe), "--out", str(out), "--no-progress"]) == 0
    return recipe, out


def test_joint_recipe_writes_every_stage_and_the_report_is_the_file(joint_run):
    _, out = joint_run
    for name in STAGE_FILES:
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["bytes"]["compressed"] == os.path.getsize(out / "model.pkz")
    assert sum(report["bytes"]["parts"].values()) == report["bytes"]["compressed"]
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert {n: layers[n]["bits"] for n in JOINT_BITS} == JOINT_BITS
    for name in JOINT_BITS:  # 80%, and more where the export zeroed dead channels
        assert layers[name]["sparsity"] >= 0.79
    stages = {r["stage"] for r in report["history"]}
    assert {"pretrain", "prune", "retrain", "quantize", "qretrain"} <= stages

    loaded = artifacts.load(out / "model.pkz")
    p = dict(loaded.model.named_parameters())
    for name, bits in JOINT_BITS.items():
        c = loaded.constraints[name]
        assert (c.kind, c.bits) == ("levels", bits)
        assert p[name].detach().abs().unique().numel() <= 2 ** (bits - 1)
        assert not p[name].detach()[~c.mask].any()


def test_joint_resume_after_the_last_stages_were_lost_is_byte_identical(joint_run):
    recipe, out = joint_run
    original = (out / "model.pkz").read_bytes()
    for name in ("report.json", "model.pkz", "qretrained.pt"):
        (out / name).unlink()
    assert main(["compress", str(recipe), "--out", str(out), "--no-progress",
                 "--resume"]) == 0
    assert (out / "model.pkz").read_bytes() == original


@pytest.mark.parametrize("old,new,message", [
    ("  rho: 0.01\n  train: {epochs: 1, optimizer: adam, lr: 0.0005",
     "  rhoo: 0.01\n  train: {epochs: 1, optimizer: adam, lr: 0.0005",
     "quantize.rhoo: unknown key"),
    ("    mode: progressive", "    mode: sometimes",
     "quantize.retrain.mode: must be one of"),
], ids=["unknown-key", "bad-mode"])
def test_bad_quantize_section_fails_before_any_training(tmp_path, capsys, old, new, message):
    assert JOINT.count(old) == 1
    text = JOINT.replace(old, new)
    line = text[:text.index(new.split("\n")[0])].count("\n") + 1
    path = tmp_path / "joint.yaml"
    path.write_text(text)
    out = tmp_path / "run"
    assert main(["compress", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"joint.yaml:{line}: {message}" in err and "Traceback" not in err
    assert not (out / "dense.pt").exists() and not (out / "ckpt").exists()


def test_a_data_root_that_does_not_hold_the_files_is_an_error(tmp_path, capsys, monkeypatch):
    """$PRUNEKIT_DATA holds a copy of the data, but data.root names a directory that does
    not exist: refused, naming the root, before any training (the other copy was read
    silently before)."""
    from test_data import write_mnist  # noqa: PLC0415

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_mnist(tmp_path / "other" / "mnist", n_train=64, n_test=32)
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "other"))
    recipe = str(write_recipe(tmp_path))
    missing = tmp_path / "no" / "such" / "dir"
    code = main(["compress", recipe, "--out", str(tmp_path / "r"), "--no-progress",
                 "--set", "data.name=mnist", "--set", "data.options={}",
                 "--set", f"data.root={missing}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"not found in root {missing} (no such directory)" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "dense.pt").exists()
    # without the root the copy is used, and one line names it
    assert main(["compress", recipe, "--out", str(tmp_path / "ok"), "--no-progress",
                 "--set", "data.name=mnist", "--set", "data.options={}",
                 "--set", "prune.train.epochs=1"]) == 0
    err = capsys.readouterr().err
    assert f"prunekit: data mnist: files read from {tmp_path / 'other' / 'mnist'}\n" in err
