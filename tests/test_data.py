"""Tests of prunekit.data on files generated in tmp_path (no network, ever)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import prunekit.data as pdata
from prunekit.data import locate as locate_mod
from prunekit.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}
IDX_CODES[np.float64] = 0x0E


# --------------------------------------------------------------------------- file writers


def idx_bytes(array: np.ndarray) -> bytes:
    code = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_mnist(
    directory: Path,
    n_train: int = 12,
    n_test: int = 6,
    gz: bool = True,
    label: int | None = None,
    pixel: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Four IDX files; ``label``/``pixel`` make every label/pixel that constant."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        if pixel is not None:
            images[:] = pixel
        labels = rng.integers(0, 10, n).astype(np.uint8)
        if label is not None:
            labels[:] = label
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


def cifar_pickle(data: np.ndarray, labels: dict[str, list[int]]) -> bytes:
    batch = {"batch_label": "generated", "data": data, "filenames": ["x.png"] * len(data)}
    batch.update(labels)
    return pickle.dumps(batch, protocol=2)


def write_cifar10(directory: Path, per_batch: int = 3, seed: int = 0, rgb=None) -> np.ndarray:
    """Five training batches and a test batch; returns all training images [N, 3, 32, 32]."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        if rgb is not None:
            images[:] = np.asarray(rgb, dtype=np.uint8)[None, :, None, None]
        labels = rng.integers(0, 10, per_batch).tolist()
        data = images.reshape(per_batch, -1)
        (directory / name).write_bytes(cifar_pickle(data, {"labels": labels}))
        if name != "test_batch":
            train.append((images, labels))
    return train


def write_cifar100(directory: Path, n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("train", "test"):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = rng.integers(0, 20, n).tolist()
        labels = {"fine_labels": fine, "coarse_labels": coarse}
        (directory / name).write_bytes(cifar_pickle(images.reshape(n, -1), labels))
        out[name] = (images, fine, coarse)
    return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty $HOME, no $PRUNEKIT_DATA, an empty system root: only what a test writes exists."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(locate_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(locate_mod, "SYSTEM_ROOT", tmp_path / "system")

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"unexpected network access: {url}")

    monkeypatch.setattr(locate_mod, "fetch", no_network)
    return tmp_path


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((4, 5, 3)) * 50).astype(dtype)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, gz)
    out = pdata.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 1  # writable


def test_idx_labels_round_trip(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    out = pdata.read_idx(write_idx(tmp_path / "l-idx1-ubyte", labels, gz=True))
    np.testing.assert_array_equal(out, labels)


def test_idx_gzip_detected_by_content(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(pdata.read_idx(path), array)
    fake = tmp_path / "raw.gz"
    fake.write_bytes(idx_bytes(array))
    with pytest.raises(DataError, match="not gzip"):
        pdata.read_idx(fake)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    data = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))[:-100]
    path = tmp_path / ("t.gz" if gz else "t")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="truncated") as err:
        pdata.read_idx(path)
    assert str(path) in str(err.value) and "download=True" in str(err.value)


def test_idx_truncated_header_and_trailing_bytes(tmp_path):
    header_cut = tmp_path / "h"
    header_cut.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="header"):
        pdata.read_idx(header_cut)
    trailing = tmp_path / "tr"
    trailing.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)) + b"xx")
    with pytest.raises(DataError, match="2 unexpected bytes"):
        pdata.read_idx(trailing)


def test_idx_bad_magic_and_dtype(tmp_path):
    good = idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x50\x4b" + good[2:])
    with pytest.raises(DataError, match="magic") as err:
        pdata.read_idx(bad)
    assert str(bad) in str(err.value)
    code = tmp_path / "code"
    code.write_bytes(good[:2] + b"\x07" + good[3:])
    with pytest.raises(DataError, match="dtype code 0x07"):
        pdata.read_idx(code)


