"""The sequential driver: layers compressed in forward order from the compressed layers'
outputs, Gram matrices of conv patches that reproduce the real output error, the
hook-driven order for models without a block stack."""

from __future__ import annotations

import copy

import torch
from torch import nn

import prunekit
from prunekit.oneshot import LayerProblem, compress, find_blocks
from prunekit.oneshot.admm import admm
from prunekit.oneshot.constraint import LayerConstraint
from prunekit.oneshot.sparsegpt import sparsegpt


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.down(torch.tanh(self.up(x)))


class _Stack(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.blocks = nn.ModuleList(_Block(dim) for _ in range(depth))

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return x


def _solve_by_hand(layer: nn.Linear, x: torch.Tensor, rule: dict) -> None:
    rows = x.reshape(-1, x.shape[-1]).double()
    (target,) = prunekit.resolve(nn.Sequential(layer), [rule])
    w, _ = sparsegpt(LayerProblem(layer.weight.detach(), rows.T @ rows),
                     LayerConstraint(target))
    layer.weight.data.copy_(w)


def test_blocks_are_compressed_in_order_from_compressed_inputs():
    torch.manual_seed(0)
    model = _Stack()
    reference = copy.deepcopy(model)
    batches = [torch.randn(16, 4) for _ in range(3)]
    rule = {"sparsity": 0.5}
    compress(model, batches, [{"layers": "blocks.*", **rule}], method="sparsegpt",
             progress=False)
    # by hand: block 0 from the dense inputs, then block 1 from compressed block 0's output;
    # inside a block every layer sees the block's dense inputs (one capture per block)
    with torch.no_grad():
        x = torch.cat([reference.embed(b) for b in batches])
        for block in reference.blocks:
            hidden = torch.tanh(block.up(x))
            _solve_by_hand(block.up, x, rule)
            _solve_by_hand(block.down, hidden, rule)
            x = block(x)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(),
                                 strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def test_conv_gram_gives_the_true_output_error():
    """The record's relative error, computed from H of unfolded patches, equals the error
    measured by running the dense and the compressed conv on the calibration images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, stride=2), nn.ReLU(),
                          nn.Conv2d(6, 4, 3, dilation=2), nn.Flatten(), nn.LazyLinear(5))
    batches = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    model(batches[0])
    dense = copy.deepcopy(model)
    result = compress(model, batches, [{"types": ["Conv2d"], "sparsity": 0.6}],
                      method="admm", progress=False)
    assert [r.name for r in result.layers] == ["0.weight", "2.weight"]
    with torch.no_grad():
        x = torch.cat(batches)
        conv = model[0]
        out = nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding)
        ref = nn.functional.conv2d(x, dense[0].weight, None, conv.stride, conv.padding)
        measured = float(((out - ref) ** 2).sum() / (ref ** 2).sum())
    assert abs(result.layers[0].error - measured) < 1e-4 * max(1.0, measured)


def test_models_without_a_block_stack_run_in_forward_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 3))
    assert find_blocks(model, ["0", "2", "4"]) is None
    result = compress(model, [torch.randn(20, 6)], {"sparsity": 0.5}, method="wanda",
                      progress=False)
    assert [r.name for r in result.layers] == ["0.weight", "2.weight", "4.weight"]
    assert all(r.inputs == 20 for r in result.layers)


def test_a_stack_whose_blocks_are_not_chained_falls_back_to_forward_order():
    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

        def forward(self, x):
            return sum(head(x) for head in self.heads)

    model = Parallel()
    result = compress(model, [torch.randn(10, 4)], {"sparsity": 0.5}, method="sparsegpt",
                      progress=False)
    assert len(result.layers) == 3


def test_dense_target_pairs_each_layer_with_the_dense_models_inputs():
    """With ``dense_target``, a layer's problem carries ``X_d^T X``: its inputs in the
    uncompressed model against its inputs after the compressed layers upstream. Rebuilt by
    hand: block 0 sees identical inputs on both sides (cross = H); block 1 sees the dense
    chain's and the compressed chain's outputs of block 0."""
    torch.manual_seed(0)
    model = _Stack()
    reference = copy.deepcopy(model)
    dense = copy.deepcopy(model)
    batches = [torch.randn(16, 4) for _ in range(3)]
    rule = {"sparsity": 0.5}
    options = {"dense_target": True, "refit_iterations": 50}
    compress(model, batches, [{"layers": "blocks.*", **rule}], method="admm", progress=False,
             **options)

    def solve(layer, x, xd):
        rows, drows = x.reshape(-1, x.shape[-1]).double(), xd.reshape(-1, xd.shape[-1]).double()
        (target,) = prunekit.resolve(nn.Sequential(layer), [rule])
        problem = LayerProblem(layer.weight.detach(), rows.T @ rows, drows.T @ rows)
        layer.weight.data.copy_(admm(problem, LayerConstraint(target), **options)[0])

    with torch.no_grad():
        x = xd = torch.cat([reference.embed(b) for b in batches])
        for block, dense_block in zip(reference.blocks, dense.blocks, strict=True):
            hidden, dense_hidden = torch.tanh(block.up(x)), torch.tanh(block.up(xd))
            solve(block.up, x, xd)
            solve(block.down, hidden, dense_hidden)
            x, xd = block(x), dense_block(xd)
        assert not torch.allclose(x, xd)  # the chains did part
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(),
                                 strict=True):
        assert torch.allclose(p, q, atol=1e-5), name
