"""Reports: counting on a hand-zeroed model, the report dict, and the files of a run."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from torch import nn

from prunekit import artifacts
from prunekit.constraints import Levels, Support
from prunekit.errors import ConfigError, TargetError
from prunekit.report import (
    build_report,
    format_report,
    layer_positions,
    plots,
    summarize,
    write_report,
)

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


IRREGULAR = ("conv.weight", "c1d.weight", "gru.weight_hh_l0", "fc.weight")


def irregular_constraints(net: nn.Module, names=IRREGULAR) -> dict:
    """Support constraints that keep the nonzeros the weights already have."""
    params = dict(net.named_parameters())
    return {n: Support(params[n].detach() != 0, {"scheme": "irregular"}) for n in names}


@pytest.fixture(scope="module")
def net() -> Net:
    return make_net()


@pytest.fixture(scope="module")
def summary(net):
    return summarize(net, example(), irregular_constraints(net))


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
    targeted = IRREGULAR
    params = dict(net.named_parameters())
    w_total = sum(params[n].numel() for n in targeted)
    w_zero = sum(ZEROED[n] for n in targeted)
    assert summary.compression_ratio_weights == pytest.approx(w_total / (w_total - w_zero))
    assert summary.compression_ratio_weights > summary.compression_ratio > 1


def test_dense_model_bytes_equal_and_ratio_one():
    net = make_net(sparse=False)
    summ = summarize(net, example())
    total = sum(p.numel() for p in net.parameters())
    assert summ.bytes_dense == 4 * total
    # the file of a model without constraints: every tensor raw in "rest" (buffers too)
    assert summ.bytes_compressed == len(artifacts.pack(net))
    assert set(k for k, v in summ.bytes_parts.items() if v) == {"rest", "manifest", "header"}
    assert summ.compression_ratio == summ.compression_ratio_weights == 1.0
    assert summ.macs_compressed == summ.macs_dense
    assert all(r.scheme == "dense" for r in summ.layers)


def test_bytes_are_those_of_the_model_file(net, summary):
    by_name = rows(summary)
    constraints = irregular_constraints(net)
    data = artifacts.pack(net, constraints)
    assert summary.bytes_dense == 4 * summary.params_total
    assert summary.bytes_compressed == len(data) < summary.bytes_dense
    assert sum(summary.bytes_parts.values()) == summary.bytes_compressed
    stored = artifacts.storage(data)["layers"]
    for name in IRREGULAR:  # compressed weights: their parts in the file
        row = by_name[name]
        assert row.parts == stored[name]["parts"] and row.bytes == sum(row.parts.values())
        assert row.storage == stored[name]["encoding"] != "dense"
        assert row.scheme == "irregular" and row.bits == 32
    # c1d keeps 24 of 432: its index is far smaller than the values of a dense layer
    assert by_name["c1d.weight"].bytes < 4 * 432
    # a weight without a constraint is stored raw, whatever zeros it holds
    for name in ("dw.weight", "gc.weight"):
        row = by_name[name]
        assert (row.scheme, row.storage, row.parts) == ("dense", "dense", {})
        assert row.bytes == 4 * row.params


def test_summary_with_storage_reads_the_given_file(net, summary):
    data = artifacts.pack(net, irregular_constraints(net))
    again = summarize(net, example(), irregular_constraints(net), artifacts.storage(data))
    assert again.bytes_compressed == summary.bytes_compressed
    assert [r.bytes for r in again.layers] == [r.bytes for r in summary.layers]


def test_quantized_layer_reports_its_frozen_bits():
    net = make_net(sparse=False)
    w = net.head.weight.detach()
    levels = Levels(torch.ones_like(w, dtype=torch.bool), torch.full((2,), 0.25), 3,
                    hints={"scheme": "quant"})
    with torch.no_grad():
        levels.apply_(net.head.weight)
    row = rows(summarize(net, example(), {"head.weight": levels}))["head.weight"]
    assert (row.scheme, row.bits) == ("quant", 3)
    assert row.parts["values"] == 3  # six 3-bit codes in three bytes


def test_filter_pruned_layer_uses_a_row_index():
    net = make_net(sparse=False)
    with torch.no_grad():
        net.c1d.weight[2:] = 0  # six of eight output filters
    mask = net.c1d.weight.detach() != 0
    filt = rows(summarize(net, example(), {"c1d.weight": Support(mask, {"scheme": "filter"})}))
    row = filt["c1d.weight"]
    assert row.scheme == "filter" and row.storage == "rows"
    assert row.nonzeros == 2 * 18 * 3 and row.macs == 2 * 18 * 3 * T
    assert row.bytes < row.bytes_dense / 3  # whole rows need no column indices


# ------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_prunekit_errors(net):
    with pytest.raises(ConfigError, match="example input"):
        summarize(net, torch.randn(2, 3, H, W))
    with pytest.raises(ConfigError, match="example input"):
        summarize(net, "not a tensor")
    mask = torch.ones(3, 10, dtype=torch.bool)
    with pytest.raises(TargetError, match="nope.weight"):
        summarize(net, example(), {"nope.weight": Support(mask)})
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
    return build_report(net, example(), constraints=irregular_constraints(net),
                        accuracy_dense=0.81,
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
    expected = ["report.json", "report.md", "sparsity.png", "training.png", "weights.png"]
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
    for png in (plots.sparsity_png([]),
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


def test_convergence_plot_shows_reallocated_rates(net):
    from prunekit.methods import ADMM  # noqa: PLC0415
    from prunekit.report.plots import convergence_figure  # noqa: PLC0415
    from prunekit.targets import resolve  # noqa: PLC0415

    histories = {}
    for reallocate in (False, True):
        model = copy.deepcopy(net)
        targets = resolve(model, [{"layers": ["conv", "fc"], "scheme": "irregular",
                                   "sparsity": 0.5}])
        pruner = ADMM(model, targets, rho=0.1, reallocate=reallocate)
        rates = []
        for _ in range(2):
            pruner.update()
            rates.append({t.name: t.sparsity for t in targets})
        histories[reallocate] = (pruner.history, rates)
    assert len(convergence_figure(histories[False][0]).axes) == 2
    history, rates = histories[True]
    axes = convergence_figure(history).axes
    assert len(axes) == 3 and axes[2].get_title() == "layer rate (reallocated)"
    lines = {line.get_label(): [float(y) for y in line.get_ydata()]
             for line in axes[2].get_lines()}
    assert lines == {name: [r[name] for r in rates] for name in rates[0]}


def test_admm_updates_give_a_convergence_plot_and_line(tmp_path, net):
    from prunekit.methods import ADMM  # noqa: PLC0415
    from prunekit.targets import resolve  # noqa: PLC0415

    model = copy.deepcopy(net)
    targets = resolve(model, [{"layers": ["conv", "fc"], "scheme": "irregular",
                               "sparsity": 0.5}])
    pruner = ADMM(model, targets, rho=0.1, tol_primal=10.0)
    with torch.no_grad():
        model.conv.weight.mul_(0.9)
    pruner.update()
    plain = build_report(model, example(), updates=pruner.history)
    assert plain["prune_updates"][0]["layers"].keys() == {"conv.weight", "fc.weight"}
    write_report(tmp_path / "run", plain)
    _assert_png(tmp_path / "run" / "admm_convergence.png")
    md = (tmp_path / "run" / "report.md").read_text()
    last = pruner.history[0]
    assert (f"ADMM converged at Z/U update 1 (epoch 0) and stopped early: relative primal "
            f"residual {last['relative_primal']:.3g}") in md
    assert "converged at Z/U update 1" in format_report(plain)
    # without a tolerance: the line says all updates ran
    other = copy.deepcopy(net)
    again = ADMM(other, resolve(other, [{"layers": ["fc"], "scheme": "irregular",
                                         "sparsity": 0.5}]))
    again.update()
    again.update()
    assert "ADMM ran all 2 Z/U updates" in format_report(
        build_report(net, example(), updates=again.history))
    assert plots.layer_updates(HISTORY) == []  # per-epoch records are not updates


# ------------------------------------------------------------ accuracy at each step
#: ADMM's loss includes its penalty; the task loss is recorded beside it
STAGED_HISTORY = [
    {"stage": "pretrain", "epoch": 1, "loss": 1.0, "task_loss": 1.0, "penalty": 0.0,
     "train_accuracy": 0.6, "test_accuracy": 0.62, "test_loss": 0.9},
    {"stage": "pretrain", "epoch": 2, "loss": 0.7, "task_loss": 0.7, "penalty": 0.0,
     "train_accuracy": 0.8, "test_accuracy": 0.84, "test_loss": 0.6},
    {"stage": "prune", "epoch": 1, "loss": 0.9, "task_loss": 0.6, "penalty": 0.3,
     "train_accuracy": 0.82, "test_accuracy": 0.8, "test_loss": 0.65},
    {"stage": "retrain", "epoch": 1, "loss": 0.5, "task_loss": 0.5, "penalty": 0.0,
     "train_accuracy": 0.85, "test_accuracy": 0.83, "test_loss": 0.55},
]
STAGE_ACCURACY = [{"stage": "prune", "when": "after hardening", "accuracy": 0.126},
                  {"stage": "retrain", "when": "end", "accuracy": 0.83}]


def staged_report(net):
    return build_report(net, example(), accuracy_dense=0.84, accuracy_compressed=0.83,
                        history=STAGED_HISTORY,
                        extra={"recipe": "r", "stage_accuracy": STAGE_ACCURACY})


def test_stage_accuracy_reaches_the_json_the_markdown_and_the_terminal(tmp_path, net):
    report = staged_report(net)
    assert report["stage_accuracy"] == STAGE_ACCURACY
    assert "stage_accuracy" not in report["extra"] and report["extra"]["recipe"] == "r"
    write_report(tmp_path, report)
    assert json.loads((tmp_path / "report.json").read_text())["stage_accuracy"] == STAGE_ACCURACY
    md = (tmp_path / "report.md").read_text()
    table = md.split("## Accuracy by stage", 1)[1].split("##", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["| dense | trained | 84.00% |", "| prune | after hardening | 12.60% |",
                    "| retrain | end | 83.00% |", "| compressed | model file | 83.00% |"]
    assert re.search(r"^prune +after hardening +12\.60%$", format_report(report), re.M)


@pytest.mark.parametrize("bad", [{"stage": "prune"}, [{"stage": "prune", "when": "end",
                                                       "accuracy": 83}], [3]])
def test_malformed_stage_accuracy_is_a_config_error(net, bad):
    with pytest.raises(ConfigError, match="stage_accuracy"):
        build_report(net, example(), extra={"stage_accuracy": bad})


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_training_plot_marks_stages_dense_accuracy_and_hardening(net):
    fig = plots.training_figure(STAGED_HISTORY, dense_accuracy=0.84,
                                stage_accuracy=STAGE_ACCURACY)
    accuracy, loss = fig.axes
    # every stage is named on both panels; one-epoch stages label their points
    for ax in (accuracy, loss):
        assert {"pretrain", "prune", "retrain"} <= set(_texts(ax))
    assert {"prune test 80.0%", "prune train 82.0%", "retrain test 83.0%"} <= set(_texts(accuracy))
    assert {"prune train 0.9", "prune task 0.6"} <= set(_texts(loss))
    # the dense model's accuracy as a level line, and a star just after the prune stage
    levels = [line for line in accuracy.get_lines() if list(line.get_ydata()) == [0.84, 0.84]]
    assert levels and levels[0].get_linestyle() == "-."
    stars = {(float(line.get_xdata()[0]), float(line.get_ydata()[0]))
             for line in accuracy.get_lines() if line.get_marker() == "*"}
    assert stars == {(3.5, 0.126), (4.0, 0.83)}
    assert "prune after hardening: 12.6%" in _texts(accuracy)
    legend = [t.get_text() for t in accuracy.get_legend().get_texts()]
    assert "dense model 84.0%" in legend
    # the loss with ADMM's penalty and the task loss are two lines
    labels = [t.get_text() for t in loss.get_legend().get_texts()]
    assert "train loss (with the method's penalty)" in labels
    assert "train task loss (no penalty)" in labels
    dotted = [list(line.get_ydata()) for line in loss.get_lines() if line.get_linestyle() == ":"]
    assert [0.6] in dotted  # the prune epoch's task loss, not its 0.9 with the penalty


def test_training_plot_without_a_penalty_has_one_train_loss():
    plain = [{k: v for k, v in r.items() if k != "penalty"} for r in STAGED_HISTORY]
    _, loss = plots.training_figure(plain).axes
    labels = [t.get_text() for t in loss.get_legend().get_texts()]
    assert "train loss" in labels and not any("task" in label for label in labels)


def test_written_training_plot_uses_the_report(tmp_path, net, monkeypatch):
    """write_report hands the dense accuracy and the stage points to the plot."""
    seen = {}
    real = plots.training_png

    def spy(history, **kwargs):
        seen.update(kwargs)
        return real(history, **kwargs)

    monkeypatch.setattr(plots, "training_png", spy)
    write_report(tmp_path, staged_report(net))
    assert seen == {"dense_accuracy": 0.84, "stage_accuracy": STAGE_ACCURACY}
    _assert_png(tmp_path / "training.png")


def test_support_change_panel_explains_its_ceiling(net):
    from prunekit.methods import ADMM  # noqa: PLC0415
    from prunekit.targets import resolve  # noqa: PLC0415

    model = copy.deepcopy(net)
    pruner = ADMM(model, resolve(model, [{"layers": ["conv", "fc"], "scheme": "irregular",
                                          "sparsity": 0.5}]), rho=0.1)
    for _ in range(2):
        pruner.update()
    _, support = plots.convergence_figure(pruner.history).axes
    assert "2.0 = every kept weight replaced" in support.get_xlabel()
    assert any(list(line.get_ydata()) == [2.0, 2.0] for line in support.get_lines())
    assert "all layers" in [t.get_text() for t in support.get_legend().get_texts()]
