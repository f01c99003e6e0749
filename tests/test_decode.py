"""Sparse Linear kernels for a few activation rows, and compile for generative models."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.runtime import choose, kernels
from prunekit.runtime.decode_linear import (
    RowDispatchLinear,
    RowSparseLinear,
    layer_bytes,
    row_engines_for,
)
from prunekit.runtime.row_layouts import Blocks16, Packed24, RowCSR, is_two_four
from prunekit.schemes.quant import fit_scales, from_codes, to_codes

NUMBA = [False, True] if kernels.has_numba() else [False]


def _unstructured(out_f: int, in_f: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    return w * (torch.rand(out_f, in_f, generator=g) >= sparsity)


def _two_four(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pad = (-in_f) % 4
    w = torch.randn(out_f, in_f + pad, generator=g).reshape(out_f, -1, 4)
    keep = torch.rand(w.shape, generator=g).argsort(-1)[..., :2]
    w = w * torch.zeros_like(w).scatter_(-1, keep, 1.0)
    return w.reshape(out_f, -1)[:, :in_f].contiguous()


def _blocks(out_f: int, in_f: int, keep: float = 0.4) -> torch.Tensor:
    """Whole 16x16 blocks kept (the last ones cut by odd widths)."""
    g = torch.Generator().manual_seed(5)
    blocks = torch.rand(-(-out_f // 16), -(-in_f // 16), generator=g) < keep
    blocks[0, 0] = True
    mask = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)[:out_f, :in_f]
    return torch.randn(out_f, in_f, generator=g) * mask


def _quantized(out_f: int, in_f: int, bits: int = 4) -> torch.Tensor:
    """A pruned layer on 4-bit levels with a step per row (prunekit's own quantizer)."""
    w = _unstructured(out_f, in_f, 0.6, seed=3)
    scale = fit_scales(w, bits, per="channel")
    return from_codes(to_codes(w, scale, bits), scale, bits) * (w != 0)


def _weight(engine: str, out_f: int, in_f: int) -> torch.Tensor:
    base = engine.removesuffix("_parallel")
    if base == "nm24":
        return _two_four(out_f, in_f)
    if base == "bsr16":
        return _blocks(out_f, in_f)
    w = _unstructured(out_f, in_f, 0.7)
    if base == "csr_bf16":
        return w.to(torch.bfloat16).float()
    if base == "csr_f16":
        return w.half().float()
    if base == "csr_levels":
        return _quantized(out_f, in_f)
    return w


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


ENGINES = ["csr_f32", "csr_bf16", "csr_f16", "csr_levels", "nm24", "bsr16",
           "csr_f32_parallel", "nm24_parallel", "bsr16_parallel"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("use_numba", NUMBA)
@pytest.mark.parametrize("shape", [(7, 13), (33, 70), (5, 1), (48, 64)])
def test_row_kernels_equal_the_masked_dense_layer(engine, use_numba, shape):
    """Every layout, odd widths, batch 1..8, numba and the pure-torch path: to 1e-5."""
    w = _weight(engine, *shape)
    bias = torch.randn(shape[0])
    layer = RowSparseLinear(w, bias, engine, use_numba=use_numba)
    for rows in range(1, 9):
        x = torch.randn(rows, shape[1])
        assert _rel(layer(x), x @ w.T + bias) < 1e-5, rows
    x = torch.randn(2, 3, shape[1])  # leading dims are kept
    assert layer(x).shape == (2, 3, shape[0])
    assert _rel(layer(x), x @ w.T + bias) < 1e-5


def test_layouts_hold_the_weight_exactly_and_say_what_they_read():
    w = _unstructured(40, 300, 0.7)
    csr = RowCSR.from_dense(w)
    assert torch.equal(csr.to_dense(), w)
    assert csr.cols.dtype.itemsize == 2  # 16-bit columns where the width allows
    nnz = int((w != 0).sum())
    assert csr.bytes_per_row() == 6 * nnz + 4 * 41
    wide = RowCSR.from_dense(_unstructured(3, 70000, 0.99))
    assert wide.cols.dtype.itemsize == 4
    half = RowCSR.from_dense(w.half().float(), "float16")
    assert half.bytes_per_row() == 4 * nnz + 4 * 41  # value and column in one word
    assert torch.equal(half.to_dense(), w.half().float())
    q = _quantized(40, 300)
    levels = RowCSR.from_dense(q, "levels")
    assert torch.equal(levels.to_dense(), q)
    assert levels.table.shape[1] <= 14  # 4-bit levels: at most 14 nonzero ones per row
    blocks = _blocks(40, 70)
    bsr = Blocks16.from_dense(blocks)
    assert torch.equal(bsr.to_dense(), blocks)
    assert bsr.bytes_per_row() == bsr.vals.nbytes + 4 * (len(bsr.block_cols) + 4)
    assert Blocks16.fits(_blocks(64, 128)) and not Blocks16.fits(w)
    packed = Packed24.from_dense(_two_four(40, 301))
    assert torch.equal(packed.to_dense(), _two_four(40, 301))
    assert packed.bytes_per_row() == 40 * 304 // 2 * 4 + 40 * 304 // 8  # padded to 16 inputs


def test_layouts_are_offered_only_where_they_are_exact():
    w = _unstructured(16, 32, 0.7)
    assert w.to(torch.bfloat16).float().ne(w).any()
    engines = row_engines_for(w, parallel=False)
    assert "csr_bf16" not in engines and "csr_f16" not in engines and "nm24" not in engines
    assert "csr_bf16" in row_engines_for(w.to(torch.bfloat16).float(), parallel=False)
    assert is_two_four(_two_four(8, 30)) and "nm24" in row_engines_for(_two_four(8, 30))
    assert "bsr16" in row_engines_for(_blocks(64, 128)) and "bsr16" not in engines
    with pytest.raises(ValueError, match="not exactly representable"):
        RowCSR.from_dense(w, "bfloat16")
    with pytest.raises(ValueError, match="not 2:4"):
        Packed24.from_dense(w)


def test_dispatch_runs_the_small_kernel_only_for_few_rows():
    w = _unstructured(24, 40, 0.7)
    dense = nn.Linear(40, 24)
    dense.weight.data = w
    calls = []

    class Counting(RowSparseLinear):
        def forward(self, x):
            calls.append(x.numel() // 40)
            return super().forward(x)

    layer = RowDispatchLinear(Counting(w, dense.bias, "csr_f32"), dense, 8, 40, 24)
    for rows in (1, 8, 9, 64):
        x = torch.randn(rows, 40)
        assert _rel(layer(x), dense(x)) < 1e-5
    assert calls == [1, 8]
    assert layer_bytes(layer) < layer_bytes(dense) == 4 * 24 * 40


class _FakeTimer:
    """Fixed per-candidate times with a deterministic jitter per round (no wall clock)."""

    def __init__(self, base: dict[str, float], jitter: float = 0.02) -> None:
        self.base, self.jitter, self.calls = base, jitter, itertools.count()

    def __call__(self, name, fn):
        fn()
        k = next(self.calls)
        base = self.base.get(name.removesuffix("_parallel"), 10.0)
        return base * (1.0 + self.jitter * ((k * 7919) % 13) / 13)


def _mlp(sparsity: float = 0.7) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 48)).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(torch.rand_like(m.weight) >= sparsity)
    return model


def test_same_model_compiled_twice_picks_the_same_layouts_with_a_fixed_timer():
    model, x = _mlp(), torch.randn(1, 48)
    timer = _FakeTimer({"dense": 1.0, "csr_f32": 0.5, "csr_levels": 0.7})
    plans = []
    for _ in range(2):
        choose.clear_cache()
        compiled = prunekit.compile(model, x, timer=timer, freeze=False)
        plans.append([(c.layer, c.engine) for c in compiled.prunekit_plan.layers])
        assert _rel(compiled(x), model(x)) < 1e-5
    assert plans[0] == plans[1] == [("0", "csr_f32"), ("2", "csr_f32")]
    assert isinstance(compiled[0], RowDispatchLinear)


def test_a_win_inside_the_spread_keeps_dense():
    """3% faster than dense, but the rounds vary by 10%: dense stays."""
    model, x = _mlp(), torch.randn(1, 48)
    choose.clear_cache()
    compiled = prunekit.compile(model, x, freeze=False,
                                timer=_FakeTimer({"dense": 1.0, "csr_f32": 0.97}, jitter=0.2))
    plan = compiled.prunekit_plan
    assert [c.engine for c in plan.layers] == ["dense", "dense"]
    assert plan.layers[0].spread["dense"] > 0.03
    choose.clear_cache()
    compiled = prunekit.compile(model, x, freeze=False,
                                timer=_FakeTimer({"dense": 1.0, "csr_f32": 0.5}, jitter=0.2))
    assert [c.engine for c in compiled.prunekit_plan.layers] == ["csr_f32", "csr_f32"]


def test_compile_takes_tuple_and_dict_examples():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _mlp()

        def forward(self, a, scale=1.0):
            return self.body(a) * scale

    model, x = TwoInputs().eval(), torch.randn(1, 48)
    timer = _FakeTimer({"dense": 1.0, "csr_f32": 0.5})
    choose.clear_cache()
    by_tuple = prunekit.compile(model, (x, 2.0), timer=timer)
    assert _rel(by_tuple(x, 2.0), model(x, 2.0)) < 1e-5
    by_dict = prunekit.compile(model, {"a": x, "scale": 2.0}, timer=timer)
    assert _rel(by_dict(a=x, scale=2.0), model(x, 2.0)) < 1e-5
    with pytest.raises(ConfigError, match="does not run on the example"):
        prunekit.compile(model, {"b": x})


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=160,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128,
                                      max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # magnitude pruning, 70% per Linear, lm_head kept
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and "lm_head" not in name:
                k = int(m.weight.numel() * 0.7)
                threshold = m.weight.abs().flatten().kthvalue(k).values
                m.weight.mul_(m.weight.abs() > threshold)
    return model


@pytest.mark.parametrize("timer", ["measured", "kernels_win"])
def test_compiled_llama_generates_the_same_greedy_tokens(timer):
    model = _tiny_llama()
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    choose.clear_cache()
    fake = _FakeTimer({"dense": 1.0, "csr_f32": 0.5}) if timer == "kernels_win" else None
    compiled = prunekit.compile(model, {"input_ids": ids}, timer=fake)
    plan = compiled.prunekit_plan
    assert len(plan.layers) == 14  # 7 pruned Linears per layer, lm_head dense
    if fake is not None:  # every pruned Linear runs the row kernel for one row
        assert all(c.engine.startswith("csr_f32 at 1 row") for c in plan.layers)
        assert sum(isinstance(m, RowDispatchLinear) for m in compiled.modules()) == 14
    want = model.generate(ids, max_new_tokens=8, do_sample=False)
    got = compiled.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)


def test_compile_says_when_the_model_was_in_train_mode():
    model, x = _mlp().train(), torch.randn(1, 48)
    with pytest.warns(UserWarning, match="train mode"):
        compiled = prunekit.compile(model, x, engines=(), freeze=False)
    assert any("train mode" in note for note in compiled.prunekit_plan.notes)


def test_without_numba_compile_runs_the_pure_torch_kernels(monkeypatch):
    monkeypatch.setattr(kernels, "has_numba", lambda: False)
    model, x = _mlp(), torch.randn(1, 48)
    choose.clear_cache()
    compiled = prunekit.compile(model, x, freeze=False,
                                timer=_FakeTimer({"dense": 1.0, "csr_f32": 0.5}))
    assert [c.engine for c in compiled.prunekit_plan.layers] == ["csr_f32", "csr_f32"]
    rows = [m for m in compiled.modules() if isinstance(m, RowSparseLinear)]
    assert len(rows) == 2 and all(not m.use_numba and m._run is None for m in rows)
    for batch in (1, 5, 20):
        x = torch.randn(batch, 48)
        assert _rel(compiled(x), model(x)) < 1e-5
