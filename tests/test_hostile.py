"""Hostile and malformed input: recipes, target rules, models and files.

Whatever a user (or a damaged disk, or a stranger's file) hands prunekit, the answer is
either a correct result or one :class:`~prunekit.errors.PrunekitError` naming the problem;
never a traceback from inside torch, never code run from a file, and never a model left
half changed by an operation that failed.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from compress_helpers import masks_of
from prunekit import artifacts, data, methods, models
from prunekit.cli import main
from prunekit.data.cifar import read_cifar_batch, safe_unpickle
from prunekit.data.idx import parse_idx
from prunekit.errors import DataError, PrunekitError, TargetError
from prunekit.files import load_checkpoint, save_checkpoint
from prunekit.pipeline import Run
from prunekit.plan import Plan
from prunekit.recipe import load_recipe
from prunekit.schemes import count_to_prune
from prunekit.targets import resolve

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
BOUNDED = settings(max_examples=30, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Bit for bit (NaN equal to NaN): a failed operation must leave every tensor as it was."""
    after = model.state_dict()
    return after.keys() == before.keys() and all(
        after[k].is_meta or (after[k].dtype == before[k].dtype
                             and torch.equal(bits(after[k]), bits(before[k])))
        for k in before)


# ----------------------------------------------------------------------- recipes
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=True),
    st.text(max_size=6), st.sampled_from(["fc*", "*", "conv1", "1e-3", "admm", "block"]),
    st.lists(st.integers(-2, 3), max_size=3), st.just({}), st.just({"layers": "*"}),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def recipe_dict(path: Path) -> dict:
    d = yaml.safe_load(path.read_text())
    d["data"] = {"name": "synthetic", "options": {"n": 64, "n_test": 32}}
    return d


def key_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from key_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from key_paths(v, (*prefix, i))


@st.composite
def mutated_recipes(draw):
    """A shipped recipe with one or two keys replaced by junk, renamed or removed."""
    d = recipe_dict(draw(st.sampled_from(RECIPES)))
    for _ in range(draw(st.integers(1, 2))):
        paths = list(key_paths(d))
        path = paths[draw(st.integers(0, len(paths) - 1))]
        node = d
        for k in path[:-1]:
            node = node[k]
        action = draw(st.sampled_from(["replace", "replace", "rename", "remove"]))
        if action == "replace" or isinstance(node, list):
            node[path[-1]] = draw(JUNK)
        elif action == "rename":
            node[f"{path[-1]}{draw(st.sampled_from(['x', '_', 's']))}"] = node.pop(path[-1])
        else:
            del node[path[-1]]
    return d


@BOUNDED
@given(d=mutated_recipes())
def test_a_mutated_recipe_loads_or_is_one_located_error(d):
    try:
        text = yaml.safe_dump(d)
    except yaml.YAMLError:
        return
    try:
        recipe = load_recipe(text=text, path="r.yaml")
    except PrunekitError as exc:
        assert str(exc).startswith("r.yaml"), str(exc)
        return
    again = Plan.from_dict(recipe.plan.to_dict()).to_dict()
    assert yaml.safe_dump(again) == yaml.safe_dump(recipe.data)  # (NaN-safe equality)
    run = Run(recipe, "unused", progress=False)
    try:
        run.info = data.dataset_info(recipe["data"]["name"], **run.data_options())
        model = run.build_model()
    except PrunekitError as exc:
        assert str(exc).startswith("r.yaml"), str(exc)
        return
    before = snapshot(model)
    try:
        run.check_plan(model)
    except PrunekitError as exc:
        assert str(exc).startswith("r.yaml"), str(exc)
    assert unchanged(model, before)


OVERRIDE_KEYS = ["prune.rho", "prune.targets.0.sparsity", "prune.targets.9.x", "prune.targets.x",
                 "data", "data.options.n", "train.lr", "a.b", ".", "prune.targets", "model.name",
                 "seed", "quantize.bits", "retrain.epochs", "prune.train.epochs", "version",
                 "model.kwargs.x"]
OVERRIDE_VALUES = ["", "null", "1", "-1", "0.5", "[1, 2]", "{a: 1}", "[", "{", "1e9999", ".nan",
                   "!!python/object/apply:os.system [ls]", "x: y: z", "&a [*a]", "'a:b'"]


@BOUNDED
@given(sets=st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS), st.sampled_from(["=", ":", ""]),
                               st.sampled_from(OVERRIDE_VALUES)), min_size=1, max_size=3))
def test_hostile_overrides_apply_or_are_one_error(sets):
    overrides = ["".join(parts) for parts in sets]
    try:
        recipe = load_recipe(RECIPES[0], overrides)
    except PrunekitError as exc:
        assert str(exc)
        return
    assert recipe.plan.to_dict() == recipe.data