def test_idx_corrupt_gzip(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(np.arange(4000, dtype=np.int32))))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(bytes(packed[: len(packed) // 2]))
    flipped = tmp_path / "flipped.gz"
    packed[len(packed) // 2] ^= 0xFF
    flipped.write_bytes(bytes(packed))
    for path in (cut, flipped):
        with pytest.raises(DataError, match="corrupt gzip") as err:
            pdata.read_idx(path)
        assert str(path) in str(err.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        pdata.read_idx(tmp_path / "nope")


def test_image_label_count_mismatch(env):
    root = env / "data"
    write_mnist(root, n_train=5)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match="count mismatch") as err:
        pdata.load_dataset("mnist", root=root)
    assert "5 images" in str(err.value) and "4 labels" in str(err.value)


def test_labels_out_of_range(env):
    root = env / "data"
    write_mnist(root, label=10)
    with pytest.raises(DataError, match="outside"):
        pdata.load_dataset("mnist", root=root)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("layout", ["parent", "direct"])
def test_cifar10_round_trip(tmp_path, layout):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    root = tmp_path if layout == "parent" else tmp_path / "cifar-10-batches-py"
    images, labels = pdata.read_cifar(root, train=True)
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.concatenate([b[0] for b in batches]))
    assert labels.dtype == np.int64 and labels.tolist() == sum((b[1] for b in batches), [])
    test_images, _ = pdata.read_cifar(root, train=False)
    assert test_images.shape == (3, 3, 32, 32)
    with pytest.raises(ConfigError, match="coarse"):
        pdata.read_cifar(root, train=True, coarse=True)


def test_cifar100_round_trip(tmp_path):
    written = write_cifar100(tmp_path / "cifar-100-python")
    images, fine = pdata.read_cifar(tmp_path, train=True)
    np.testing.assert_array_equal(images, written["train"][0])
    assert fine.tolist() == written["train"][1]
    _, coarse = pdata.read_cifar(tmp_path, train=False, coarse=True)
    assert coarse.tolist() == written["test"][2]
    ds = pdata.load_dataset("cifar100", root=tmp_path, train=False, coarse=True)
    assert ds.info.num_classes == 20 and ds.targets.tolist() == written["test"][2]


def test_cifar_truncated_pickle(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar10(directory)
    path = directory / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DataError, match="corrupt") as err:
        pdata.read_cifar(tmp_path, train=True)
    assert str(path) in str(err.value)


def test_cifar_wrong_contents(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar10(directory)
    (directory / "test_batch").write_bytes(
        cifar_pickle(np.zeros((2, 100), dtype=np.uint8), {"labels": [0, 1]})
    )
    with pytest.raises(DataError, match="uint8"):
        pdata.read_cifar(tmp_path, train=False)
    (directory / "test_batch").write_bytes(
        cifar_pickle(np.zeros((2, 3072), dtype=np.uint8), {"labels": [0, 1, 2]})
    )
    with pytest.raises(DataError, match="count mismatch"):
        pdata.read_cifar(tmp_path, train=False)
    (directory / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataError, match="no 'labels' entry"):
        pdata.read_cifar(tmp_path, train=False)


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle ran code",))


def test_cifar_pickle_refuses_code(tmp_path, capsys):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar10(directory)
    (directory / "test_batch").write_bytes(pickle.dumps({"data": _Exploit(), "labels": [0]}))
    with pytest.raises(DataError, match="refusing to load global builtins.print"):
        pdata.read_cifar(tmp_path, train=False)
    assert "pickle ran code" not in capsys.readouterr().out


# --------------------------------------------------------------------------- look-up


def test_lookup_order_root_env_cache(env, monkeypatch):
    root, env_dir = env / "root", env / "envdata"
    cache = env / "home" / ".cache" / "prunekit"
    write_mnist(root / "mnist", label=1)
    write_mnist(env_dir, label=2)  # files directly in the root
    write_mnist(cache / "MNIST" / "raw", label=3, gz=False)  # torchvision's layout
    monkeypatch.setenv("PRUNEKIT_DATA", str(env_dir))
    assert set(pdata.load_dataset("mnist", root=root).targets.tolist()) == {1}
    assert set(pdata.load_dataset("mnist").targets.tolist()) == {2}
    monkeypatch.delenv("PRUNEKIT_DATA")
    assert set(pdata.load_dataset("mnist").targets.tolist()) == {3}
    # A root is the only place searched: one without the files never falls through to
    # another copy
    with pytest.raises(DataError, match="not found in root"):
        pdata.load_dataset("mnist", root=env / "empty")


def test_an_explicit_root_is_never_replaced_by_another_copy(env, capsys):
    """The system copy exists, but data.root names a directory that does not: an error
    naming that directory, never the system copy read silently."""
    write_mnist(env / "system" / "fashion-mnist", label=6)
    missing = env / "no" / "such" / "dir"
    with pytest.raises(DataError) as err:
        pdata.get_loaders("fashion_mnist", root=missing)
    message = str(err.value)
    assert f"not found in root {missing} (no such directory)" in message
    assert "leave root out" in message and "download=True" in message
    assert str(env / "system") not in message
    # without a root the system copy is used, and a line says so
    train, test = pdata.get_loaders("fashion_mnist")
    assert set(train.dataset.targets.tolist()) == {6}
    assert capsys.readouterr().err == (f"prunekit: data fashion_mnist: files read from "
                                       f"{env / 'system' / 'fashion-mnist'}\n")


def test_a_root_given_is_where_a_download_goes(env, monkeypatch):
    """download=True with a root fetches into that root, not the user cache."""
    written = {}

    def fake_download(name, root=None):
        written["target"] = locate_mod.writable_root(root)
        write_mnist(written["target"] / "mnist", label=7)
        return written["target"]

    monkeypatch.setattr(locate_mod, "download_dataset", fake_download)
    ds = pdata.load_dataset("mnist", root=env / "mine", download=True)
    assert written["target"] == env / "mine" and set(ds.targets.tolist()) == {7}


def test_lookup_named_subdirectory_before_root_itself(env):
    root = env / "shared"
    write_mnist(root, label=4)
    write_mnist(root / "FashionMNIST" / "raw", label=5)
    assert set(pdata.load_dataset("fashion-mnist", root=root).targets.tolist()) == {5}
    assert set(pdata.load_dataset("mnist", root=root).targets.tolist()) == {4}


def test_lookup_system_location(env):
    write_mnist(env / "system" / "fashion-mnist", label=6)
    assert pdata.locate_dataset("fashion_mnist") == env / "system" / "fashion-mnist"
    assert set(pdata.load_dataset("FashionMNIST", train=False).targets.tolist()) == {6}


def test_lookup_cifar_subdirectory(env):
    write_cifar10(env / "data" / "cifar10" / "cifar-10-batches-py")
    ds = pdata.load_dataset("cifar-10", root=env / "data")
    assert len(ds) == 15 and ds.inputs.shape == (15, 3, 32, 32)


def test_missing_data_message(env, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(env / "envdata"))
    with pytest.raises(DataError) as err:
        pdata.load_dataset("fashion_mnist", train=False)
    msg = str(err.value)
    cache = env / "home" / ".cache" / "prunekit"
    for place in (env / "envdata", cache, env / "system" / "fashion-mnist"):
        assert str(place) in msg
    assert "t10k-images-idx3-ubyte" in msg and "FashionMNIST/raw/" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download=True" in msg and "root=" in msg
    with pytest.raises(DataError) as err:
        pdata.load_dataset("cifar100", root=env / "mine")
    assert "www.cs.toronto.edu" in str(err.value) and "apt-get" not in str(err.value)


# --------------------------------------------------------------------------- normalisation


def test_idx_normalisation_statistics(env):
    write_mnist(env / "d", pixel=51)
    for name in ("mnist", "fashion_mnist", "kmnist"):
        ds = pdata.load_dataset(name, root=env / "d")
        info = pdata.dataset_info(name)
        expected = (51 / 255 - info.mean[0]) / info.std[0]
        assert ds.inputs.dtype == torch.float32 and ds.inputs.shape == (12, 1, 28, 28)
        torch.testing.assert_close(ds.inputs, torch.full_like(ds.inputs, expected))


def test_idx_normalisation_of_random_pixels(env):
    written = write_mnist(env / "d", n_train=50, seed=3)
    ds = pdata.load_dataset("mnist", root=env / "d")
    raw = written["train"][0].astype(np.float64) / 255
    back = ds.inputs.double() * 0.3081 + 0.1307
    assert back.mean().item() == pytest.approx(raw.mean(), abs=1e-5)
    np.testing.assert_allclose(back.squeeze(1).numpy(), raw, atol=1e-5)
    assert ds.targets.dtype == torch.int64
    assert ds.targets.tolist() == written["train"][1].tolist()


def test_cifar_per_channel_normalisation(tmp_path):
    rgb = (10, 128, 250)
    write_cifar10(tmp_path / "cifar-10-batches-py", rgb=rgb)
    ds = pdata.load_dataset("cifar10", root=tmp_path)
    info = pdata.dataset_info("cifar10")
    for c in range(3):
        expected = (rgb[c] / 255 - info.mean[c]) / info.std[c]
        torch.testing.assert_close(ds.inputs[:, c], torch.full_like(ds.inputs[:, c], expected))


# --------------------------------------------------------------------------- loaders


def _first_labels(loader, batches=3):
    out = []
    for i, (_, y) in enumerate(loader):
        if i == batches:
            break
        out.append(y)
    return torch.cat(out).tolist()


def test_loaders_shapes_limits_and_determinism(env):
    write_mnist(env / "d", n_train=40, n_test=9, seed=5)
    train, test = pdata.get_loaders(
        "mnist", root=env / "d", batch_size=8, test_batch_size=4, limit_train=30, limit_test=7
    )
    assert len(train.dataset) == 30 and len(test.dataset) == 7
    x, y = next(iter(train))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert [len(yb) for _, yb in test] == [4, 3]
    assert torch.equal(torch.cat([yb for _, yb in test]), test.dataset.targets)

    def epoch(seed):
        loader, _ = pdata.get_loaders("mnist", root=env / "d", batch_size=8, seed=seed)
        return torch.cat([xb.flatten(1) for xb, _ in loader]), loader

    first, loader = epoch(0)
    again, _ = epoch(0)
    other, _ = epoch(1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Each epoch visits every example once, in a new order drawn from the same generator.
    next_epoch = torch.cat([xb.flatten(1) for xb, _ in loader])
    assert not torch.equal(first, next_epoch)
    every = loader.dataset.inputs.flatten(1).sort(0).values
    assert torch.equal(first.sort(0).values, every)
    assert torch.equal(next_epoch.sort(0).values, every)
    loader.generator.manual_seed(0)  # what a resumed run does at the start of an epoch
    assert torch.equal(torch.cat([xb.flatten(1) for xb, _ in loader]), first)


def test_loader_argument_errors(env):
    with pytest.raises(ConfigError, match="batch_size"):
        pdata.get_loaders("synthetic", batch_size=0)
    with pytest.raises(ConfigError, match="limit_train"):
        pdata.get_loaders("synthetic", limit_train=-1)
    with pytest.raises(ConfigError, match="augment"):
        pdata.get_loaders("synthetic", augment=True)
    with pytest.raises(ConfigError, match="unknown option.*n_layers"):
        pdata.get_loaders("mnist", n_layers=3)


def window(image, dy, dx, flip, h=5, w=6):
    crop = image[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop


def test_random_crop_flip_is_a_shifted_window():
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(16, 2, 5, 6)
    fill = (-1.5, 2.5)
    out = pdata.random_crop_flip(batch, padding=2, fill=fill, generator=gen)
    assert out.shape == batch.shape
    padded = torch.empty(16, 2, 9, 10)
    padded[:, 0], padded[:, 1] = fill
    padded[:, :, 2:7, 2:8] = batch
    flips = 0
    for i in range(16):
        matches = [
            (dy, dx, f)
            for dy in range(5)
            for dx in range(5)
            for f in (0, 1)
            if torch.equal(window(padded[i], dy, dx, f), out[i])
        ]
        assert matches, f"image {i} is not a padded crop of its input"
        flips += matches[0][2]
    assert 0 < flips < 16


def test_cifar_augmented_loader_is_seeded(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=8)

    def first_batch(seed, augment):
        opts = dict(batch_size=40, seed=seed, augment=augment)
        train, _ = pdata.get_loaders("cifar10", root=tmp_path, **opts)
        return next(iter(train))

    x1, y1 = first_batch(0, True)
    x2, y2 = first_batch(0, True)
    plain, y_plain = first_batch(0, False)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(y1, y_plain) and not torch.equal(x1, plain)
    assert x1.shape == (40, 3, 32, 32)


# --------------------------------------------------------------------------- synthetic


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; more only contend on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_logistic(train, test, steps=300):
    torch.manual_seed(0)
    x, y = train.inputs.flatten(1), train.targets
    model = torch.nn.Linear(x.shape[1], train.info.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        pred = model(test.inputs.flatten(1)).argmax(1)
    return (pred == test.targets).float().mean().item()


@pytest.mark.parametrize(
    "shape,classes,noise", [((1, 8, 8), 10, 3.0), ((12, 3), 5, 2.0), ((20,), 4, 1.5)]
)
def test_synthetic_is_learnable(shape, classes, noise, one_thread):
    opts = dict(input_shape=shape, num_classes=classes, seed=3, noise=noise)
    train = pdata.load_dataset("synthetic", n=600, **opts)
    test = pdata.load_dataset("synthetic", train=False, n_test=300, **opts)
    chance = 1 / classes
    accuracy = _train_logistic(train, test)
    assert accuracy > chance + 0.5 * (1 - chance), accuracy


def test_synthetic_determinism_and_shapes():
    a = pdata.SyntheticClassification(64, (7, 4), 3, seed=1)
    b = pdata.SyntheticClassification(64, (7, 4), 3, seed=1)
    c = pdata.SyntheticClassification(64, (7, 4), 3, seed=2)
    t = pdata.SyntheticClassification(64, (7, 4), 3, seed=1, train=False)
    assert a.inputs.shape == (64, 7, 4) and a.inputs.dtype == torch.float32
    assert a.targets.dtype == torch.int64 and torch.bincount(a.targets).tolist() == [22, 21, 21]
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.inputs, t.inputs)
    assert a.info.input_shape == (7, 4) and a.info.num_classes == 3
    opts = dict(n=32, input_shape=[2, 6, 6], num_classes=4)
    train, test = pdata.get_loaders("synthetic", batch_size=16, seed=4, n_test=8, **opts)
    x, y = next(iter(train))
    assert x.shape == (16, 2, 6, 6) and len(test.dataset) == 8
    same, _ = pdata.get_loaders("synthetic", seed=4, **opts)
    assert torch.equal(train.dataset.inputs, same.dataset.inputs)
    with pytest.raises(ConfigError, match="input_shape"):
        pdata.SyntheticClassification(8, (0, 3), 2)
    with pytest.raises(ConfigError, match="num_classes"):
        pdata.SyntheticClassification(8, (3,), 1)


# --------------------------------------------------------------------------- info


def test_dataset_info_names_and_aliases():
    for alias in ("fashion-mnist", "FashionMNIST", "fashion_mnist", "Fashion MNIST"):
        assert pdata.dataset_info(alias).name == "fashion_mnist"
    info = pdata.dataset_info("cifar-10")
    assert info.input_shape == (3, 32, 32) and info.num_classes == 10
    assert info.mean == (0.4914, 0.4822, 0.4465) and info.std == (0.2470, 0.2435, 0.2616)
    assert pdata.dataset_info("kmnist").mean == (0.1918,)
    assert pdata.dataset_info("cifar100", coarse=True).num_classes == 20
    syn = pdata.dataset_info("synthetic", input_shape=[3, 8, 8], num_classes=4)
    assert syn.input_shape == (3, 8, 8) and syn.num_classes == 4 and syn.mean == (0.0,) * 3
    with pytest.raises(ConfigError) as err:
        pdata.dataset_info("imagenet")
    for name in ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "synthetic"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="coarse"):
        pdata.dataset_info("cifar10", coarse=True)


# --------------------------------------------------------------------------- download


def _serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Replace the fetcher by one serving ``files`` by base name; returns the URLs asked for."""
    asked: list[str] = []

    def fake_fetch(url, *args, **kwargs):
        asked.append(url)
        return files[url.rsplit("/", 1)[-1]]

    monkeypatch.setattr(locate_mod, "fetch", fake_fetch)
    return asked


def _mnist_files(tmp_path) -> dict[str, bytes]:
    src = tmp_path / "src"
    write_mnist(src, seed=9)
    return {p.name: p.read_bytes() for p in src.iterdir()}


def _publish(monkeypatch, name: str, files: dict[str, bytes]) -> None:
    """Point the data set's checksums at ``files`` (the real ones belong to the real data)."""
    resources = tuple(
        replace(r, md5=locate_mod.md5_hex(files[r.filename])) for r in locate_mod.RESOURCES[name]
    )
    monkeypatch.setitem(locate_mod.RESOURCES, name, resources)


def test_download_verifies_and_writes(env, monkeypatch):
    files = _mnist_files(env)
    _publish(monkeypatch, "mnist", files)
    asked = _serve(monkeypatch, files)
    root = env / "root"
    ds = pdata.load_dataset("mnist", root=root, download=True)
    assert len(ds) == 12 and len(asked) == 4
    assert all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for u in asked)
    saved = sorted(p.name for p in (root / "mnist").iterdir())
    assert saved == sorted(files)
    assert all((root / "mnist" / n).read_bytes() == files[n] for n in files)
    pdata.load_dataset("mnist", root=root, train=False, download=True)
    assert len(asked) == 4  # present files are not fetched again


def test_download_checksum_failure_leaves_nothing(env, monkeypatch):
    files = _mnist_files(env)
    _publish(monkeypatch, "mnist", files)
    bad = dict(files)
    name = "train-images-idx3-ubyte.gz"
    bad[name] = files[name][:-10] + b"0123456789"
    _serve(monkeypatch, bad)
    root = env / "root"
    with pytest.raises(DataError, match="checksum mismatch") as err:
        pdata.load_dataset("mnist", root=root, download=True)
    assert name in str(err.value)
    leftovers = [p.name for p in root.rglob("*") if p.is_file()]
    assert name not in leftovers
    assert not [n for n in leftovers if n.endswith(".tmp")]


def test_download_network_error(env, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(locate_mod, "fetch", offline)
    with pytest.raises(DataError, match="could not download .*no route to host"):
        pdata.load_dataset("kmnist", root=env / "root", download=True)
    assert not list((env / "root").rglob("*.gz"))


def test_download_goes_to_first_writable_root(env, monkeypatch):
    files = _mnist_files(env)
    _publish(monkeypatch, "fashion_mnist", files)
    _serve(monkeypatch, files)
    blocker = env / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    monkeypatch.setenv("PRUNEKIT_DATA", os.pathsep.join([str(blocker / "sub"),
                                                         str(env / "envdata")]))
    pdata.load_dataset("fashion_mnist", download=True)
    assert (env / "envdata" / "fashion_mnist" / "train-images-idx3-ubyte.gz").is_file()
    # a root given is the only place a download may go
    with pytest.raises(DataError, match="no writable directory.*not-a-dir"):
        pdata.load_dataset("fashion_mnist", root=blocker / "sub", download=True)


def _cifar_archive(tmp_path) -> bytes:
    write_cifar10(tmp_path / "src" / "cifar-10-batches-py", per_batch=2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


def test_download_cifar_archive(env, monkeypatch):
    archive = _cifar_archive(env)
    files = {"cifar-10-python.tar.gz": archive}
    _publish(monkeypatch, "cifar10", files)
    asked = _serve(monkeypatch, files)
    ds = pdata.load_dataset("cifar10", root=env / "root", train=False, download=True)
    assert len(ds) == 2 and asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert (env / "root" / "cifar-10-batches-py" / "data_batch_5").is_file()
    _serve(monkeypatch, {"cifar-10-python.tar.gz": archive[:-50]})
    with pytest.raises(DataError, match="checksum mismatch"):
        pdata.download_dataset("cifar10", root=env / "other")
    assert not list((env / "other").rglob("*_batch*"))


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)
    train = pdata.load_dataset("fashion_mnist")
    test = pdata.load_dataset("fashion_mnist", train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.inputs.shape == (60000, 1, 28, 28) and test.inputs.shape == (10000, 1, 28, 28)
    assert abs(train.inputs.mean().item()) < 0.01
    assert train.inputs.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.bincount(train.targets).tolist() == [6000] * 10
