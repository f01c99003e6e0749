"""Reports: counting on a hand-zeroed model, the report dict, and the files of a run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, TargetError
from prunekit.report import (
    build_report,
    format_report,
    layer_positions,
    layers_from_targets,
    plots,
    summarize,
    write_report,
)
from prunekit.schemes import get
from prunekit.targets import Target

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H, W = 6, 7  # input height and width (not square, so H/W mix-ups show)


def conv_out(size: int, k: int, stride: int = 1, pad: int = 0) -> int:
    return (size + 2 * pad - k) // stride + 1


class Net(nn.Module):
    """conv -> depthwise conv -> grouped 1x1 conv -> Conv1d over columns -> 2-layer
    bidirectional GRU -> Linear on every step -> mean over time -> Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
        self.gc = nn.Conv2d(4, 6, 1, groups=2)
        self.bn = nn.BatchNorm2d(6)
        self.c1d = nn.Conv1d(6 * 3, 8, 3, padding=1)
        self.gru = nn.GRU(8, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(10, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        x = self.bn(self.gc(self.dw(self.conv(x))))  # [B, 6, 3, 4]
        x = self.c1d(x.flatten(1, 2))  # [B, 8, 4]: the 4 columns are the sequence
        y, _ = self.gru(x.transpose(1, 2))  # [B, T=4, 10]
        return self.head(self.fc(y).mean(1))


#: output positions per sample, from the shape formulas
H2, W2 = conv_out(H, 3, 2, 1), conv_out(W, 3, 2, 1)
T = W2
POSITIONS = {"conv": H * W, "dw": H2 * W2, "gc": H2 * W2, "c1d": T, "gru": T, "fc": T, "head": 1}
#: exact zeros put in by hand (the rest of every parameter is in [0.1, 1])
ZEROED = {
    "conv.weight": 2 * 3 * 3,  # one whole filter
    "conv.bias": 1,
    "dw.weight": 4 * 3,  # top row of every depthwise kernel
    "c1d.weight": 8 * 17 * 3,  # all input channels but the first
    "gru.weight_hh_l0": 5 * 5,  # the whole reset gate of layer 0
    "fc.weight": 4,
}


def make_net(sparse: bool = True) -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(0.1, 1.0)
        if sparse:
            net.conv.weight[1] = 0
            net.conv.bias[0] = 0
            net.dw.weight[:, :, 0, :] = 0
            net.c1d.weight[:, 1:, :] = 0
            net.gru.weight_hh_l0[:5] = 0
            net.fc.weight[0, :4] = 0
    return net


def example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 2, H, W)


def irregular_layers(bits=None) -> dict:
    scheme = get("irregular")
    return {"conv.weight": (scheme, 1, bits), "c1d.weight": (scheme, 1, bits),
            "gru.weight_hh_l0": (scheme, 3, bits), "fc.weight": (scheme, 1, bits)}


@pytest.fixture(scope="module")
def net() -> Net:
    return make_net()


@pytest.fixture(scope="module")
def summary(net):
    return summarize(net, example(), layers=irregular_layers())


def rows(summary) -> dict:
    return {r.name: r for r in summary.layers}


# ------------------------------------------------------------------------- positions
@pytest.mark.parametrize("batch", [1, 3])
def test_positions_are_per_sample_for_every_layer_type(net, batch):
    assert layer_positions(net, example(batch)) == POSITIONS


def test_positions_of_seq_first_lstm_and_a_linear_called_twice():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4)  # input [T, B, F]
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.fc(self.fc(y[-1]))  # shared weights: two uses per sample

    model = Seq()
    assert layer_positions(model, torch.randn(5, 2, 3)) == {"lstm": 5, "fc": 2}
    summ = summarize(model, torch.randn(5, 2, 3))
    macs = {r.name: r.macs for r in summ.layers}
    assert macs == {"lstm.weight_ih_l0": 16 * 3 * 5, "lstm.weight_hh_l0": 16 * 4 * 5,
                    "fc.weight": 4 * 4 * 2}


def test_positions_restore_training_mode_and_accept_batch_of_one(net):
    net.train()
    layer_positions(net, example(1))  # BatchNorm in training mode would reject this batch
    assert net.training and net.bn.training
    net.eval()


