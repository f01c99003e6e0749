"""The model zoo: parameter counts, shapes, gradients, the registry and user factories."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from torch import nn

from prunekit import models
from prunekit.errors import ConfigError
from prunekit.models.resnet import PadShortcut

IMAGE_MODELS = ["lenet5", "lenet300", "vgg16", "resnet20", "resnet56", "resnet18", "mobilenetv2"]
SEQUENCE_MODELS = ["gru_classifier", "lstm_classifier"]
MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_weights(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batches of two gain nothing from threads, and on a busy machine the thread pool's
    synchronisation costs seconds per deep model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- parameter counts


def test_lenet5_is_the_20_50_500_caffe_net():
    model = models.get("lenet5")
    assert n_params(model) == 431_080
    assert n_weights(model) == 430_500  # the papers' "430.5K weights"
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if "weight" in name}
    assert shapes == {
        "conv1.weight": (20, 1, 5, 5),
        "conv2.weight": (50, 20, 5, 5),
        "fc1.weight": (500, 800),
        "fc2.weight": (10, 500),
    }


def test_lenet300_is_784_300_100_10():
    model = models.get("lenet300")
    assert n_params(model) == 266_610
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if "weight" in name}
    assert shapes == {"fc1.weight": (300, 784), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}


def cifar_resnet_params(n: int, shortcut: str, num_classes: int = 10) -> int:
    """Parameter count of He et al.'s CIFAR ResNet with ``n`` blocks a stage, by hand."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, 16, 3) + bn(16)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if cin != width and shortcut == "B":
                total += conv(cin, width, 1) + bn(width)
            cin = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize(
    ("name", "n", "paper_millions"), [("resnet20", 3, 0.27), ("resnet56", 9, 0.85)]
)
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet_counts_match_the_paper(name, n, paper_millions, shortcut):
    count = n_params(models.get(name, shortcut=shortcut))
    assert count == cifar_resnet_params(n, shortcut)
    # He et al. (Table 6) print counts to two decimals in millions, so one unit of the last
    # printed digit (0.01M) bounds the rounding; option B's projections add only 2,752.
    assert abs(count - paper_millions * 1e6) <= 0.01e6


def test_imagenet_form_counts_match_torchvision():
    # torchvision's published counts: resnet18 11,689,512; mobilenet_v2 3,504,872.
    resnet = models.get("resnet18", num_classes=1000, input_shape=(3, 224, 224))
    assert n_params(resnet) == 11_689_512
    mobilenet = models.get("mobilenetv2", num_classes=1000, small_input=False)
    assert n_params(mobilenet) == 3_504_872


def test_vgg16_has_13_bn_convs_and_one_classifier_layer():
    model = models.get("vgg16")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 13
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    # 13 convs with bias (torchvision's VGG-16 features: 14,714,688), 13 BNs, 512 -> 10
    bn_params = sum(2 * m.num_features for m in bns)
    assert n_params(model) == 14_714_688 + bn_params + 5_130


# ---------------------------------------------------------------- forward and backward


def alternative_kwargs(name: str) -> tuple[dict, tuple[int, ...]]:
    """Options that move a model to its other data shape, and that shape."""
    if name in SEQUENCE_MODELS:
        return {"input_size": 5, "num_layers": 2, "bidirectional": True}, (20, 5)
    alt = CIFAR if models.default_input_shape(name) == MNIST else MNIST
    return {"input_shape": alt}, alt


@pytest.mark.parametrize("name", IMAGE_MODELS + SEQUENCE_MODELS)
def test_forward_shape_at_default_and_alternative_input(name):
    model = models.get(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *models.default_input_shape(name))).shape == (2, 7)
        kwargs, alt = alternative_kwargs(name)
        assert models.default_input_shape(name, **kwargs) == alt
        model = models.get(name, num_classes=7, **kwargs).eval()
        assert model(torch.randn(2, *alt)).shape == (2, 7)
        if name in SEQUENCE_MODELS:  # any sequence length works
            assert model(torch.randn(2, 3, alt[1])).shape == (2, 7)


