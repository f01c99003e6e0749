"""A run directory holds one run: a resume with other settings is refused naming the key, a
finished run is never overwritten unasked, and what each stage did is recorded (its settings
when it starts, the accuracy right after hardening, a warning when ADMM had not converged).
The CLI points run through a real ``prunekit`` subprocess on a model defined here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.errors import ConfigError
from prunekit.pipeline import run_recipe
from prunekit.recipe import load_recipe
from prunekit.run_directory import first_difference

MODELS = '''\
from torch import nn


def mlp(num_classes=4, input_shape=(1, 6, 6)):
    width = 1
    for n in input_shape:
        width *= n
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))
'''

RECIPE = """\
name: own
model: {name: "my_models:mlp"}
data:
  name: synthetic
  batch_size: 32
  options: {n: 256, n_test: 128, input_shape: [1, 6, 6], num_classes: 4}
train: {epochs: 1, lr: 0.05, progress: false}
prune:
  method: admm
  rho: %(rho)s
  train: {epochs: %(epochs)d, optimizer: adam, lr: 0.001, schedule: constant}
  targets: [{layers: "*", sparsity: 0.8}]
retrain: {epochs: 1, optimizer: adam, lr: 0.0005}
"""


def setup(tmp_path: Path, rho: float = 0.01, epochs: int = 1) -> Path:
    (tmp_path / "my_models.py").write_text(MODELS)
    recipe = tmp_path / "own.yaml"
    recipe.write_text(RECIPE % {"rho": rho, "epochs": epochs})
    return recipe


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})


def test_a_resume_with_other_settings_is_refused_naming_the_key(tmp_path):
    recipe = setup(tmp_path)
    first = cli(tmp_path, "compress", str(recipe), "--out", "run", "--no-progress")
    assert first.returncode == 0, first.stderr
    recorded = (tmp_path / "run" / "recipe.yaml").read_text()
    changed = cli(tmp_path, "compress", str(recipe), "--out", "run", "--resume",
                  "--set", "prune.train.epochs=3")
    assert changed.returncode == 2
    assert "prune.train.epochs was 1, now 3" in changed.stderr
    assert (tmp_path / "run" / "recipe.yaml").read_text() == recorded  # the record stays
    same = cli(tmp_path, "compress", str(recipe), "--out", "run", "--resume",
               "--set", "train.progress=true")  # how a run is shown may change
    assert same.returncode == 0, same.stderr
    assert "resume: stage prune is finished (pruned.pt)" in same.stdout


def test_a_finished_run_is_not_overwritten_without_force(tmp_path):
    recipe = setup(tmp_path)
    assert cli(tmp_path, "compress", str(recipe), "--out", "run").returncode == 0
    report = (tmp_path / "run" / "report.json").read_text()
    again = cli(tmp_path, "compress", str(recipe), "--out", "run")
    assert again.returncode == 2
    assert "already holds a finished run" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "run" / "report.json").read_text() == report
    forced = cli(tmp_path, "compress", str(recipe), "--out", "run", "--force",
                 "--set", "prune.targets.0.sparsity=0.5")
    assert forced.returncode == 0, forced.stderr
    assert "replaced the earlier run" in forced.stdout
    layers = json.loads((tmp_path / "run" / "report.json").read_text())["layers"]
    assert max(layer["sparsity"] for layer in layers) < 0.7


def test_each_stage_says_its_settings_and_records_its_accuracy(tmp_path, monkeypatch):
    recipe = setup(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    lines: list[str] = []
    report = run_recipe(load_recipe(recipe), tmp_path / "run", progress=False,
                        echo=lines.append)
    text = "\n".join(lines)
    assert "prune: epochs=1 optimizer=adam lr=0.001" in text
    assert "retrain: epochs=1 optimizer=adam lr=0.0005" in text
    assert "prune accuracy after hardening:" in text
    moments = [(r["stage"], r["when"]) for r in report["stage_accuracy"]]
    assert moments == [("dense", "end"), ("prune", "after hardening"), ("retrain", "end")]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["stage_accuracy"])
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["stage_accuracy"] == report["stage_accuracy"]


def test_admm_that_hardens_unconverged_says_what_to_change(tmp_path, monkeypatch):
    recipe = setup(tmp_path, rho=1e-4, epochs=1)
    monkeypatch.syspath_prepend(str(tmp_path))
    lines: list[str] = []
    report = run_recipe(load_recipe(recipe), tmp_path / "run", progress=False,
                        echo=lines.append)
    warning = next(line for line in lines if line.startswith("warning: ADMM hardened"))
    assert "relative primal residual" in warning and "prune.train.epochs" in warning
    assert report["extra"]["warnings"] == [warning[len("warning: "):]]


def test_first_difference_names_the_first_changed_key():
    before = {"train": {"epochs": 1, "progress": False}, "prune": {"targets": [{"s": 0.5}]}}
    assert first_difference(before, {"train": {"epochs": 1, "progress": True},
                                     "prune": {"targets": [{"s": 0.5}]}}) is None
    assert first_difference(before, {"train": {"epochs": 1.0, "progress": False},
                                     "prune": {"targets": [{"s": 0.7}]}}) == \
        ("prune.targets.0.s", 0.5, 0.7)
    assert first_difference({"a": True}, {"a": 1}) == ("a", True, 1)
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", None, 2)


def test_a_resume_into_an_empty_directory_just_runs(tmp_path, monkeypatch):
    recipe = setup(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "run").mkdir()
    report = run_recipe(load_recipe(recipe), tmp_path / "run", resume=True, progress=False,
                        echo=lambda _: None)
    assert report["accuracy"]["compressed"] is not None
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run_recipe(load_recipe(recipe), tmp_path / "run", progress=False, echo=lambda _: None)


def test_a_run_resolves_each_stage_once_and_traces_once(tmp_path, monkeypatch):
    """The plan check resolves the rules once (the method's dry run reuses its targets on a
    copy), the stage once more on the trained weights (global allocation reads them), and the
    model is traced for ``group_filter`` once for the whole run."""
    import prunekit.pipeline as pipeline
    import prunekit.targets.resolver as resolving

    calls = {"resolve": 0, "trace": 0}
    real_resolve, real_trace = pipeline.resolve, resolving.build_structure

    def counting_resolve(*args, **kwargs):
        calls["resolve"] += 1
        return real_resolve(*args, **kwargs)

    def counting_trace(*args, **kwargs):
        calls["trace"] += 1
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(pipeline, "resolve", counting_resolve)
    monkeypatch.setattr(resolving, "build_structure", counting_trace)
    recipe = setup(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = recipe.read_text().replace('targets: [{layers: "*", sparsity: 0.8}]',
                                      'updates_per_epoch: 2\n  targets: [{layers: "*", '
                                      'scheme: group_filter, sparsity: 0.5}]')
    recipe.write_text(text)
    run_recipe(load_recipe(recipe), tmp_path / "run", progress=False, echo=lambda _: None)
    assert calls == {"resolve": 2, "trace": 1}
