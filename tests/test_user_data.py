"""A user's own data set in a recipe: ``data.name: module:function``."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit import data
from prunekit.cli import main
from prunekit.errors import ConfigError, DataError, PrunekitError
from prunekit.recipe import load_recipe

MODULE = '''
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

CALLS = []


def tensors(n, classes, shape=(1, 12, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, *shape, generator=g) * 0.1
    x.view(n, -1)[torch.arange(n), y] += 3.0   # class k lights up pixel k: learnable
    return x, y


def datasets(n=192, classes=5):
    CALLS.append(n)
    x, y = tensors(n, classes)
    return {"train": TensorDataset(x[:128], y[:128]), "test": TensorDataset(x[128:], y[128:])}


class Named(Dataset):
    classes = ["cat", "dog", "emu"]

    def __init__(self, n):
        self.x, self.y = tensors(n, 3, shape=(2, 10))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def named():
    return Named(64), Named(32)


def loaders():
    x, y = tensors(96, 4)
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True)
    return train, DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32)


def explicit():
    x, y = tensors(40, 3)
    return {"train": TensorDataset(x, y), "test": TensorDataset(x, y), "num_classes": 7}


def broken():
    raise FileNotFoundError("/nowhere/train.npy")


def not_data():
    return 42


def pil_like():
    return [(object(), 1)], [(object(), 1)]


def float_labels():
    x = torch.zeros(4, 3)
    return TensorDataset(x, torch.zeros(4)), TensorDataset(x, torch.zeros(4))


def empty():
    x = torch.zeros(0, 3)
    return TensorDataset(x, x[:, 0].long()), TensorDataset(x, x[:, 0].long())


def shapes_differ():
    a, b = tensors(8, 2), tensors(8, 2, shape=(1, 10, 10))
    return TensorDataset(*a), TensorDataset(*b)
'''

RECIPE = """\
name: mine
seed: 1
model:
  name: lenet300
data:
  name: {spec}
  batch_size: 32
  test_batch_size: 64
  options: {options}
train: {{epochs: 2, lr: 0.05, progress: false}}
prune:
  method: magnitude
  targets: [{{layers: "*", sparsity: 0.5}}]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"userdata_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def write(tmp_path, spec, options="{}"):
    path = tmp_path / "mine.yaml"
    path.write_text(RECIPE.format(spec=spec, options=options))
    return path


