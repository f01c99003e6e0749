"""ONNX export: onnxruntime computes what PyTorch computes, and quantized conv/linear weights
really are int8 initializers behind DequantizeLinear nodes that give the weights back exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import prunekit
from prunekit import artifacts, constraints, models
from prunekit.artifacts.onnx_export import export_onnx
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.runtime.torch_onnx import MISSING_EXTRA

#: small inputs keep every export to a second or two
ZOO = {
    "lenet5": {},
    "resnet20": {"input_shape": (3, 16, 16)},
    "gru_classifier": {"hidden_size": 16, "input_shape": (8, 16)},
}
QUANT_RULE = {"layers": "*", "scheme": "irregular+quant", "bits": 4, "sparsity": 0.8}
FLOAT_RULE = {"layers": "*", "scheme": "irregular", "sparsity": 0.8}


def compressed(name: str, rules: list[dict]) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = models.get(name, **ZOO[name])
    return model, prunekit.freeze(model, prunekit.resolve(model, rules))


def example(model: nn.Module) -> torch.Tensor:
    return torch.randn(1, *model.input_shape, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(name, quantized, shrink=False) -> (model, constraints, input, onnx path)``, each
    exported once. Unshrunk by default: those tests compare the file's weights with the
    model's, layer for layer."""
    cache: dict = {}

    def get(name: str, quantized: bool, shrink: bool = False):
        if (name, quantized, shrink) not in cache:
            model, frozen = compressed(name, [QUANT_RULE if quantized else FLOAT_RULE])
            x = example(model)
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            assert export_onnx(model, frozen, x, path, shrink=shrink) == path
            cache[name, quantized, shrink] = (model, frozen, x, path)
        return cache[name, quantized, shrink]

    return get


def run_onnx(path, x: torch.Tensor, extra_outputs: dict | None = None) -> list[np.ndarray]:
    """onnxruntime's outputs on ``x``; ``extra_outputs`` ({tensor name: shape}) are inner
    tensors made graph outputs too (the DequantizeLinear results)."""
    proto = onnx.load(str(path))
    for name, shape in (extra_outputs or {}).items():
        proto.graph.output.append(
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape)))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def torch_output(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(x).numpy()


def dequantize_nodes(path) -> dict[str, onnx.NodeProto]:
    """DequantizeLinear nodes of the file's graph by the tensor they produce."""
    return {n.output[0]: n for n in onnx.load(str(path)).graph.node
            if n.op_type == "DequantizeLinear"}


def qdq_layers(model: nn.Module, frozen: dict) -> list[str]:
    """The weights the exporter must turn into QDQ: conv/linear weights with levels."""
    modules = dict(model.named_modules())
    return [name for name, c in frozen.items() if isinstance(c, constraints.Levels)
            and isinstance(modules[name.rpartition(".")[0]], (nn.Linear, nn.Conv2d))]


def metadata(path) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props
            if p.key.startswith("prunekit.")}


@pytest.mark.parametrize("shrink", [False, True], ids=["full", "shrunk"])
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "qdq"])
@pytest.mark.parametrize("name", list(ZOO))
def test_onnxruntime_matches_pytorch(exported, name, quantized, shrink):
    """Exported from batch 1, run at batch 1 and 8 (the batch axis is dynamic)."""
    model, _, x, path = exported(name, quantized, shrink)
    for batch in (1, 8):
        xb = torch.randn(batch, *x.shape[1:], generator=torch.Generator().manual_seed(batch))
        (out,) = run_onnx(path, xb)
        np.testing.assert_allclose(out, torch_output(model, xb), rtol=1e-5, atol=1e-5)
    if not quantized:
        assert not dequantize_nodes(path)


def test_a_shrunk_qdq_export_keeps_its_int8_weights_and_is_smaller(exported):
    """Irregular 80% leaves some LeNet-5 channels with no weight at all: the shrunk file
    drops them, and every quantized weight is still int8 behind a DequantizeLinear whose
    output is exactly the kept slice of the model's weight."""
    model, frozen, _, full = exported("lenet5", True)
    _, _, _, small = exported("lenet5", True, shrink=True)
    assert metadata(small)["prunekit.removed_channels"] > 0
    assert metadata(full)["prunekit.removed_channels"] == 0
    assert small.stat().st_size < full.stat().st_size
    names = qdq_layers(model, frozen)
    assert set(dequantize_nodes(small)) == set(names) == set(metadata(small)["prunekit.qdq"])
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(small)).graph.initializer}
    shrunk = prunekit.compile(model, example(model), engines=(), freeze=False)  # plain layers
    assert shrunk.prunekit_plan.removed_channels == metadata(small)["prunekit.removed_channels"]
    params = {n: p.detach().numpy() for n, p in shrunk.named_parameters()}
    for name, node in dequantize_nodes(small).items():
        codes, scale = inits[node.input[0]].astype(np.float32), inits[node.input[1]]
        steps = scale.reshape(-1, *[1] * (codes.ndim - 1)) if scale.ndim else scale
        np.testing.assert_array_equal(codes * steps, params[name])


def test_a_float_export_is_the_optimized_graph(exported):
    """With no QDQ weight the optimizer's graph is written: BatchNorm folded into the convs,
    and no shape arithmetic around it (it kept ONNX Runtime from fusing the convs)."""
    _, _, _, path = exported("resnet20", False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in ops
    assert not ops & {"BatchNormalization", "Shape", "Expand", "CastLike"}
    _, _, _, qdq_path = exported("resnet20", True)  # the QDQ export keeps every weight
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(qdq_path)).graph.node}


