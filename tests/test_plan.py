"""The plan: typed configs that round-trip, and every mistake one error with file, line and
key, found before any training (most before a model is built)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.cli import main
from prunekit.errors import ConfigError, TargetError
from prunekit.pipeline import Run
from prunekit.plan import PLAN_VERSION, Plan, PruneConfig
from prunekit.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DEFAULT_RECIPE = ROOT / "recipes" / "lenet5-fashion-admm.yaml"

BASE = """\
name: t
model: {name: lenet5}
data:
  name: synthetic
  options: {n: 64, n_test: 32}
  batch_size: 32
train: {epochs: 1}
prune:
  method: admm
  rho: 0.001
  train: {epochs: 1, optimizer: adam, lr: 0.001}
  targets:
    - layers: "fc*"
      sparsity: 0.5
    - layers: conv1
      sparsity: 0.5
retrain:
  epochs: 1
  lr: 0.01
quantize:
  method: admm
  bits: 4
  train: {epochs: 1}
  retrain: {epochs: 1, mode: progressive}
"""


def line_of(text: str, fragment: str) -> int:
    assert text.count(fragment) == 1, fragment
    return text[:text.index(fragment)].count("\n") + 1


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_round_trips(path):
    recipe = load_recipe(path)
    plan = recipe.plan
    again = Plan.from_dict(plan.to_dict())
    assert again == plan and again.to_dict() == plan.to_dict()
    # the recipe.yaml a run directory holds reads back as the same plan
    assert load_recipe(text=recipe.to_yaml()).plan == plan
    assert plan.version == PLAN_VERSION
    assert isinstance(plan.prune, PruneConfig) or plan.prune is None


def test_plan_holds_typed_configs_of_every_stage():
    plan = load_recipe(text=BASE).plan
    assert plan.data.batch_size == 32 and plan.model.name == "lenet5"
    assert plan.prune.method == "admm" and plan.prune.options == {"rho": 0.001}
    assert plan.quantize.bits == 4
    assert plan.training_stages() == [("train",), ("prune", "train"), ("retrain",),
                                      ("quantize", "train"), ("quantize", "retrain")]
    prune = plan.stage_train(("prune", "train"))
    assert prune.optimizer == "adam" and prune.lr == 0.001 and prune.seed == 0
    # quantized retraining's own keys (mode) are not training settings
    assert plan.stage_train(("quantize", "retrain")).epochs == 1


def test_later_stages_inherit_on_nan_unless_they_set_their_own():
    text = BASE.replace("train: {epochs: 1}\nprune:",
                        "train: {epochs: 1, on_nan: skip_batch}\nprune:")
    assert text != BASE
    plan = load_recipe(text=text).plan
    assert plan.stage_train(("train",)).on_nan == "skip_batch"
    assert plan.stage_train(("prune", "train")).on_nan == "skip_batch"
    assert plan.stage_train(("retrain",)).on_nan == "skip_batch"
    own = text.replace("retrain:\n  epochs: 1", "retrain:\n  on_nan: stop\n  epochs: 1")
    assert own != text
    assert load_recipe(text=own).plan.stage_train(("retrain",)).on_nan == "stop"


@pytest.mark.parametrize("old,new,key,message", [
    ("  epochs: 1\n  lr: 0.01", "  epochs: 1\n  lrr: 0.01", "retrain.lrr",
     "did you mean 'lr'"),
    ("      sparsity: 0.5\n    - layers: conv1", "      sparsity: 1.0\n    - layers: conv1",
     "prune.targets.0.sparsity", "[0, 1)"),
    ("      sparsity: 0.5\n    - layers: conv1", "      sparsity: -0.1\n    - layers: conv1",
     "prune.targets.0.sparsity", "[0, 1)"),
    ("    - layers: conv1\n      sparsity: 0.5", "    - layers: conv1\n      sparsty: 0.5",
     "prune.targets.1.sparsty", "did you mean 'sparsity'"),
    ("    - layers: conv1\n", "    - layers: conv1\n      scheme: blok\n", "prune.targets.1.scheme",
     "unknown scheme 'blok'"),
    ("    - layers: conv1\n", "    - layers: conv1\n      allocation: best\n",
     "prune.targets.1.allocation", "allocation must be one of"),
    ("    - layers: conv1\n      sparsity: 0.5", "    - layers: conv1\n      sparsity: no-table",
     "prune.targets.1.sparsity", "no-table"),
    ("    - layers: conv1\n", "    - layers: [conv1, 3]\n", "prune.targets.1.layers",
     "list of strings"),
    ("  rho: 0.001", "  rho: lots", "prune.rho", "must be a number"),
    ("  rho: 0.001", "  rhoo: 0.001", "prune.rhoo", "did you mean 'rho'"),
    ("  method: admm\n  rho", "  method: admam\n  rho", "prune.method", "unknown method"),
    ("  bits: 4", "  bits: 9", "quantize.bits", "2 to 8"),
    ("  bits: 4", "  bits: 4\n  rest: float8", "quantize.rest", "must be one of"),
    ("mode: progressive", "mode: sometimes", "quantize.retrain.mode", "must be one of"),
    ("  train: {epochs: 1}\n  retrain", "  train: {epochs: -1}\n  retrain",
     "quantize.train.epochs", "must be >= 0"),
    ("  batch_size: 32", "  batch_size: 0", "data.batch_size", "must be > 0"),
    ("  batch_size: 32", "  batch_size: 32\n  augment: true", "data.augment",
     "cifar10/cifar100 only"),
    ("  options: {n: 64, n_test: 32}", "  options: {n: 64, n_tset: 32}", "data.options",
     "n_tset"),
    ("  name: synthetic", "  name: imagenet", "data.name", "unknown data set"),
    ("name: t\n", "name: t\nversion: 2\n", "version", "version 1"),
    ("name: t\n", "name: t\neval: {batch_size: 10}\n", "eval", "data.test_batch_size"),
    ("  rho: 0.001", "  rho: 0.2\n  rho: 0.001", "prune.rho", "duplicate key (again on line"),
    ("mode: progressive}", "mode: ste, fix_fraction: 0.5}", "quantize.retrain.fix_fraction",
     "only with mode: progressive"),
], ids=["train-typo", "rate-1", "rate-negative", "rule-key-typo", "scheme", "allocation",
        "table", "layers-type", "option-type", "option-typo", "method", "bits", "rest",
        "mode", "stage-epochs", "batch", "augment", "data-option", "data-name", "version",
        "eval-removed", "duplicate-key", "unread-fix-fraction"])
def test_mistake_is_one_error_with_file_line_and_key(old, new, key, message):
    text = BASE.replace(old, new)
    assert text != BASE
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_recipe(text=text, path="r.yaml")
    assert time.perf_counter() - start < 1.0
    needle = next(s for s in new.split("\n") if key.split(".")[-1] in s)
    line = line_of(text, needle)
    assert str(caught.value).startswith(f"r.yaml:{line}: {key}: "), str(caught.value)
    assert message in str(caught.value)
    assert caught.value.key == tuple(key.split("."))


def test_sections_that_nothing_would_read_are_errors():
    with pytest.raises(ConfigError, match=r"^<recipe>:\d+: retrain: has nothing to retrain"):
        load_recipe(text=BASE, overrides=["prune=null", "quantize=null"])
    assert load_recipe(text=BASE, overrides=["prune=null", "retrain=null"])["retrain"] is None


def test_a_model_input_shape_other_than_the_datas_is_an_error_before_any_file_is_read(
        tmp_path):
    text = BASE.replace("name: synthetic", "name: fashion_mnist\n  root: /nonexistent")
    text = text.replace("  options: {n: 64, n_test: 32}\n", "")
    text = text.replace("{name: lenet5}", "{name: lenet5, input_shape: [3, 32, 32]}")
    run = Run(load_recipe(text=text, path="r.yaml"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"^r\.yaml:2: model\.input_shape: is \[3, 32, 32\], "
                                          r"but the examples of data 'fashion_mnist' are "
                                          r"\[1, 28, 28\]"):
        run.run()


def test_an_override_names_the_set_option():
    with pytest.raises(ConfigError, match=r"^--set prune.targets.0.sparsity=2: "
                                          r"prune.targets.0.sparsity: "):
        load_recipe(text=BASE, overrides=["prune.targets.0.sparsity=2"])


def test_check_plan_errors_name_the_rule_and_option_line(tmp_path, capsys):
    cases = [
        ("    - layers: conv1\n", "    - layers: conv9\n", "prune.targets.1", "conv9"),
        ("    - layers: conv1\n", "    - layers: conv1\n      scheme: block\n"
         "      block: [64, 8]\n", "prune.targets.1", "larger than the weight"),
        ("  rho: 0.001", "  rho: -1.0", "prune.rho", "rho must be > 0"),
        ("  rho: 0.001", "  rho: {fc9: 0.1, default: 0.1}", "prune.rho", "fc9"),
        ("  bits: 4", "  bits: {fc9: 4}", "quantize.bits", "fc9"),
    ]
    for old, new, key, message in cases:
        text = BASE.replace(old, new)
        path = tmp_path / "r.yaml"
        path.write_text(text)
        out = tmp_path / "run"
        assert main(["compress", str(path), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        first = [s for s in new.split("\n") if s][0]
        line = line_of(text, first)
        assert f"r.yaml:{line}: {key}" in err and message in err, err
        assert "Traceback" not in err
        assert not (out / "dense.pt").exists() and not (out / "ckpt").exists()


class ThreeClasses(nn.Module):
    """A model for the wrong number of classes (a user's own factory)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def three_classes():
    return ThreeClasses()


def wrong_input():
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))


