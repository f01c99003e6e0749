"""Compiled inference: every kernel path equals the masked dense layer, compile keeps the
model's outputs, and bad input is one clear error.

Timings are never asserted: which engine compile picks depends on the machine, so each
engine is tested directly, and compile is tested for correctness whatever it picks.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from group_models import group_prune
from prunekit import models, schemes
from prunekit.errors import ConfigError
from prunekit.runtime import (
    ENGINES,
    Im2colConv2d,
    SparseLinear,
    SparseRNN,
    choose,
    has_numba,
)
from prunekit.runtime.banded import Gathered, choose_rows, padded_work

SPARSE = {
    "block": lambda w: schemes.get("block", block=(8, 4)).project(w, 0.75),
    "nm": lambda w: schemes.get("nm", n=2, m=4).project(w, None),
    "irregular": lambda w: schemes.get("irregular").project(w, 0.9),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


def _engines():
    return [pytest.param(e, marks=pytest.mark.skipif(
        e in ("gathered", "gathered_parallel") and not has_numba(), reason="numba missing"))
        for e in ENGINES]


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("kind", list(SPARSE))
@pytest.mark.parametrize("batch", [1, 6])
def test_sparse_linear_equals_masked_linear(engine, kind, batch):
    torch.manual_seed(0)
    w = SPARSE[kind](torch.randn(48, 64))
    bias = torch.randn(48)
    x = torch.randn(batch, 3, 64)  # leading dims are kept
    got = SparseLinear(w, bias, engine)(x)
    assert got.shape == (batch, 3, 48)
    assert _rel(got, F.linear(x, w, bias)) < 1e-4


@pytest.mark.parametrize("out_features", [45, 46, 47, 48])
def test_gathered_kernel_at_batch_1_covers_bands_of_any_height(out_features):
    """Batch 1 takes four weight rows per pass: a band (the last one here) whose height is
    no multiple of four must still get every row."""
    if not has_numba():
        pytest.skip("numba missing")
    torch.manual_seed(0)
    w = torch.randn(out_features, 64)
    w[:, torch.randperm(64)[:40]] = 0  # the same kept columns in every row: one tall band
    w[: out_features // 2, :3] = 0  # two different column sets: two bands
    bias = torch.randn(out_features)
    x = torch.randn(1, 64)
    for engine in ("gathered", "gathered_parallel"):
        assert _rel(SparseLinear(w, bias, engine)(x), F.linear(x, w, bias)) < 1e-5


def test_gathered_layout_finds_the_block_height():
    torch.manual_seed(0)
    block = schemes.get("block", block=(16, 16)).project(torch.randn(64, 96), 0.8)
    mask = block != 0
    assert choose_rows(mask) == 16 or padded_work(mask, choose_rows(mask)) == int(mask.sum())
    assert padded_work(mask, 16) == int(mask.sum())  # block columns: no padding at all
    nm = schemes.get("nm", n=2, m=4).project(torch.randn(64, 96), None) != 0
    assert choose_rows(nm) == 1  # every row keeps its own columns
    fmt = Gathered.from_dense(block)
    assert fmt.work == int(mask.sum())
    idx, vals = fmt.padded()
    assert idx.shape[0] == vals.shape[0] == fmt.bands


def test_an_all_zero_band_gives_the_bias():
    w = torch.zeros(32, 16)
    w[:8] = torch.randn(8, 16)
    bias = torch.randn(32)
    x = torch.randn(5, 16)
    for engine in ("gathered_torch", "gathered") if has_numba() else ("gathered_torch",):
        assert _rel(SparseLinear(w, bias, engine)(x), F.linear(x, w, bias)) < 1e-5


@pytest.mark.parametrize("engine", ["gathered", "gathered_torch", "csr"])
@pytest.mark.parametrize("kind", ["pattern", "column", "block"])
def test_im2col_conv_equals_masked_conv(engine, kind):
    if engine == "gathered" and not has_numba():
        pytest.skip("numba missing")
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
    rate = {"pattern": 0.6, "column": 0.7, "block": 0.75}[kind]
    with torch.no_grad():
        conv.weight.copy_(schemes.get(kind).project(conv.weight, rate))
    x = torch.randn(2, 8, 9, 7)
    assert _rel(Im2colConv2d(conv, engine)(x), conv(x)) < 1e-4


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("batch_first", [True, False])
def test_sparse_rnn_equals_torch_rnn(cell, batch_first):
    torch.manual_seed(0)
    rnn = cell(12, 16, num_layers=2, batch_first=batch_first).eval()
    gates = 3 if cell is nn.GRU else 4
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight"):
                p.copy_(schemes.get("block", block=(4, 4)).project(p, 0.7, gates=gates))
    x = torch.randn(2, 5, 12) if batch_first else torch.randn(5, 2, 12)
    h0 = torch.randn(2, 2, 16)
    hx = (h0, torch.randn(2, 2, 16)) if cell is nn.LSTM else h0
    before = copy.deepcopy(hx)
    numba_engines = ("gathered", "gathered_parallel")  # the whole time loop in numba
    for engine in ("gathered_torch", "csr", *numba_engines) if has_numba() else ("csr",):
        fast = SparseRNN(rnn, engine)
        with torch.no_grad():
            (out, h), (want, h_want) = fast(x, hx), rnn(x, hx)
        assert _rel(out, want) < 1e-4
        # the caller's initial state is read, never updated in place
        states, originals = (hx, before) if cell is nn.LSTM else ((hx,), (before,))
        assert all(torch.equal(a, b) for a, b in zip(states, originals, strict=True))
        if cell is nn.LSTM:
            assert _rel(h[0], h_want[0]) < 1e-4 and _rel(h[1], h_want[1]) < 1e-4
        else:
            assert _rel(h, h_want) < 1e-4


def _block_mlp() -> nn.Module:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                        nn.Linear(128, 10))
    targets = prunekit.resolve(mlp, [{"layers": ["0", "2"], "scheme": "block",
                                      "block": [16, 16], "sparsity": 0.9}])
    prunekit.freeze(mlp, targets)
    return mlp.eval()


def test_compile_keeps_the_outputs_and_records_every_choice():
    mlp = _block_mlp()
    x = torch.randn(4, 64)
    compiled = prunekit.compile(mlp, x)
    plan = compiled.prunekit_plan
    assert [c.layer for c in plan.layers] == ["0", "2"]
    for choice in plan.layers:
        assert set(choice.times_ms) >= {"dense", "csr"}
        assert choice.engine in choice.times_ms
    fresh = torch.randn(4, 64)
    with torch.no_grad():
        assert _rel(compiled(fresh), mlp(fresh)) < 1e-4
    assert plan.max_rel_error < 1e-4


def test_compile_shrinks_a_filter_pruned_resnet_and_keeps_it_exportable(tmp_path):
    model = models.get("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    _, removed = group_prune(model, x, 0.5)
    compiled = prunekit.compile(model, x, engines=(), freeze=False)
    assert compiled.prunekit_plan.removed_channels == removed == 176
    # the plan says which channels had to stay, and why
    assert "zero padding added by pad in layer2.0.downsample" in compiled.prunekit_plan.describe()
    assert all(type(m).__module__.startswith("torch.nn") for m in compiled.modules()
               if m is not compiled)
    fresh = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert _rel(compiled(fresh), model(fresh)) < 1e-4
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "small.onnx"
    torch.onnx.export(compiled, (x,), str(path), dynamo=True, optimize=False)
    session = ort.InferenceSession(str(path))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert _rel(torch.from_numpy(got), model(x)) < 1e-4


def test_compile_may_freeze_a_plain_model_and_still_match():
    model = models.get("vgg16").eval()
    x = torch.randn(1, 3, 32, 32)
    group_prune(model, x, 0.75)
    compiled = prunekit.compile(model, x)
    plan = compiled.prunekit_plan
    assert set(plan.graph_times_ms) == {"eager", "jit_frozen", "jit_optimized", "onnxruntime"}
    assert plan.graph in plan.graph_times_ms
    fresh = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert _rel(compiled(fresh), model(fresh)) < 1e-4


def test_onnxruntime_graph_matches_and_other_shapes_run_the_eager_model():
    pytest.importorskip("onnxruntime")
    from prunekit.runtime.ort_graph import ort_graphs

    model = models.get("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    graphs, why = ort_graphs(model, x)
    assert list(graphs) == ["onnxruntime"], why  # the suite runs torch on one thread
    graph = graphs["onnxruntime"]
    with torch.no_grad():
        assert _rel(graph(x), model(x)) < 1e-5
        other = torch.randn(5, 1, 28, 28)  # not the exported shape: the eager model runs
        assert _rel(graph(other), model(other)) < 1e-6
    assert graph(x).shape == (2, 10)


def test_the_onnxruntime_graph_is_the_optimized_export_with_batchnorm_folded():
    """The unoptimized export's shape arithmetic (Shape, Expand, CastLike around every
    BatchNorm) kept ONNX Runtime from fusing the convs: the graph run must be the folded
    one, and still compute what the model computes."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from prunekit.runtime.torch_onnx import optimized_graph

    model = models.get("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    graph = optimized_graph(model, x)
    ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
    assert "Conv" in ops
    assert not ops & {"BatchNormalization", "Shape", "Expand", "CastLike"}, ops
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert _rel(torch.from_numpy(got), model(x)) < 1e-5


def test_with_two_threads_a_one_thread_onnxruntime_session_is_a_candidate_too():
    pytest.importorskip("onnxruntime")
    from prunekit.runtime.ort_graph import ort_graphs

    model = models.get("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        graphs, why = ort_graphs(model, x)
        compiled = prunekit.compile(model, x, engines=())
    finally:
        torch.set_num_threads(before)
    threads = {name: g.session.get_session_options().intra_op_num_threads
               for name, g in graphs.items()}
    assert threads == {"onnxruntime": 2, "onnxruntime_1thread": 1}, why
    assert {"onnxruntime", "onnxruntime_1thread"} <= set(compiled.prunekit_plan.graph_times_ms)
    with torch.no_grad():
        assert _rel(graphs["onnxruntime_1thread"](x), model(x)) < 1e-5


def test_without_the_onnx_extra_compile_says_there_was_no_onnxruntime_graph(monkeypatch):
    from prunekit.runtime import ort_graph

    monkeypatch.setattr(ort_graph, "onnxruntime_available", lambda: False)
    model = models.get("lenet5").eval()
    compiled = prunekit.compile(model, torch.randn(1, 1, 28, 28), engines=())
    plan = compiled.prunekit_plan
    assert "onnxruntime" not in plan.graph_times_ms
    assert "onnxruntime not installed" in plan.describe()


def test_compile_a_block_sparse_gru_classifier():
    model = models.get("gru_classifier", hidden_size=32, num_layers=2).eval()
    targets = prunekit.resolve(model, [{"layers": ["rnn"], "scheme": "block",
                                        "block": [8, 8], "sparsity": 0.75}])
    prunekit.freeze(model, targets)
    x = torch.randn(1, 20, 16)
    compiled = prunekit.compile(model, x, engines=("gathered_torch", "csr"))
    [choice] = [c for c in compiled.prunekit_plan.layers if c.layer == "rnn"]
    assert set(choice.times_ms) == {"dense", "gathered_torch", "csr"}
    with torch.no_grad():
        assert _rel(compiled(x), model(x)) < 1e-4


def test_dense_stays_when_sparse_is_slower():
    class Slow(nn.Module):
        def forward(self, x):
            for _ in range(200):
                x = torch.tanh(x)
            return x

    choose.clear_cache()
    best, times = choose.fastest(("test", 1), {"dense": nn.Identity(), "slow": Slow()},
                                 torch.randn(64, 64))
    assert best == "dense" and times["slow"] > times["dense"]


def test_candidates_are_timed_in_alternating_rounds():
    """A burst of load must fall on every candidate, not on whichever is being timed."""
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = choose.fastest_calls_ms(fns, rounds=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, one call each
    timed = calls[3:]
    assert len(timed) >= 9 and len(timed) % 3 == 0
    assert timed == ["a", "b", "c"] * (len(timed) // 3)
    assert set(times) == {"a", "b", "c"} and all(t >= 0 for t in times.values())


def test_compile_refuses_bad_input():
    mlp = _block_mlp()
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        prunekit.compile("model", torch.randn(1, 64))
    with pytest.raises(ConfigError, match="example input"):
        prunekit.compile(mlp, None)
    with pytest.raises(ConfigError, match="unknown engines"):
        prunekit.compile(mlp, torch.randn(1, 64), engines=("fast",))
    with pytest.raises(ConfigError, match="does not run on the example of shape"):
        prunekit.compile(mlp, torch.randn(1, 65))


def test_bench_command_prints_dense_and_compiled_latency(tmp_path, capsys):
    from prunekit.cli import main  # noqa: PLC0415

    model = models.get("lenet5")
    targets = prunekit.resolve(model, [{"layers": ["fc1"], "scheme": "block",
                                        "sparsity": 0.9}])
    frozen = prunekit.freeze(model, targets)
    path = prunekit.save(model, tmp_path / "m.pkz", frozen,
                         spec={"name": "lenet5", "input_shape": [1, 28, 28]})
    assert main(["bench", str(path), "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "compiled" in out and "fc1 (Linear, 90% zeros)" in out
    assert main(["bench", str(tmp_path / "missing.pkz")]) == 2


def test_channel_pruning_of_the_reader_shrinks_the_producer_too():
    """Input channels that no layer reads any more are dead: the filters making them go."""
    torch.manual_seed(0)
    model = models.get("lenet5").eval()
    targets = prunekit.resolve(model, [{"layers": ["conv2"], "scheme": "channel",
                                        "sparsity": 0.5}])
    prunekit.freeze(model, targets)
    x = torch.randn(2, 1, 28, 28)
    compiled = prunekit.compile(model, x, engines=(), freeze=False)
    assert compiled.conv1.out_channels == compiled.conv2.in_channels == 10
    fresh = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert _rel(compiled(fresh), model(fresh)) < 1e-4