@pytest.mark.parametrize("name", list(ZOO))
def test_quantized_weights_are_int8_and_dequantize_to_the_exact_weights(exported, name):
    model, frozen, x, path = exported(name, True)
    params = dict(model.named_parameters())
    names = qdq_layers(model, frozen)
    assert names and metadata(path)["prunekit.qdq"] == names
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    nodes = dequantize_nodes(path)
    assert set(nodes) == set(names)
    for name_ in names:
        codes, scale, zero = (inits[i] for i in nodes[name_].input)
        assert codes.data_type == zero.data_type == onnx.TensorProto.INT8
        assert scale.data_type == onnx.TensorProto.FLOAT
        assert not numpy_helper.to_array(zero).any()
        assert name_ not in inits  # the float weight is gone; the DQ output replaces it
        q = torch.from_numpy(numpy_helper.to_array(codes).astype(np.float32))
        s = torch.from_numpy(numpy_helper.to_array(scale).copy())
        assert s.numel() in (1, q.shape[0])
        assert torch.equal(q * s.reshape(-1, *[1] * (q.dim() - 1)), params[name_].detach())
    # and onnxruntime's own DequantizeLinear gives the same weights, bit for bit
    outs = run_onnx(path, x, {n: params[n].shape for n in names})[1:]
    for name_, out in zip(names, outs, strict=True):
        assert torch.equal(torch.from_numpy(out), params[name_].detach()), name_


def test_recurrent_weights_stay_float_and_say_why(exported):
    model, frozen, _, path = exported("gru_classifier", True)
    recurrent = [n for n in frozen if n.startswith("rnn.weight")]
    assert recurrent and all(isinstance(frozen[n], constraints.Levels) for n in recurrent)
    kept = metadata(path)["prunekit.float"]
    assert sorted(kept) == sorted(recurrent)
    assert all("reorders" in why for why in kept.values())
    assert set(dequantize_nodes(path)) == {"fc.weight"}


def test_per_channel_pow2_8bit_and_off_level_weights(tmp_path):
    """Per-row steps give a per-axis (axis 0) scale; 8-bit codes fill int8; pow2 levels are
    int8 up to 4 bits and float beyond; a weight moved off its levels stays float; all of it
    still computes what PyTorch computes."""
    model, frozen = compressed("lenet5", [
        {"layers": "conv1", "scheme": "quant", "bits": 4, "levels": "pow2", "scale": "channel"},
        {"layers": "conv2", "scheme": "quant", "bits": 5, "levels": "pow2"},
        {"layers": "fc1", "scheme": "irregular+quant", "bits": 4, "sparsity": 0.9},
        {"layers": "fc2", "scheme": "quant", "bits": 8, "scale": "channel"},
    ])
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1e-3
    x = example(model)
    path = export_onnx(model, frozen, x, tmp_path / "mixed.onnx")
    nodes = dequantize_nodes(path)
    assert set(nodes) == {"conv1.weight", "fc2.weight"}
    kept = metadata(path)["prunekit.float"]
    assert "int8" in kept["conv2.weight"] and "not exactly on its levels" in kept["fc1.weight"]
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for weight, rows in (("conv1.weight", 20), ("fc2.weight", 10)):
        node = nodes[weight]
        assert [(a.name, helper.get_attribute_value(a)) for a in node.attribute] == [("axis", 0)]
        assert inits[node.input[1]].shape == inits[node.input[2]].shape == (rows,)
    pow2 = np.unique(np.abs(inits[nodes["conv1.weight"].input[0]].astype(np.int64)))
    assert set(pow2) <= {0, 1, 2, 4, 8, 16, 32, 64} and pow2.max() == 64
    assert np.abs(inits[nodes["fc2.weight"].input[0]].astype(np.int64)).max() == 127
    (out,) = run_onnx(path, x)
    np.testing.assert_allclose(out, torch_output(model, x), rtol=1e-5, atol=1e-5)


def test_cli_exports_a_saved_model(tmp_path, capsys):
    model, frozen = compressed("lenet5", [QUANT_RULE])
    pkz = artifacts.save(model, tmp_path / "model.pkz", frozen,
                         spec={"name": "lenet5", "input_shape": [1, 28, 28], "num_classes": 10})
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(pkz), "--onnx", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert set(dequantize_nodes(out)) == {"conv1.weight", "conv2.weight", "fc1.weight",
                                          "fc2.weight"}
    x = example(model)
    (got,) = run_onnx(out, x)
    np.testing.assert_allclose(got, torch_output(model, x), rtol=1e-5, atol=1e-5)


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path / "missing.pkz"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "missing.pkz" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(tmp_path / "missing.pkz"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"prunekit: error: {MISSING_EXTRA}"


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_missing_extra_is_a_clear_config_error(tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    model = models.get("lenet5")
    with pytest.raises(ConfigError, match=r"pip install prunekit\[onnx\]"):
        export_onnx(model, {}, example(model), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_opset_is_refused(tmp_path):
    model = models.get("lenet5")
    with pytest.raises(ConfigError, match="opset 13"):
        export_onnx(model, {}, example(model), tmp_path / "m.onnx", opset=11)


def test_the_core_never_imports_onnx():
    code = ("import sys, prunekit, prunekit.cli, prunekit.artifacts.onnx_export\n"
            "print([m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxscript', 'onnxruntime')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
