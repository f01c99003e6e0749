"""The model file (.pkz): exact round trips for every constraint kind, the storage
breakdown, index encodings, and refusal of anything damaged, foreign or off its set."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch

from compress_helpers import (
    SCHEMES,
    assert_inside,
    assert_same_weights,
    blob_data,
    params,
    rule,
    targets_for,
    tiny_net,
    train_steps,
    weights,
)
from prunekit import artifacts, models
from prunekit.constraints import MaskEnforcer
from prunekit.errors import DataError
from prunekit.targets import freeze, resolve

LENET_SPEC = {"name": "lenet5", "kwargs": {}, "input_shape": [1, 28, 28], "num_classes": 10}
GRU_KWARGS = {"input_size": 8, "hidden_size": 8, "num_classes": 4}


def lenet(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return models.lenet5(**kwargs)


def gru(seed: int = 0):
    torch.manual_seed(seed)
    return models.gru_classifier(**GRU_KWARGS)


def bn_net(seed: int = 0):
    """A small conv net with BatchNorm whose running statistics are not the defaults."""
    model = tiny_net(seed, batchnorm=True)
    x, y = blob_data(64, seed=seed)
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.05), x, y)
    return model.eval()


#: (model factory, example input, layer pattern, cases)
MODELS = {
    "lenet5": (lenet, torch.randn(2, 1, 28, 28), ["conv*", "fc*"],
               ["irregular+quant", "filter", "unify", "quant-pow2-channel"]),
    "bn-net": (bn_net, blob_data(4, seed=5)[0], ["conv", "fc"], sorted(SCHEMES)),
    "gru": (gru, torch.randn(2, 5, 8), "*",
            ["irregular", "block", "nm", "quant", "quant-channel", "irregular+quant"]),
}
CASES = [(m, c) for m, (_, _, _, cases) in MODELS.items() for c in cases]


def compressed(model_name: str, case: str):
    factory, example, layers, _ = MODELS[model_name]
    model = factory()
    frozen = freeze(model, resolve(model, [rule(case, layers)]))
    return model.eval(), frozen, example


@pytest.mark.parametrize("model_name,case", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_round_trip_is_exact(model_name, case):
    model, frozen, example = compressed(model_name, case)
    data = artifacts.pack(model, frozen, meta={"case": case})
    fresh = MODELS[model_name][0](seed=1)
    loaded = artifacts.load(data, model=fresh)
    assert loaded.model is fresh and loaded.meta == {"case": case}
    assert_same_weights(weights(model), weights(fresh))
    with torch.no_grad():
        assert torch.equal(model(example), fresh.eval()(example))
    assert loaded.constraints.keys() == frozen.keys()
    for name, c in frozen.items():
        again = loaded.constraints[name]
        assert (again.kind, again.bits) == (c.kind, c.bits)
        assert torch.equal(again.mask, c.mask)
        if c.kind == "levels":
            assert again.level_set == c.level_set
            assert torch.equal(again.scale, c.scale)
        assert_inside(params(fresh)[name], again)
    storage = artifacts.storage(data)
    assert storage["file"] == len(data) == sum(storage["parts"].values())
    assert loaded.storage == storage


def test_a_zoo_model_is_rebuilt_from_its_spec_and_saved_sizes_match_the_disk(tmp_path):
    model, frozen, example = compressed("lenet5", "irregular+quant")
    path = artifacts.save(model, tmp_path / "m.pkz", frozen, spec=LENET_SPEC,
                          recipe="name: x\n", meta={"accuracy_dense": 0.5})
    loaded = artifacts.load(path)
    with torch.no_grad():
        assert torch.equal(model(example), loaded.model.eval()(example))
    assert loaded.recipe == "name: x\n" and loaded.spec["name"] == "lenet5"
    sizes = artifacts.storage(path)
    assert sizes["file"] == os.path.getsize(path) == sum(sizes["parts"].values())
    assert sizes["parts"]["recipe"] > 0 and sizes["parts"]["header"] == 16
    assert sizes == loaded.storage == artifacts.storage(path.read_bytes())
    # a quantized irregular model is far smaller than its float32 weights
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert os.path.getsize(path) < dense_bytes / 10


@pytest.mark.parametrize("case,layer,encoding", [
    ("filter", "fc.weight", "rows"),
    ("block", "fc.weight", "colbands"),
    ("unify", "fc.weight", "unified"),
])
def test_structured_masks_pick_their_index_encoding(case, layer, encoding):
    model, frozen, _ = compressed("bn-net", case)
    stored = artifacts.storage(artifacts.pack(model, frozen))["layers"]
    assert stored[layer]["encoding"] == encoding


def test_pattern_pruning_takes_kernel_patterns():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3))
    frozen = freeze(model, resolve(model, [{"layers": "0", "scheme": "pattern"}]))
    stored = artifacts.storage(artifacts.pack(model, frozen))["layers"]["0.weight"]
    assert stored["encoding"] == "kernels"


def test_high_sparsity_irregular_takes_gap_coded_indices():
    model = tiny_net()
    frozen = freeze(model, resolve(model, [{"layers": "fc", "sparsity": 0.97}]))
    stored = artifacts.storage(artifacts.pack(model, frozen))["layers"]["fc.weight"]
    assert stored["encoding"] in ("delta", "rice", "subdelta", "subrice")
    assert stored["parts"]["index"] < 512 // 8  # smaller than a bitmap of the layer


# ------------------------------------------------------------------------ refusal
@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    model, frozen, _ = compressed("bn-net", "irregular+quant")
    path = tmp_path_factory.mktemp("file") / "small.pkz"
    artifacts.save(model, path, frozen)
    return path


def test_every_flipped_byte_is_a_data_error(small_file):
    data = small_file.read_bytes()
    step = max(1, len(data) // 200)
    positions = sorted({*range(0, len(data), step), len(data) - 1})
    for i in positions:
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        with pytest.raises(DataError):
            artifacts.load(bytes(damaged), model=tiny_net(batchnorm=True))


def test_truncated_files_are_data_errors(small_file, tmp_path):
    data = small_file.read_bytes()
    for size in (0, 3, 11, 40, len(data) // 2, len(data) - 4, len(data) - 1):
        cut = tmp_path / f"cut{size}.pkz"
        cut.write_bytes(data[:size])
        with pytest.raises(DataError):
            artifacts.load(cut, model=tiny_net(batchnorm=True))
    with pytest.raises(DataError):
        artifacts.storage(data[:-1])


@pytest.fixture(scope="module")
def lenet_file() -> bytes:
    model, frozen, _ = compressed("lenet5", "filter")
    return artifacts.pack(model, frozen, spec=LENET_SPEC)


@pytest.mark.parametrize("other", [lambda: lenet(3, num_classes=5),
                                   lambda: models.resnet20(), lambda: tiny_net(3)],
                         ids=["lenet5-5-classes", "resnet20", "tiny"])
def test_a_file_for_another_architecture_leaves_the_model_unchanged(other, lenet_file):
    data = lenet_file
    target = other()
    before = weights(target)
    with pytest.raises(DataError, match="another architecture"):
        artifacts.load(data, model=target)
    assert_same_weights(before, weights(target))


def test_a_factory_named_in_the_file_is_never_imported(tmp_path, monkeypatch):
    module = "prunekit_trap_factory"
    (tmp_path / f"{module}.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_suffix('.ran').write_text('x')\n"
        "from prunekit.models import lenet5 as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model, frozen, _ = compressed("lenet5", "filter")
    data = artifacts.pack(model, frozen, spec={**LENET_SPEC, "name": f"{module}:build"})
    with pytest.raises(DataError, match="factory.*model="):
        artifacts.load(data)
    assert module not in sys.modules and not (tmp_path / f"{module}.ran").exists()
    assert artifacts.load(data, model=lenet(1)).spec["name"] == f"{module}:build"
    assert module not in sys.modules


def test_pack_refuses_a_weight_outside_its_constraint():
    for case, where in (("irregular", "a pruned entry"), ("quant", "off its level")):
        model, frozen, _ = compressed("bn-net", case)
        with torch.no_grad():
            w = model.fc.weight
            if where == "a pruned entry":
                w[~frozen["fc.weight"].mask] = 0.5
            else:
                w[0, 0] += 0.01 * float(frozen["fc.weight"].scale[0])
        with pytest.raises(DataError, match=r"fc.weight.*not inside its \w+ constraint"):
            artifacts.pack(model, frozen)
    with pytest.raises(DataError, match="nope.weight"):
        artifacts.pack(model, {"nope.weight": frozen["fc.weight"]})


def test_pack_refuses_unfinished_straight_through_retraining_until_finish():
    model = bn_net()
    frozen = freeze(model, targets_for(model, "quant"), mode="progressive")
    enforcer = MaskEnforcer(model, frozen, torch.optim.SGD(model.parameters(), lr=0.1))
    train_steps(model, enforcer.optimizer, *blob_data(64), after_step=enforcer.after_step)
    with pytest.raises(DataError, match="finish"):
        artifacts.pack(model, frozen)
    enforcer.finish()
    enforcer.close()
    artifacts.load(artifacts.pack(model, frozen), model=tiny_net(batchnorm=True))


def test_the_file_is_not_a_pickle_and_loading_never_unpickles(small_file, monkeypatch):
    data = small_file.read_bytes()
    assert data[:4] == b"PKZ1"
    with pytest.raises(Exception) as info:
        torch.load(small_file, weights_only=False)
    assert not isinstance(info.value, AssertionError)
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)

    def refuse(*args, **kwargs):
        raise AssertionError("the model file must not be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = artifacts.load(small_file, model=tiny_net(batchnorm=True))
    assert loaded.constraints