# --------------------------------------------------------------------------- counting
def test_nonzeros_and_sparsity_per_layer(net, summary):
    by_name = rows(summary)
    params = dict(net.named_parameters())
    assert set(by_name) == {n for n, p in params.items() if p.dim() >= 2}
    for name, row in by_name.items():
        numel = params[name].numel()
        assert row.params == numel
        assert row.nonzeros == numel - ZEROED.get(name, 0)
        assert row.sparsity == pytest.approx(ZEROED.get(name, 0) / numel)
        assert row.shape == list(params[name].shape)


def test_conv_macs_follow_the_formula(summary):
    by_name = rows(summary)
    conv = 4 * 2 // 1 * 3 * 3 * H * W
    assert by_name["conv.weight"].macs_dense == conv
    assert by_name["conv.weight"].macs == conv * 3 // 4  # one filter of four is zero
    depthwise = 4 * 4 // 4 * 3 * 3 * H2 * W2
    assert by_name["dw.weight"].macs_dense == depthwise
    assert by_name["dw.weight"].macs == depthwise * 2 // 3  # one kernel row of three is zero
    grouped = 6 * 4 // 2 * 1 * 1 * H2 * W2
    assert by_name["gc.weight"].macs == by_name["gc.weight"].macs_dense == grouped
    assert by_name["c1d.weight"].macs_dense == 8 * 18 * 3 * T
    assert by_name["c1d.weight"].macs == 8 * 1 * 3 * T


def test_linear_and_gru_macs(summary):
    by_name = rows(summary)
    assert by_name["fc.weight"].macs_dense == 3 * 10 * T  # applied at every time step
    assert by_name["fc.weight"].macs == (3 * 10 - 4) * T
    assert by_name["head.weight"].macs == 2 * 3
    gru_shapes = {"weight_ih_l0": (15, 8), "weight_hh_l0": (15, 5),
                  "weight_ih_l1": (15, 10), "weight_hh_l1": (15, 5)}
    gru_dense = 0
    for base, (rows_, cols) in gru_shapes.items():
        for suffix in ("", "_reverse"):
            row = by_name[f"gru.{base}{suffix}"]
            assert row.macs_dense == rows_ * cols * T
            gru_dense += rows_ * cols * T
    assert by_name["gru.weight_hh_l0"].macs == (15 - 5) * 5 * T
    conv_macs = 4 * 2 * 9 * H * W + 4 * 9 * H2 * W2 + 6 * 2 * H2 * W2 + 8 * 18 * 3 * T
    assert summary.macs_dense == conv_macs + gru_dense + 3 * 10 * T + 2 * 3
    weight_zeros = {n: z for n, z in ZEROED.items() if n != "conv.bias"}
    assert summary.macs_compressed == summary.macs_dense - sum(
        z * POSITIONS[n.split(".")[0]] for n, z in weight_zeros.items())


def test_totals_and_compression_ratio(net, summary):
    total = sum(p.numel() for p in net.parameters())
    zeros = sum(ZEROED.values())
    assert summary.params_total == total
    assert summary.params_nonzero == total - zeros
    assert summary.compression_ratio == pytest.approx(total / (total - zeros))
    targeted = irregular_layers()
    params = dict(net.named_parameters())
    w_total = sum(params[n].numel() for n in targeted)
    w_zero = sum(ZEROED[n] for n in targeted)
    assert summary.compression_ratio_weights == pytest.approx(w_total / (w_total - w_zero))
    assert summary.compression_ratio_weights > summary.compression_ratio > 1


def test_dense_model_bytes_equal_and_ratio_one():
    net = make_net(sparse=False)
    summ = summarize(net, example())
    total = sum(p.numel() for p in net.parameters())
    assert summ.bytes_dense == summ.bytes_compressed == 4 * total
    assert summ.compression_ratio == summ.compression_ratio_weights == 1.0
    assert summ.macs_compressed == summ.macs_dense
    assert all(r.scheme == "dense" for r in summ.layers)


