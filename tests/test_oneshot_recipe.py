"""The ``oneshot`` recipe section: post-training compression as a pipeline stage, followed by
the same retraining, export and report as training-time pruning."""

from __future__ import annotations

import json

import pytest

from prunekit import artifacts, models
from prunekit.errors import ConfigError
from prunekit.pipeline import run_recipe
from prunekit.recipe import load_recipe

RECIPE = """\
name: post-training
seed: 1
model: {name: lenet5}
data:
  name: synthetic
  batch_size: 32
  options: {n: 256, n_test: 128}
train: {epochs: 1, lr: 0.05, progress: false}
oneshot:
  method: %(method)s
  calibration: {samples: 64}
  targets: [{layers: ["conv2", "fc1", "fc2"], sparsity: 0.75}]
%(retrain)s"""


def build_lenet5():
    return models.build({"name": "lenet5", "kwargs": {}, "input_shape": [1, 28, 28],
                         "num_classes": 10})


RETRAIN = "retrain: {epochs: 1, optimizer: adam, lr: 0.0005}\n"


def recipe(tmp_path, method="admm", retrain=RETRAIN):
    path = tmp_path / "oneshot.yaml"
    path.write_text(RECIPE % {"method": method, "retrain": retrain})
    return load_recipe(path)


@pytest.mark.parametrize("method", ["admm", "sparsegpt"])
def test_a_oneshot_stage_compresses_then_retrains_exports_and_reports(tmp_path, method):
    lines: list[str] = []
    report = run_recipe(recipe(tmp_path, method), tmp_path / "run", progress=False,
                        echo=lines.append)
    out = tmp_path / "run"
    assert (out / "oneshot.pt").is_file() and (out / "retrained.pt").is_file()
    stage = artifacts.load_stage(out / "oneshot.pt", "oneshot", build_lenet5())[0]
    assert set(stage) == {"conv2.weight", "fc1.weight", "fc2.weight"}
    for constraint in stage.values():  # the rate is met exactly at the stage
        assert float(constraint.mask.float().mean()) == pytest.approx(0.25, abs=1e-3)
    layers = {layer["name"]: layer for layer in report["layers"]}
    params = dict(artifacts.load(out / "model.pkz").model.named_parameters())
    for name in stage:  # the file also drops the channels nothing reads any more
        zeros = float((params[name] == 0).float().mean())
        assert zeros >= 0.75 - 1e-3 and layers[name]["sparsity"] == pytest.approx(zeros)
    moments = [(r["stage"], r["when"]) for r in report["stage_accuracy"]]
    assert moments == [("dense", "end"), ("oneshot", "after compression"), ("retrain", "end")]
    record = json.loads((out / "report.json").read_text())["extra"]["oneshot"]
    assert [r["name"] for r in record["layers"]] == ["conv2.weight", "fc1.weight", "fc2.weight"]
    # the solver reconstructs each layer's outputs better than the plain projection
    assert all(r["error"] <= r["magnitude_error"] + 1e-9 for r in record["layers"])
    assert (out / "oneshot_layers.png").stat().st_size > 0  # errors and seconds per layer
    assert "oneshot_layers.png" in (out / "report.md").read_text()
    assert report["method"].startswith(f"oneshot:{method}")
    assert any(line.startswith(f"oneshot: {method} on 64 calibration examples")
               for line in lines)


def test_a_oneshot_run_resumes_from_its_stage_artifact(tmp_path):
    first = run_recipe(recipe(tmp_path, "magnitude", retrain=""), tmp_path / "run",
                       progress=False, echo=lambda _: None)
    lines: list[str] = []
    again = run_recipe(recipe(tmp_path, "magnitude", retrain=""), tmp_path / "run",
                       resume=True, progress=False, echo=lines.append)
    assert "resume: stage oneshot is finished (oneshot.pt)" in lines
    assert not any(line.startswith("oneshot: magnitude on") for line in lines)  # not redone
    assert again["accuracy"] == first["accuracy"]
    assert again["bytes"]["compressed"] == first["bytes"]["compressed"]


def test_oneshot_mistakes_are_refused_with_their_line(tmp_path):
    with pytest.raises(ConfigError, match=r"oneshot.yaml:\d+: oneshot.rho0: .*positive"):
        load_recipe(_write(tmp_path, "  rho0: -1\n"))
    with pytest.raises(ConfigError, match="unknown one-shot method 'obs'"):
        recipe(tmp_path, "obs")
    with pytest.raises(ConfigError, match="prune.*oneshot|oneshot.*prune"):
        load_recipe(_write(tmp_path, "", extra="prune:\n  method: admm\n  targets: "
                                               "[{sparsity: 0.5}]\n"))
    with pytest.raises(ConfigError, match=r"--set oneshot.calibration.samples=0"):
        load_recipe(_write(tmp_path, ""), ["oneshot.calibration.samples=0"])


def _write(tmp_path, option: str, extra: str = ""):
    text = RECIPE % {"method": "admm", "retrain": extra}
    text = text.replace("  method: admm\n", "  method: admm\n" + option)
    path = tmp_path / "oneshot.yaml"
    path.write_text(text)
    return path


def test_a_scheme_the_method_cannot_solve_is_refused_before_any_training(tmp_path):
    path = tmp_path / "oneshot.yaml"
    path.write_text((RECIPE % {"method": "sparsegpt", "retrain": ""}).replace(
        'sparsity: 0.75}]', 'scheme: block, block: [4, 4], sparsity: 0.75}]'))
    with pytest.raises(ConfigError, match=r"oneshot.targets: .*sparsegpt.*block|"
                                          r"oneshot.targets: .*block.*sparsegpt"):
        run_recipe(load_recipe(path), tmp_path / "run", progress=False, echo=lambda _: None)
    assert not (tmp_path / "run" / "dense.pt").exists()