@pytest.mark.parametrize("text,message", [
    ("- just\n- a list\n", "must be a mapping of sections"),
    ("model: {name: lenet5}\ndata: {name: synthetic}\n\ttrain: 1\n", "not valid YAML"),
    ("model: {name: lenet5}\ndata: {name: synthetic}\ntrain: [1, 2]\n", "train: must be a"),
    ("model: {name: lenet5}\ndata: {name: synthetic, options: null}\nseed: -1\n",
     "seed: must be a non-negative integer"),
    ("model: {name: lenet5}\ndata: {name: synthetic}\nprune: {method: admm, targets: []}\n",
     "prune.targets: must be a non-empty list"),
    ("model: {name: lenet5}\ndata: {name: synthetic}\n"
     "prune: {method: admm, targets: [fc1]}\n", "rule 0 must be a dict"),
    ("model: {name: lenet5}\ndata: {name: synthetic}\n"
     "prune: {method: admm, targets: [{sparsity: .nan}]}\n", "[0, 1)"),
    ("model: {name: lenet5}\ndata: {name: synthetic}\n"
     "prune: {method: admm, targets: [{sparsity: 0.5, scheme: nm, n: 5, m: 4}]}\n", "nm"),
    ("model: {name: lenet5, kwargs: [1]}\ndata: {name: synthetic}\n", "model.kwargs: expected"),
    ("!!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ("model: &m {name: lenet5, kwargs: *m}\ndata: {name: synthetic}\n",
     "used inside its own value"),
])
def test_malformed_recipe_text_is_one_error(text, message):
    with pytest.raises(PrunekitError, match=None) as caught:
        load_recipe(text=text, path="r.yaml")
    assert message in str(caught.value)


# ----------------------------------------------------------------------- models
def tied() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 6, bias=False))
    model[2].weight = model[0].weight
    return model


def non_contiguous() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    model[0].weight = nn.Parameter(torch.randn(6, 4).t())
    assert not model[0].weight.is_contiguous()
    return model


def with_nan() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 4))
    with torch.no_grad():
        model[0].weight[1, 2] = float("nan")
    return model


MODELS = {
    "mlp": lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)),
    "conv": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8),
                                  nn.Conv2d(8, 4, 1)),
    "gru": lambda: nn.GRU(4, 6),
    "empty": nn.Sequential,
    "no-prunable-layer": lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)),
    "tied": tied,
    "non-contiguous": non_contiguous,
    "half": lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 3)).half(),
    "bfloat16": lambda: nn.Sequential(nn.Linear(6, 4)).to(torch.bfloat16),
    "meta": lambda: nn.Sequential(nn.Linear(6, 4)).to("meta"),
    "nan-weight": with_nan,
    "empty-weight": lambda: nn.Sequential(nn.Linear(0, 4)),
}
SCHEMES = ["irregular", "filter", "channel", "column", "block", "pattern", "nm", "unify",
           "quant", "filter+irregular", "no-such-scheme"]


@st.composite
def rules(draw):
    rule = {}
    layers = draw(st.sampled_from([None, "*", "0", "1", "2", "nosuch", ["0", "2"], 3, ""]))
    if layers is not None:
        rule["layers"] = layers
    rule["scheme"] = draw(st.sampled_from(SCHEMES))
    sparsity = draw(st.one_of(st.floats(-0.5, 1.5), st.sampled_from(
        [None, True, "x", float("nan"), {"0": 0.5}, {"*": 2}, "lenet5-admm-71x"])))
    if sparsity is not None:
        rule["sparsity"] = sparsity
    if rule["scheme"] in ("block", "unify"):
        rule["block"] = draw(st.sampled_from([[2, 2], [1, 4], [100, 100], [0, 1], [1], "8x4"]))
    if rule["scheme"] == "unify":
        rule["unified"] = draw(st.sampled_from([0.2, 1.5]))
    if rule["scheme"] == "quant":
        rule["bits"] = draw(st.sampled_from([4, 1, 9, "x"]))
    if draw(st.booleans()):
        rule["allocation"] = draw(st.sampled_from(["global", "uniform", "best"]))
    if draw(st.integers(0, 9)) == 0:
        rule[draw(st.sampled_from(["sparsty", "layer", "junk"]))] = 1
    return rule


SANE_SCHEMES = {"irregular": {}, "filter": {}, "column": {}, "block": {"block": [2, 2]},
                "unify": {"block": [1, 2], "unified": 0.2}, "filter+irregular": {}}


