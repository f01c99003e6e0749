"""What the row kernels read per token, as `prunekit bench` prints it, and their scalar
loops (the path a CPU without AVX2 runs)."""

from __future__ import annotations

import re

import pytest
import torch

import prunekit
from prunekit import models
from prunekit.commands import bench
from prunekit.runtime import kernels, row_kernels, simd
from prunekit.runtime.decode_linear import RowSparseLinear
from prunekit.runtime.row_layouts import RowCSR


def test_bench_prints_bytes_per_row_next_to_dense_and_the_traffic_limit(tmp_path):
    model = models.get("lenet5")
    targets = prunekit.resolve(model, [{"layers": ["fc1"], "scheme": "irregular",
                                        "sparsity": 0.9}])
    frozen = prunekit.freeze(model, targets)
    path = prunekit.save(model, tmp_path / "m.pkz", frozen,
                         spec={"name": "lenet5", "input_shape": [1, 28, 28]})
    lines: list[str] = []
    result = bench(path, repeats=3, echo=lines.append, model=models.get("lenet5"))
    out = "\n".join(lines)
    assert "bytes read per activation row" in out
    fc1 = next(line for line in result["traffic"] if line.startswith("fc1:"))
    got = re.search(r"([\d.]+) KiB/row vs dense ([\d.]+) KiB \(traffic limit ([\d.]+)x\)", fc1)
    weight = model.fc1.weight.detach()
    assert float(got.group(2)) == pytest.approx(weight.numel() * 4 / 1024, abs=0.05)
    assert float(got.group(3)) == pytest.approx(float(got.group(2)) / float(got.group(1)),
                                                rel=0.02)
    assert fc1 in out


@pytest.mark.skipif(not kernels.has_numba(), reason="the scalar loops are numba's")
def test_scalar_loops_without_avx2_equal_the_dense_layer(monkeypatch):
    monkeypatch.setattr(simd, "has_avx2", lambda: False)
    row_kernels.numba_row_kernels.cache_clear()
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(9, 37, generator=g)
        w24 = w.clone().reshape(9, -1)
        w24[:, 1::4] = 0  # at most two of every four: zero two positions per group
        w24[:, 2::4] = 0
        w = w * (torch.rand(9, 37, generator=g) > 0.7)
        bias = torch.randn(9, generator=g)
        blocks = torch.randn(9, 37, generator=g)
        blocks[:, 16:32] = 0  # whole 16-column blocks: the middle one empty
        for engine, weight in (("csr_f32", w), ("nm24", w24), ("bsr16", blocks)):
            layer = RowSparseLinear(weight, bias, engine)
            for rows in (1, 3, 8):
                x = torch.randn(rows, 37, generator=g)
                want = x @ weight.T + bias
                assert float((layer(x) - want).abs().max() / want.abs().max()) < 1e-5
    finally:
        row_kernels.numba_row_kernels.cache_clear()


def test_row_layout_bytes_are_indices_values_and_pointers():
    w = torch.zeros(4, 10)
    w[0, 3], w[2, 7], w[2, 9] = 1.0, 2.0, 3.0
    csr = RowCSR.from_dense(w)
    assert csr.bytes_per_row() == 3 * (2 + 4) + 5 * 4
