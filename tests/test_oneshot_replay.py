"""Inputs of recurrent gate weights and attention projections, replayed from the module's
forward arguments, checked against a step-by-step cell loop and against the module's own
output; and one-shot compression of LSTM and transformer-encoder models end to end."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import TargetError
from prunekit.oneshot import compress
from prunekit.oneshot.baselines import prune_count
from prunekit.oneshot.replay import mha_rows, rnn_rows


def _cell_loop(rnn: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows by hand: each layer and direction stepped through time with a cell that holds
    its weights (x: [steps, batch, features])."""
    cells = {nn.LSTM: nn.LSTMCell, nn.GRU: nn.GRUCell, nn.RNN: nn.RNNCell}
    rows: dict[str, torch.Tensor] = {}
    inputs = x
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(2 if rnn.bidirectional else 1):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
            cell = cells[type(rnn)](inputs.shape[-1], rnn.hidden_size, **extra)
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, kind).data.copy_(getattr(rnn, kind + sfx))
            h = torch.zeros(x.shape[1], rnn.hidden_size)
            state = (h, h.clone()) if isinstance(rnn, nn.LSTM) else h
            order = range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])
            ih, hh, out = [], [], [None] * x.shape[0]
            for t in order:
                ih.append(inputs[t])
                hh.append(state[0] if isinstance(state, tuple) else state)
                state = cell(inputs[t], state)
                out[t] = state[0] if isinstance(state, tuple) else state
            rows[f"weight_ih{sfx}"] = torch.cat(ih)
            rows[f"weight_hh{sfx}"] = torch.cat(hh)
            outs.append(torch.stack(out))
        inputs = torch.cat(outs, dim=-1)
    return rows


@pytest.mark.parametrize("rnn", [
    nn.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True),
    nn.GRU(5, 3, num_layers=2),
    nn.RNN(5, 3, nonlinearity="relu"),
], ids=["lstm-2-bidirectional", "gru-2", "rnn-relu"])
def test_recurrent_rows_match_a_cell_loop(rnn):
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5)  # [steps, batch, features]
    given = x.transpose(0, 1) if rnn.batch_first else x
    with torch.no_grad():
        rows = rnn_rows(rnn, (given,), {})
        expected = _cell_loop(rnn, x)
    assert set(rows) == set(expected)
    for name, r in expected.items():
        # the same rows, possibly in another order (a Gram matrix does not see the order)
        assert torch.allclose(rows[name].T @ rows[name], r.T @ r, atol=1e-5), name


def test_attention_rows_reproduce_its_output_and_leave_it_unchanged():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    before = copy.deepcopy(mha.state_dict())
    x = torch.randn(3, 5, 8)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    with torch.no_grad():
        rows = mha_rows(mha, (x, x, x), {"attn_mask": mask}, {"in_proj_weight",
                                                              "out_proj.weight"})
        out, _ = mha(x, x, x, attn_mask=mask)
    assert torch.equal(rows["in_proj_weight"], x.reshape(-1, 8))
    rebuilt = mha.out_proj(rows["out_proj.weight"])
    assert torch.allclose(rebuilt, out.reshape(-1, 8), atol=1e-5)
    for k, v in mha.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_attention_with_separate_projections_reads_key_and_value():
    mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=4)
    q, k, v = torch.randn(5, 2, 8), torch.randn(7, 2, 6), torch.randn(7, 2, 4)
    with torch.no_grad():
        rows = mha_rows(mha, (q, k, v), {}, {"q_proj_weight", "k_proj_weight",
                                             "v_proj_weight"})
    assert [tuple(rows[p].shape) for p in ("q_proj_weight", "k_proj_weight",
                                           "v_proj_weight")] == [(10, 8), (14, 6), (14, 4)]


class _Decoder(nn.Module):
    """Cross-attention through a packed in_proj_weight: one weight, three inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.memory = nn.Parameter(torch.randn(1, 4, 8))

    def forward(self, x):
        memory = self.memory.expand(x.shape[0], -1, -1)
        return self.attn(x, memory, memory)[0]


def test_cross_attention_through_a_packed_weight_is_refused_by_name_before_any_change():
    model = _Decoder()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TargetError, match="attn.in_proj_weight: .*cross-attention"):
        compress(model, [torch.randn(2, 3, 8)], {"sparsity": 0.5}, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_transformer_encoder_compressed_with_true_attention_errors():
    """Every projection of nn.TransformerEncoder (its fused fast path turned off while
    calibrating) at an exact count; the error recorded for the first block's out_proj is
    the error of the attention's output, measured by running the attention with the dense
    and the compressed out_proj."""
    torch.manual_seed(0)
    model = _Classifier().eval()
    dense = copy.deepcopy(model)
    batches = [torch.randn(2, 5, 6) for _ in range(3)]
    result = compress(model, batches, [{"layers": "encoder.*", "sparsity": 0.5}],
                      method="admm", progress=False)
    names = [r.name for r in result.layers]
    assert names[:4] == ["encoder.layers.0.self_attn.in_proj_weight",
                         "encoder.layers.0.self_attn.out_proj.weight",
                         "encoder.layers.0.linear1.weight", "encoder.layers.0.linear2.weight"]
    for name, p in model.named_parameters():
        if name in names:
            assert int((p == 0).sum()) == prune_count(p.numel(), 0.5), name
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    with torch.no_grad():
        x = torch.cat([dense.embed(b) for b in batches])
        attn = dense.encoder.layers[0].self_attn
        out_dense = attn(x, x, x, need_weights=False)[0]
        mixed = copy.deepcopy(attn)
        mixed.out_proj.weight.copy_(model.encoder.layers[0].self_attn.out_proj.weight)
        out_mixed = mixed(x, x, x, need_weights=False)[0]
        measured = float(((out_mixed - out_dense) ** 2).sum()
                         / ((out_dense - attn.out_proj.bias) ** 2).sum())
    record = result.layers[1]
    assert abs(record.error - measured) < 1e-4 * max(1.0, measured)
    assert all(r.error < r.magnitude_error for r in result.layers)


def test_lstm_model_compressed_gate_by_gate():
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(6, 5, num_layers=2, batch_first=True)
            self.out = nn.Linear(5, 3)

        def forward(self, x):
            return self.out(self.rnn(x)[0])

    torch.manual_seed(0)
    model = Tagger()
    result = compress(model, [torch.randn(4, 9, 6) for _ in range(2)],
                      [{"layers": "rnn", "sparsity": 0.6}], method="admm", progress=False)
    assert [r.name for r in result.layers] == ["rnn.weight_ih_l0", "rnn.weight_hh_l0",
                                               "rnn.weight_ih_l1", "rnn.weight_hh_l1"]
    assert all(r.inputs == 72 for r in result.layers)  # every step of every sequence
    for r in result.layers:
        p = model.get_parameter(r.name)
        assert int((p == 0).sum()) == prune_count(p.numel(), 0.6), r.name
        assert r.error < r.magnitude_error, r.name