def test_a_recipe_trains_and_prunes_on_the_users_datasets(tmp_path, user_module):
    path = write(tmp_path, f"{user_module}:datasets", "{n: 192}")
    out = tmp_path / "run"
    assert main(["compress", str(path), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["extra"]["dataset"] == f"{user_module}:datasets"
    # the class count (5) came from the labels, the input shape from the first example
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["fc1.weight"]["shape"][1] == 144 and layers["fc3.weight"]["shape"][0] == 5
    assert report["accuracy"]["dense"] > 0.5  # it learned the users' data, not noise
    module = __import__(user_module)
    assert module.CALLS == [192]  # described and loaded from one call


def test_prunekit_builds_the_loaders_so_a_sampler_can_be_set(user_module):
    train, test = data.get_loaders(f"{user_module}:datasets", batch_size=16, seed=3,
                                   limit_train=50)
    assert isinstance(train, DataLoader) and train.batch_size == 16
    assert len(train.dataset) == 50 and train.generator is not None
    assert isinstance(test.dataset, TensorDataset) and len(test.dataset) == 64
    info = data.dataset_info(f"{user_module}:datasets")
    assert info.input_shape == (1, 12, 12) and info.num_classes == 5


@pytest.mark.parametrize("function,shape,classes", [
    ("named", (2, 10), 3),        # len(dataset.classes), int labels
    ("explicit", (1, 12, 12), 7),  # the returned mapping's num_classes wins
    ("loaders", (1, 12, 12), 4),
])
def test_shape_and_class_count_are_discovered(user_module, function, shape, classes):
    info = data.dataset_info(f"{user_module}:{function}")
    assert info.input_shape == shape and info.num_classes == classes


def test_returned_loaders_are_used_as_they_are(user_module):
    module = __import__(user_module)
    train, test = data.get_loaders(f"{user_module}:loaders", batch_size=7)
    assert train.batch_size == 16 and test.batch_size == 32  # the user's own
    assert isinstance(train, DataLoader) and hasattr(module, "loaders")
    with pytest.raises(ConfigError, match="limit_train/limit_test do not apply"):
        data.get_loaders(f"{user_module}:loaders", limit_train=3)


@pytest.mark.parametrize("function,error,message", [
    ("broken", DataError, "failed: FileNotFoundError: /nowhere/train.npy"),
    ("not_data", ConfigError, "returned int"),
    ("pil_like", ConfigError, "must be (input tensor, class index)"),
    ("float_labels", ConfigError, "label must be a class index"),
    ("empty", ConfigError, "the train set is empty"),
    ("shapes_differ", ConfigError, "input shapes differ"),
    ("nothing_here", ConfigError, "has no 'nothing_here'"),
])
def test_bad_user_data_is_one_clear_error_before_training(tmp_path, user_module, capsys,
                                                          function, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.dataset_info(f"{user_module}:{function}")
    out = tmp_path / "run"
    assert main(["compress", str(write(tmp_path, f"{user_module}:{function}")),
                 "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "dense.pt").exists()


def test_the_plan_checks_the_functions_arguments_and_what_does_not_apply(tmp_path, user_module):
    with pytest.raises(ConfigError, match=r"mine\.yaml:9: data\.options: .*unknown option.*'m'"):
        load_recipe(write(tmp_path, f"{user_module}:datasets", "{m: 1}"))
    with pytest.raises(ConfigError, match=r"--set data.root=/x: data\.root: does not apply"):
        load_recipe(write(tmp_path, f"{user_module}:datasets"), ["data.root=/x"])
    with pytest.raises(ConfigError, match="no module named 'no_such_module_here'"):
        load_recipe(write(tmp_path, "no_such_module_here:load"))


def test_a_model_that_does_not_fit_the_users_data_fails_before_training(tmp_path, user_module):
    path = write(tmp_path, f"{user_module}:datasets")
    path.write_text(path.read_text().replace("name: lenet300",
                                             "name: lenet300\n  kwargs: {num_classes: 3}"))
    with pytest.raises(PrunekitError, match="gives 3 scores per example but data .* has 5"):
        from prunekit.pipeline import run_recipe

        run_recipe(load_recipe(path), tmp_path / "run", progress=False, echo=lambda s: None)
    assert not (tmp_path / "run" / "dense.pt").exists()


def test_load_dataset_gives_one_split(user_module):
    train = data.load_dataset(f"{user_module}:datasets", train=True)
    test = data.load_dataset(f"{user_module}:datasets", train=False)
    assert len(train) == 128 and len(test) == 64
    assert torch.is_tensor(train[0][0])


def test_the_users_training_set_shards_over_ranks_like_the_built_in_ones(user_module):
    """Under torchrun the loader prunekit built is split by its own sampler: every rank a
    disjoint share of the user's dataset, together the one-process epoch."""
    from prunekit.training.distributed import ShardSampler

    train, _ = data.get_loaders(f"{user_module}:datasets", batch_size=16, seed=2)
    order = list(train.batch_sampler.sampler)
    train.generator.manual_seed(5)
    one_process = list(train.batch_sampler.sampler)
    shards = []
    for rank in range(2):
        train.generator.manual_seed(5)
        shards.append(list(ShardSampler(train.dataset, 2, rank, generator=train.generator,
                                        shuffle=True, pad=True)))
    assert sorted(shards[0] + shards[1]) == sorted(order) == list(range(128))
    assert sorted(shards[0] + shards[1]) == sorted(one_process)
    assert not set(shards[0]) & set(shards[1])