@pytest.mark.parametrize("name", IMAGE_MODELS + SEQUENCE_MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = models.get(name).train()
    x = torch.randn(2, *models.default_input_shape(name))
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_lenet5_derives_fc1_from_the_input_shape():
    model = models.get("lenet5", input_shape=CIFAR)
    # 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -pool-> 5, times 50 channels
    assert model.fc1.in_features == 50 * 5 * 5
    assert model.conv1.in_channels == 3
    assert models.get("lenet5", in_channels=3).fc1.in_features == 800  # keeps 28x28


def test_lenet_rejects_inputs_it_was_not_built_for():
    with pytest.raises(ConfigError, match=r"lenet5 .*\[2, 3, 32, 32\].*input_shape"):
        models.get("lenet5")(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="too small"):
        models.get("lenet5", input_shape=(1, 12, 12))
    lenet300 = models.get("lenet300")
    assert lenet300(torch.randn(2, 784)).shape == (2, 10)  # flattened images are fine
    with pytest.raises(ConfigError, match="lenet300"):
        lenet300(torch.randn(2, 3 * 32 * 32))


def test_small_input_stem_is_chosen_by_input_size():
    small = models.get("resnet18")
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert models.get("resnet18", input_shape=(3, 96, 96)).conv1.kernel_size == (7, 7)
    assert models.get("resnet18", small_input=False).conv1.kernel_size == (7, 7)
    assert models.get("mobilenetv2").features[0][0].stride == (1, 1)
    assert models.get("mobilenetv2", small_input=False).features[0][0].stride == (2, 2)


def test_mobilenetv2_width_multiplier_scales_every_layer():
    half = models.get("mobilenetv2", width_mult=0.5)
    assert half.features[0][0].out_channels == 16  # 32 * 0.5
    assert half.classifier[1].in_features == 1280  # the head never shrinks below 1280
    assert n_params(half) < n_params(models.get("mobilenetv2")) / 2


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    block = models.get("resnet20").layer2[0]
    assert isinstance(block.downsample, PadShortcut)
    assert isinstance(models.get("resnet20", shortcut="B").layer2[0].downsample, nn.Sequential)


@pytest.mark.parametrize(("name", "gates"), [("gru_classifier", 3), ("lstm_classifier", 4)])
def test_rnn_weights_are_named_prunable_parameters(name, gates):
    model = models.get(name, input_size=6, hidden_size=8, num_layers=2, bidirectional=True)
    params = dict(model.named_parameters())
    assert params["rnn.weight_ih_l0"].shape == (gates * 8, 6)
    assert params["rnn.weight_hh_l0_reverse"].shape == (gates * 8, 8)
    assert params["rnn.weight_ih_l1"].shape == (gates * 8, 16)  # both directions feed layer 1
    assert model.fc.in_features == 16


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_rnn_pooling_reads_the_right_time_steps(name):
    x = torch.randn(3, 9, 16)
    bi = models.get(name, hidden_size=8, bidirectional=True).eval()
    out, _ = bi.rnn(x)
    # forward direction after the last step, backward direction after the first step
    expected = bi.fc(torch.cat([out[:, -1, :8], out[:, 0, 8:]], dim=1))
    torch.testing.assert_close(bi(x), expected)
    mean = models.get(name, hidden_size=8, pool="mean").eval()
    out, _ = mean.rnn(x)
    torch.testing.assert_close(mean(x), mean.fc(out.mean(dim=1)))


def test_rnn_rejects_wrong_feature_count():
    with pytest.raises(ConfigError, match=r"gru_classifier.*\[batch, any, 16\].*input_size"):
        models.get("gru_classifier")(torch.randn(2, 5, 3))
    with pytest.raises(ConfigError, match="contradicts"):
        models.get("gru_classifier", input_size=4, input_shape=(10, 5))
    with pytest.raises(ConfigError, match="num_layers >= 2"):
        models.get("lstm_classifier", dropout=0.5)


# ---------------------------------------------------------------- registry


def test_available_lists_the_zoo():
    assert models.available() == sorted(IMAGE_MODELS + SEQUENCE_MODELS)


def test_default_input_shapes():
    assert models.default_input_shape("lenet5") == MNIST
    assert models.default_input_shape("resnet20") == CIFAR
    assert models.default_input_shape("gru_classifier") == (20, 16)
    assert models.default_input_shape("lenet5", in_channels=3) == (3, 28, 28)
    assert models.default_input_shape("lstm_classifier", input_size=40) == (20, 40)


def test_unknown_name_lists_the_available_models():
    with pytest.raises(ConfigError, match="unknown model 'lenet6'") as info:
        models.get("lenet6")
    for name in models.available():
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="unknown model"):
        models.default_input_shape("alexnet")


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match=r"'lenet5'.*'num_clases'.*accepted:.*num_classes"):
        models.get("lenet5", num_clases=10)
    with pytest.raises(ConfigError, match="'small_input'"):
        models.get("resnet20", small_input=True)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("lenet5", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("resnet20", {"num_classes": "ten"}, "num_classes"),
        ("vgg16", {"num_classes": True}, "num_classes"),
        ("resnet56", {"shortcut": "C"}, "shortcut must be one of"),
        ("mobilenetv2", {"width_mult": -1}, "width_mult"),
        ("resnet18", {"input_shape": [3, 32]}, "input_shape must be 3 positive integers"),
        ("resnet18", {"in_channels": 1, "input_shape": [3, 32, 32]}, "contradicts"),
        ("gru_classifier", {"bidirectional": "yes"}, "bidirectional must be true or false"),
        ("lstm_classifier", {"pool": "max"}, "pool must be one of"),
    ],
)
def test_bad_option_values_are_config_errors(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        models.get(name, **kwargs)


def test_yaml_style_lists_are_accepted_as_shapes():
    model = models.get("lenet5", input_shape=[3, 32, 32])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# ---------------------------------------------------------------- from_spec


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a module of model factories into tmp_path and make it importable."""
    name = "user_nets_for_prunekit_tests"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(width=4, num_classes=3):
                return nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))

            def not_a_model():
                return 42

            NOT_CALLABLE = 1

            class Nets:
                @staticmethod
                def mlp(num_classes=2):
                    return nn.Linear(5, num_classes)
            """
        )
    )
    (tmp_path / "user_broken_for_prunekit_tests.py").write_text("import missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    for module in (name, "user_broken_for_prunekit_tests"):
        sys.modules.pop(module, None)


def test_from_spec_builds_zoo_models():
    model = models.from_spec("lenet5", num_classes=5)
    assert model.fc2.out_features == 5


def test_from_spec_calls_a_user_factory(user_module):
    model = models.from_spec(f"{user_module}:tiny", width=6, num_classes=4)
    assert model(torch.randn(2, 6)).shape == (2, 4)
    assert models.from_spec(f"{user_module}:Nets.mlp").out_features == 2


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("no_such_pkg_for_prunekit.nets:build", {}, "no module named 'no_such_pkg_for_prunekit'"),
        ("{m}:missing", {}, "has no 'missing'"),
        ("{m}:NOT_CALLABLE", {}, "not callable"),
        ("{m}:not_a_model", {}, "returned int, not a torch.nn.Module"),
        ("{m}:tiny", {"depth": 3}, r"unknown option\(s\) 'depth'; accepted: width, num_classes"),
        ("{m}:", {}, "must look like 'package.module:function'"),
        ("user_broken_for_prunekit_tests:f", {}, "importing .* failed.*missing_dependency_xyz"),
    ],
)
def test_from_spec_errors_name_the_problem(user_module, spec, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        models.from_spec(spec.format(m=user_module), **kwargs)


def test_from_spec_rejects_non_strings():
    with pytest.raises(ConfigError, match="model spec must be"):
        models.from_spec(None)


@pytest.mark.parametrize("name", ["gru_classifier", "lstm_classifier"])
def test_sequence_classifier_reads_a_one_channel_image_row_by_row(name):
    model = models.get(name, input_shape=(1, 28, 28), hidden_size=8)
    image = torch.randn(2, 1, 28, 28)
    assert model.input_shape == (28, 28)
    assert torch.equal(model(image), model(image.squeeze(1)))