def test_sparse_bytes_use_csr_storage_and_bits(net, summary):
    by_name = rows(summary)
    assert summary.bytes_dense == 4 * summary.params_total
    assert summary.bytes_compressed < summary.bytes_dense
    # c1d keeps 24 of 432: CSR is 24 x (32-bit value + 6-bit column of 54) + 9 row pointers
    assert by_name["c1d.weight"].bytes == math.ceil((24 * (32 + 6) + 9 * 32) / 8)
    assert by_name["c1d.weight"].storage == "irregular"
    # fc keeps 26 of 30: CSR would be bigger than dense, so it stays dense
    assert by_name["fc.weight"].bytes == 4 * 30 and by_name["fc.weight"].storage == "dense"
    # untargeted but sparse: the cheaper of dense and CSR; dense weights: 4 bytes each
    assert by_name["dw.weight"].scheme == "irregular"
    assert by_name["dw.weight"].bytes == min(4 * 36, get("irregular").storage_bytes(
        net.dw.weight))
    assert by_name["gc.weight"].bytes == 4 * 12 and by_name["gc.weight"].scheme == "dense"
    at8 = rows(summarize(net, example(), layers=irregular_layers(bits=8)))
    assert at8["c1d.weight"].bits == 8
    assert at8["c1d.weight"].bytes == math.ceil((24 * (8 + 6) + 9 * 32) / 8)
    assert at8["gc.weight"].bytes == 4 * 12  # untargeted weights keep the default 32 bits


def test_mask_buffer_is_applied():
    net = make_net(sparse=False)
    mask = torch.ones_like(net.head.weight)
    mask[1] = 0
    net.head.register_buffer("weight_mask", mask)
    row = rows(summarize(net, example()))["head.weight"]
    assert row.nonzeros == 3 and row.macs == 3


def test_layers_from_targets_matches_tuples(net, summary):
    scheme = get("irregular")
    targets = [
        Target(name, name.rsplit(".", 1)[0], dict(net.named_parameters())[name], scheme, 0.5,
               "x", gates)
        for name, (_, gates, _) in irregular_layers().items()
    ]
    layers = layers_from_targets(targets)
    assert set(layers) == set(irregular_layers())
    again = summarize(net, example(), layers=layers)
    assert [r.bytes for r in again.layers] == [r.bytes for r in summary.layers]


def test_filter_pruned_layer_uses_the_filter_scheme_storage():
    net = make_net(sparse=False)
    with torch.no_grad():
        net.c1d.weight[2:] = 0  # six of eight output filters
    filt = get("filter")
    row = rows(summarize(net, example(), layers={"c1d.weight": filt}))["c1d.weight"]
    assert row.scheme == "filter" and row.storage == "filter"
    assert row.nonzeros == 2 * 18 * 3 and row.macs == 2 * 18 * 3 * T
    assert row.bytes == filt.storage_bytes(net.c1d.weight)
    csr = rows(summarize(net, example(), layers={"c1d.weight": "irregular"}))["c1d.weight"]
    assert row.bytes < csr.bytes < row.bytes_dense  # whole rows need no column indices


# ------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_prunekit_errors(net):
    with pytest.raises(ConfigError, match="example input"):
        summarize(net, torch.randn(2, 3, H, W))
    with pytest.raises(ConfigError, match="example input"):
        summarize(net, "not a tensor")
    with pytest.raises(TargetError, match="nope.weight"):
        summarize(net, example(), layers={"nope.weight": "irregular"})
    with pytest.raises(ConfigError, match="fc.weight"):
        summarize(net, example(), layers={"fc.weight": ("irregular", 0, 8)})
    with pytest.raises(ConfigError, match="unknown scheme"):
        summarize(net, example(), layers={"fc.weight": "no-such-scheme"})
    with pytest.raises(ConfigError, match="nn.Module"):
        summarize("model", example())
    with pytest.raises(ConfigError, match="accuracy_dense"):
        build_report(net, example(), accuracy_dense=91.2)
    with pytest.raises(ConfigError, match="history"):
        build_report(net, example(), history={"loss": 1.0})


# --------------------------------------------------------------------------- report
HISTORY = [
    {"stage": "train", "epoch": 1, "loss": 1.2, "train_accuracy": 0.5, "test_accuracy": 0.6},
    {"stage": "admm", "epoch": 1, "loss": torch.tensor(0.9), "train_accuracy": 0.7,
     "test_accuracy": 0.72, "primal": 0.3, "dual": 0.05},
    {"stage": "admm", "epoch": 2, "loss": 0.8, "train_accuracy": 0.75,
     "test_accuracy": float("nan"), "primal": 0.02, "dual": 0.01},
    {"stage": "retrain", "epoch": 1, "loss": 0.5, "train_accuracy": 0.8, "test_accuracy": 0.78},
]