@st.composite
def sane_rules(draw):
    """Rules a careful user writes, so that the odd models themselves get exercised."""
    scheme = draw(st.sampled_from(sorted(SANE_SCHEMES)))
    rule = {"scheme": scheme, **SANE_SCHEMES[scheme],
            "sparsity": draw(st.floats(0.0, 0.7 if scheme == "unify" else 0.95))}
    if draw(st.booleans()):
        rule["layers"] = draw(st.sampled_from(["*", "0", "2"]))
    if scheme in ("irregular", "filter", "column") and draw(st.booleans()):
        rule["allocation"] = "global"
    return rule


@settings(BOUNDED, max_examples=80)
@given(kind=st.sampled_from(sorted(MODELS)),
       rule_list=st.lists(st.one_of(sane_rules(), sane_rules(), rules()), min_size=1,
                          max_size=2),
       method=st.sampled_from(["admm", "magnitude", "reweighted", "group_lasso", "gradual",
                              "random"]))
def test_rules_on_odd_models_prune_or_fail_cleanly_and_leave_the_model(kind, rule_list, method):
    model = MODELS[kind]()
    before = snapshot(model)
    options = {"end_epoch": 2} if method == "gradual" else {}
    try:
        targets = resolve(model, rule_list)
        pruner = methods.get(method, model, targets, **options)
    except PrunekitError:
        assert unchanged(model, before)
        return
    pruner.penalty()
    pruner.after_step()
    pruner.end_epoch()
    masks = masks_of(pruner.freeze())
    for target in targets:  # what was asked is what the weights hold
        if target.scheme_name == "irregular" and target.sparsity is not None:
            kept = int(masks[target.name].sum())
            pruned = min(count_to_prune(target.numel, target.sparsity), target.numel - 1)
            assert kept == target.numel - pruned
            assert int(torch.count_nonzero(target.param.detach())) <= kept


@pytest.mark.parametrize("kind,rule,message", [
    ("empty", {"sparsity": 0.5}, "the model has no prunable layers"),
    ("no-prunable-layer", {"sparsity": 0.5}, "the model has no prunable layers"),
    ("mlp", {"layers": "conv*", "sparsity": 0.5}, "'conv*' matches no layer"),
    ("mlp", {"layers": "0", "sparsity": 1.0}, "must be a number in [0, 1)"),
    ("mlp", {"layers": "0", "sparsity": -0.2}, "must be a number in [0, 1)"),
    ("mlp", {"layers": "0", "scheme": "block", "block": [8, 8], "sparsity": 0.5},
     "larger than the weight in both dims"),
    ("nan-weight", {"sparsity": 0.5}, "holds NaN or inf values"),
    ("empty-weight", {"sparsity": 0.5}, "is empty"),
    ("meta", {"sparsity": 0.5, "allocation": "global"}, "meta device"),
])
def test_impossible_rules_name_the_problem(kind, rule, message):
    model = MODELS[kind]()
    before = snapshot(model)
    with pytest.raises(TargetError) as caught:
        resolve(model, [rule])
    assert message in str(caught.value)
    assert unchanged(model, before)


def test_meta_weights_resolve_but_a_method_refuses_them():
    model = MODELS["meta"]()
    targets = resolve(model, [{"sparsity": 0.5}])  # shapes are enough to plan
    assert [t.name for t in targets] == ["0.weight"]
    with pytest.raises(TargetError, match="meta device"):
        methods.get("admm", model, targets)


def test_a_tied_weight_is_one_target_and_stays_tied():
    model = tied()
    targets = resolve(model, [{"sparsity": 0.5}])
    assert [t.name for t in targets] == ["0.weight"]
    masks_of(methods.get("magnitude", model, targets).freeze())
    assert model[2].weight is model[0].weight
    assert int(torch.count_nonzero(model[0].weight)) == 18


@pytest.mark.parametrize("kind", ["non-contiguous", "half", "bfloat16"])
def test_unusual_weights_are_pruned_exactly(kind):
    model = MODELS[kind]()
    dtype = next(model.parameters()).dtype
    targets = resolve(model, [{"sparsity": 0.5}])
    masks_of(methods.get("admm", model, targets).freeze())
    for t in targets:
        assert t.param.dtype == dtype
        assert int(torch.count_nonzero(t.param)) == t.numel - round(0.5 * t.numel)


# ----------------------------------------------------------------------- files
def damage(blob: bytes, how: str, at: int, noise: bytes) -> bytes:
    at %= max(1, len(blob))
    if how == "truncate":
        return blob[:at]
    if how == "flip":
        return blob[:at] + bytes([blob[at] ^ (noise[0] | 1)]) + blob[at + 1:]
    return blob[:at] + noise + blob[at:]


DAMAGE = dict(how=st.sampled_from(["truncate", "flip", "insert"]), at=st.integers(0, 10**6),
              noise=st.binary(min_size=1, max_size=8))
