"""compile's plan on disk, bench's three-way comparison, and quiet compiles of models the
graph passes cannot take."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit
from prunekit import models
from prunekit.commands import bench
from prunekit.runtime import choose, latency


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 48)).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(torch.rand_like(m.weight) >= 0.8)
    return model


def _never(name, fn):
    raise AssertionError(f"measured {name} although the plan was on disk")


def _prefer_kernels(name, fn):
    fn()
    return 0.5 if name.startswith("csr_f32") else 1.0


def test_a_compiled_plan_is_reloaded_from_disk_without_measuring(tmp_path):
    model, x = _mlp(), torch.randn(1, 48)
    choose.clear_cache()
    first = prunekit.compile(model, x, plan_cache=tmp_path, timer=_prefer_kernels)
    files = list(tmp_path.glob("plan-*.json"))
    assert len(files) == 1 and "written to" in first.prunekit_plan.notes[-1]
    assert json.loads(files[0].read_text())["choices"]
    choose.clear_cache()
    second = prunekit.compile(model, x, plan_cache=tmp_path, timer=_never)
    assert "nothing measured" in second.prunekit_plan.notes[-1]
    engines = [(c.layer, c.engine) for c in second.prunekit_plan.layers]
    assert engines == [(c.layer, c.engine) for c in first.prunekit_plan.layers]
    assert engines == [("0", "csr_f32"), ("2", "csr_f32")]
    assert second.prunekit_plan.graph == first.prunekit_plan.graph
    assert torch.allclose(second(x), model(x), rtol=1e-5, atol=1e-6)
    # another shape, or other weights, is another plan: measured again
    prunekit.compile(model, torch.randn(3, 48), plan_cache=tmp_path, timer=_prefer_kernels)
    other = _mlp()
    with torch.no_grad():
        other[0].weight.mul_(2)
    prunekit.compile(other, x, plan_cache=tmp_path, timer=_prefer_kernels)
    assert len(list(tmp_path.glob("plan-*.json"))) == 3


def test_a_damaged_plan_file_is_one_clear_error(tmp_path):
    model, x = _mlp(), torch.randn(1, 48)
    prunekit.compile(model, x, plan_cache=tmp_path, timer=_prefer_kernels)
    (plan_file,) = tmp_path.glob("plan-*.json")
    plan_file.write_text("{not json")
    with pytest.raises(prunekit.errors.DataError, match="delete it to measure again"):
        prunekit.compile(model, x, plan_cache=tmp_path)


def _saved_lenet(tmp_path):
    model = models.get("lenet5")
    targets = prunekit.resolve(model, [{"layers": ["fc1", "fc2"], "scheme": "irregular",
                                        "sparsity": 0.9}])
    frozen = prunekit.freeze(model, targets)
    return prunekit.save(model, tmp_path / "m.pkz", frozen,
                         spec={"name": "lenet5", "input_shape": [1, 28, 28]})


def test_bench_shows_dense_eager_dense_compiled_and_pruned_compiled(tmp_path):
    path = _saved_lenet(tmp_path)
    lines: list[str] = []
    result = bench(path, repeats=5, echo=lines.append, plan_cache=tmp_path / "plans")
    out = "\n".join(lines)
    for label in ("dense (eager)", "dense compiled (no zeros)", "pruned compiled",
                  "of which compiling alone", "of which the sparsity"):
        assert label in out
    assert len(result["rounds_ms"]["eager"]) == len(result["rounds_ms"]["compiled"]) >= 5
    # the no-zeros twin really has nothing to skip
    twin = latency.densified(models.get("lenet5"))
    assert all(bool((p != 0).all()) for n, p in twin.named_parameters() if n.endswith("weight"))
    # a second bench reads both plans from the cache
    lines.clear()
    bench(path, repeats=5, echo=lines.append, plan_cache=tmp_path / "plans")
    assert "plan read from" in "\n".join(lines)


def test_bench_refuses_a_speedup_whose_rounds_disagree(tmp_path, monkeypatch):
    path = _saved_lenet(tmp_path)
    fixed = {"eager": [1.0, 1.0, 1.0, 1.0, 1.0], "dense_compiled": [0.5, 0.5, 0.5, 0.5, 0.5],
             "compiled": [0.5, 0.1, 0.5, 0.5, 0.5]}  # one round 5x faster: noise
    monkeypatch.setattr(latency, "rounds_ms", lambda fns, rounds: fixed)
    lines: list[str] = []
    result = bench(path, repeats=5, echo=lines.append)
    out = "\n".join(lines)
    assert result["speedup"] is None and result["sparsity_speedup"] is None
    assert "speedup: not printed, the rounds disagree (2.00x to 10.00x)" in out
    assert result["compile_speedup"] == pytest.approx(2.0)
    assert "of which compiling alone: 2.00x" in out


class _Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = h.relu()
        return self.b(h)


def test_a_model_branching_on_its_input_compiles_quietly_and_stays_correct(capfd):
    torch.manual_seed(0)
    model = _Branching().eval()
    with torch.no_grad():
        model.a.weight.mul_(torch.rand_like(model.a.weight) > 0.8)
    x = torch.randn(1, 16)
    while float(model.a(x).sum()) <= 0:
        x = torch.randn(1, 16)
    capfd.readouterr()
    compiled = prunekit.compile(model, x)
    out, err = capfd.readouterr()
    assert out == "" and "Traceback" not in err and "GraphModule" not in err
    plan = compiled.prunekit_plan.describe()
    assert "branches on its input" in plan
    # the other branch: a trace of the example would have kept the relu
    other = -x
    while float(model.a(other).sum()) > 0:
        other = torch.randn(1, 16)
    assert torch.allclose(compiled(other), model(other), rtol=1e-5, atol=1e-6)