@pytest.fixture(scope="module")
def report(net):
    return build_report(net, example(), layers=irregular_layers(), accuracy_dense=0.81,
                        accuracy_compressed=0.78, method="admm", epochs=4, seconds=12.5,
                        history=HISTORY, extra={"recipe": "lenet.yaml"})


def test_report_fields_and_json_round_trip(report, summary):
    assert report["accuracy"] == {"dense": 0.81, "compressed": 0.78}
    assert report["params"]["total"] == summary.params_total
    assert report["params"]["nonzero"] == summary.params_nonzero
    assert report["compression_ratio"] == summary.compression_ratio
    assert report["macs"]["dense"] == summary.macs_dense
    assert report["macs"]["compressed"] == summary.macs_compressed
    assert report["bytes"]["dense"] == summary.bytes_dense
    assert report["bytes"]["compressed"] == summary.bytes_compressed
    assert (report["method"], report["epochs"], report["seconds"]) == ("admm", 4, 12.5)
    assert report["extra"] == {"recipe": "lenet.yaml"}
    assert report["history"][1]["loss"] == pytest.approx(0.9)
    assert report["history"][2]["test_accuracy"] is None  # NaN is not JSON
    for layer in report["layers"]:
        assert {"name", "shape", "scheme", "sparsity", "bits", "nonzeros", "macs",
                "bytes"} <= set(layer)
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_format_report_names_every_layer_and_the_totals(report):
    text = format_report(report)
    for layer in report["layers"]:
        assert layer["name"] in text
    assert f"{report['compression_ratio']:.2f}x" in text
    assert "81.00% -> 78.00%" in text


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000


def test_write_report_creates_every_file(tmp_path, net, report):
    before = {n: dict(net.named_parameters())[n].detach().clone()
              for n in ("conv.weight", "c1d.weight", "fc.weight")}
    after = {n: w * (w.abs() > 0.5) for n, w in before.items()}
    written = write_report(tmp_path / "run", report, weights_before=before,
                           weights_after=after)
    run = tmp_path / "run"
    expected = ["admm_residuals.png", "report.json", "report.md", "sparsity.png",
                "training.png", "weights.png"]
    assert _files(run) == expected  # and no temp files left behind
    assert sorted(p.name for p in written) == expected
    for name in expected:
        if name.endswith(".png"):
            _assert_png(run / name)
    assert json.loads((run / "report.json").read_text()) == report
    md = (run / "report.md").read_text()
    table = md.split("## Layers", 1)[1].split("##", 1)[0]
    table_rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 1 + len(report["layers"])  # header + one row per layer
    for layer in report["layers"]:
        assert f"| {layer['name']} |" in table
    for name in expected:
        if name.endswith(".png"):
            assert f"({name})" in md
    assert "admm" in md and "81.00%" in md


def test_write_report_without_residuals_or_history(tmp_path, net):
    plain = build_report(net, example())
    history = [{k: v for k, v in r.items() if k not in ("primal", "dual")} for r in HISTORY]
    write_report(tmp_path / "a", plain, history=history)
    assert _files(tmp_path / "a") == ["report.json", "report.md", "sparsity.png",
                                      "training.png"]
    assert "admm_residuals" not in (tmp_path / "a" / "report.md").read_text()
    write_report(tmp_path / "b", plain, history=[])
    assert _files(tmp_path / "b") == ["report.json", "report.md", "sparsity.png",
                                      "training.png"]
    _assert_png(tmp_path / "b" / "training.png")
    write_report(tmp_path / "c", plain)
    assert _files(tmp_path / "c") == ["report.json", "report.md", "sparsity.png"]


def test_plots_handle_empty_and_partial_inputs():
    assert not plots.has_residuals([]) and not plots.has_residuals(None)
    assert plots.has_residuals(HISTORY)
    for png in (plots.residuals_png([]), plots.sparsity_png([]),
                plots.training_png([{"stage": "train", "epoch": 1}]),
                plots.weights_png({"w": torch.zeros(3, 3)}, None)):
        assert png.startswith(PNG_SIGNATURE)


def test_write_report_rejects_a_file_as_run_dir(tmp_path, report):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        write_report(target, report)
    with pytest.raises(ConfigError, match="build_report"):
        write_report(tmp_path / "run", {"method": "admm"})