IDX = b"\0\0\x08\x03" + struct.pack(">III", 3, 4, 4) + bytes(range(48))
CIFAR = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, protocol=2)


@BOUNDED
@given(**DAMAGE)
def test_damaged_idx_is_a_data_error(how, at, noise):
    try:
        array = parse_idx(damage(IDX, how, at, noise), "f")
    except DataError:
        return
    assert array.size * array.itemsize + 4 + 4 * array.ndim == len(damage(IDX, how, at, noise))


@pytest.mark.parametrize("dims,extra", [((2**32 - 1,) * 3, 16), ((2**31, 2**31, 4), 0),
                                        ((2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**8), 0),
                                        ((1,) * 255, 0)])
def test_idx_headers_that_promise_too_much_are_refused(dims, extra):
    """Sizes whose product overflows 64 bits must not wrap round to a file that "fits"."""
    header = b"\0\0\x08" + bytes([len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(header + b"\0" * extra, "f")


@BOUNDED
@given(**DAMAGE)
def test_damaged_cifar_is_a_data_error(how, at, noise, tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    path.write_bytes(damage(CIFAR, how, at, noise))
    try:
        images, labels = read_cifar_batch(path, "labels")
    except DataError:
        return
    assert images.shape[1:] == (3, 32, 32) and len(images) == len(labels)


class Payload:
    """A pickle that would run a command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_crafted_cifar_pickle_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "ran"
    blob = pickle.dumps({"data": Payload(marker), "labels": [0]}, protocol=protocol)
    with pytest.raises(DataError, match="refusing to load global"):
        safe_unpickle(blob, "f")
    assert not marker.exists()


def test_a_crafted_checkpoint_runs_nothing_and_the_run_stops_before_training(tmp_path, capsys):
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"state_dict": Payload(marker)}, buffer)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(DataError):
        load_checkpoint(evil)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: lenet300, checkpoint: {evil}}}\n"
                      f"data: {{name: synthetic, options: {{n: 32, n_test: 16}}}}\n")
    assert main(["compress", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not marker.exists()


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = models.get("lenet300")
    methods.get("magnitude", model, resolve(model, [{"sparsity": 0.8}])).freeze()
    spec = {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28], "num_classes": 10}
    artifacts.save(model, directory / "m.pkz", {}, spec=spec)
    save_checkpoint({"state_dict": model.state_dict()}, directory / "c.pt")
    return (directory / "m.pkz").read_bytes(), (directory / "c.pt").read_bytes()


@BOUNDED
@given(**DAMAGE)
def test_a_damaged_model_file_is_refused_and_the_model_left_alone(saved_files, how, at, noise):
    model = models.get("lenet300")
    before = snapshot(model)
    try:
        artifacts.load(damage(saved_files[0], how, at, noise), model=model)
    except PrunekitError:
        assert unchanged(model, before)


@BOUNDED
@given(**DAMAGE)
def test_a_damaged_checkpoint_is_refused(saved_files, how, at, noise, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "c.pt"
    blob = damage(saved_files[1], how, at, noise)
    path.write_bytes(blob)
    try:
        loaded = load_checkpoint(path)
    except DataError:
        return
    assert set(loaded["state_dict"]) == set(models.get("lenet300").state_dict())


def test_a_user_model_factory_that_fails_is_one_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "badnet.py").write_text("def build():\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: 'badnet:build', input_shape: [4]}\n"
                      "data: {name: synthetic, options: {n: 32, n_test: 16, input_shape: [4]}}\n")
    assert main(["compress", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "badnet:build" in err and "boom" in err and "Traceback" not in err


def test_copy_of_state_helpers_is_exact():
    """The comparison the tests above rely on catches a single changed bit."""
    model = MODELS["mlp"]()
    before = snapshot(model)
    assert unchanged(model, before)
    with torch.no_grad():
        model[0].weight.view(-1)[0] = torch.nextafter(model[0].weight.view(-1)[0],
                                                     torch.tensor(2.0))
    assert not unchanged(model, before)
    assert unchanged(copy.deepcopy(model), snapshot(model))


@pytest.mark.parametrize("other", [{"num_classes": 7}, {"input_shape": (1, 32, 32)}])
def test_a_stage_artifact_of_another_model_is_refused_and_the_model_left_alone(tmp_path,
                                                                               other):
    path = tmp_path / "pruned.pt"
    artifacts.save_stage(path, "prune", models.get("lenet5", **other), {}, [], {})
    model = models.get("lenet5")
    before = snapshot(model)
    with pytest.raises(DataError, match="does not fit this model"):
        artifacts.load_stage(path, "prune", model)
    assert unchanged(model, before)