@pytest.mark.parametrize("factory,message", [
    ("three_classes", "gives 3 scores per example but data 'synthetic' has 10 classes"),
    ("wrong_input", "does not take the inputs of data 'synthetic'"),
])
def test_a_model_that_does_not_fit_the_data_fails_before_training(factory, message, tmp_path):
    text = BASE.replace("{name: lenet5}", f"{{name: 'test_plan:{factory}', "
                                          f"input_shape: [1, 28, 28]}}")
    text = text.split("prune:")[0]
    recipe = load_recipe(text=text, path="r.yaml")
    run = Run(recipe, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=message) as caught:
        run.run()
    assert str(caught.value).startswith(f"r.yaml:{line_of(text, 'test_plan:')}: model.name")
    assert not (tmp_path / "run" / "dense.pt").exists()


def test_check_plan_leaves_the_model_unchanged():
    recipe = load_recipe(text=BASE)
    run = Run(recipe, "unused", progress=False)
    run.info = run_info(run)
    model = run.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run.check_plan(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_plan_builds_no_method(monkeypatch):
    """Method options are checked against the resolved targets without building a method
    (on a copy of the model, as before): they were checked when the plan was read."""
    from prunekit.methods import ADMM

    def refuse(*args, **kwargs):
        raise AssertionError("a method was built during the plan check")

    recipe = load_recipe(text=BASE)
    run = Run(recipe, "unused", progress=False)
    run.info = run_info(run)
    monkeypatch.setattr(ADMM, "__init__", refuse)
    run.check_plan(run.build_model())


def run_info(run: Run):
    from prunekit import data

    return data.dataset_info(run.recipe["data"]["name"], **run.data_options())


def test_default_recipe_plan_is_checked_within_a_second():
    """The shipped default recipe (Fashion-MNIST, not read: built-in data is described
    without its files), from reading the file to the end of the check against the model."""
    start = time.perf_counter()
    recipe = load_recipe(DEFAULT_RECIPE)
    run = Run(recipe, "unused", progress=False)
    run.info = run_info(run)
    run.check_plan(run.build_model())
    assert time.perf_counter() - start < 1.0


def test_target_errors_stay_target_errors():
    text = BASE.replace("    - layers: conv1\n", "    - layers: conv1\n      types: [Conv9d]\n")
    with pytest.raises(TargetError, match="unsupported layer type"):
        load_recipe(text=text)


def test_the_meta_twin_copies_no_values_and_keeps_tied_weights_tied():
    from prunekit.plan import meta_twin

    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4),
                          nn.Linear(4, 4, bias=False))
    model[2].weight = model[0].weight
    twin = meta_twin(model)
    assert all(t.is_meta for t in (*twin.parameters(), *twin.buffers()))
    assert twin[2].weight is twin[0].weight and not twin.training and model.training
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert twin(torch.zeros(3, 4, device="meta")).shape == (3, 4)


def test_a_start_checkpoint_of_another_model_is_a_plan_error(tmp_path):
    from prunekit import models
    from prunekit.files import save_checkpoint

    other = tmp_path / "other.pt"
    save_checkpoint({"state_dict": models.get("lenet5", num_classes=7).state_dict()}, other)
    text = BASE.replace("{name: lenet5}", f"{{name: lenet5, checkpoint: '{other}'}}")
    run = Run(load_recipe(text=text, path="r.yaml"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"^r\.yaml:2: model\.checkpoint: does not fit model "
                                          r"'lenet5': .*fc2\.weight is \(7, 500\) in the file"):
        run.run()
    assert not (tmp_path / "run" / "dense.pt").exists()


def test_a_section_given_as_a_bare_name_shows_the_mapping_it_should_be(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: mymodels:cnn\ndata: {name: synthetic}\n")
    with pytest.raises(ConfigError, match=r"r.yaml:1: model: must be a mapping, got the string "
                                          r"'mymodels:cnn'; write it as 'model: \{name: "
                                          r"mymodels:cnn\}'"):
        load_recipe(path)
