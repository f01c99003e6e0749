"""Rules -> targets: selection, overrides, tables, global allocation and the errors users see."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit import schemes
from prunekit.errors import TargetError
from prunekit.schemes import Scheme, count_to_prune
from prunekit.targets import (
    SUPPORTED_TYPES,
    allocate_global,
    freeze,
    prunable_layers,
    rate_tables,
    resolve,
    sparsity_report,
)


class Small(nn.Module):
    """Conv (plain, depthwise, 1x1) + BatchNorm + Conv1d + LSTM + GRU + Embedding + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3),                  # features.0
            nn.BatchNorm2d(8),                   # features.1
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, groups=8),        # features.3 (depthwise)
            nn.Conv2d(8, 16, 1),                 # features.4
        )
        self.temporal = nn.Conv1d(4, 6, 3)
        self.lstm = nn.LSTM(16, 12, bidirectional=True)
        self.gru = nn.GRU(24, 6)
        self.emb = nn.Embedding(20, 16)
        self.head = nn.Linear(6, 10)


class LeNet5Shape(nn.Module):
    """The Caffe LeNet-5 the ADMM papers prune: 430,500 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)


@pytest.fixture
def model() -> Small:
    torch.manual_seed(0)
    return Small()


def project_in_place(targets):
    """Write every target's projection into its weight (hardening without its records)."""
    with torch.no_grad():
        for t in targets:
            t.param.copy_(t.project())


def names(targets):
    return [t.name for t in targets]


def by_name(targets):
    return {t.name: t for t in targets}


# ----------------------------------------------------------------- selection
def test_prunable_layers_are_supported_types_only(model):
    layers = prunable_layers(model)
    assert list(layers) == ["features.0", "features.3", "features.4", "temporal", "lstm",
                            "gru", "emb", "head"]
    assert "features.1" not in layers  # BatchNorm


def test_default_rule_selects_every_weight_but_no_bias_norm_or_embedding(model):
    targets = resolve(model, [{"sparsity": 0.5}])
    assert names(targets) == [
        "features.0.weight", "features.3.weight", "features.4.weight", "temporal.weight",
        "lstm.weight_ih_l0", "lstm.weight_hh_l0",
        "lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse",
        "gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight",
    ]
    assert all("bias" not in n and not n.startswith("features.1") for n in names(targets))
    assert {t.scheme_name for t in targets} == {"irregular"}
    assert all(t.sparsity == 0.5 for t in targets)


def test_glob_types_and_exclude(model):
    targets = resolve(model, [{"layers": "features.*", "types": ["Conv2d"],
                               "exclude": "features.3", "sparsity": 0.5}])
    assert names(targets) == ["features.0.weight", "features.4.weight"]
    targets = resolve(model, [{"layers": ["head", "temporal"], "sparsity": 0.5}])
    assert names(targets) == ["temporal.weight", "head.weight"]
    targets = resolve(model, [{"types": "Conv1d", "sparsity": 0.5}])
    assert names(targets) == ["temporal.weight"]


def test_recurrent_weights_carry_their_gate_count(model):
    targets = by_name(resolve(model, [{"types": ["LSTM", "GRU"], "sparsity": 0.5}]))
    assert {n: t.gates for n, t in targets.items()} == {
        "lstm.weight_ih_l0": 4, "lstm.weight_hh_l0": 4,
        "lstm.weight_ih_l0_reverse": 4, "lstm.weight_hh_l0_reverse": 4,
        "gru.weight_ih_l0": 3, "gru.weight_hh_l0": 3,
    }
    project_in_place(targets.values())
    for name, gates in (("lstm.weight_hh_l0", 4), ("gru.weight_hh_l0", 3)):
        for gate in targets[name].param.detach().chunk(gates, dim=0):
            assert int((gate == 0).sum()) == count_to_prune(gate.numel(), 0.5)


def test_depthwise_conv_is_pruned_like_any_conv(model):
    [target] = resolve(model, [{"layers": "features.3", "sparsity": 0.5}])
    assert target.shape == (8, 1, 3, 3) and target.layer_type == "Conv2d"
    project_in_place([target])
    assert int((target.param == 0).sum()) == 36


def test_embedding_only_when_named(model):
    assert "emb.weight" not in names(resolve(model, [{"layers": "*", "sparsity": 0.5}]))
    assert names(resolve(model, [{"layers": "emb", "sparsity": 0.5}])) == ["emb.weight"]
    assert names(resolve(model, [{"types": ["Embedding"], "sparsity": 0.5}])) == ["emb.weight"]


def test_wrapped_model_matches_with_or_without_module_prefix(model):
    wrapped = nn.DataParallel(model)
    assert names(resolve(wrapped, [{"layers": "head", "sparsity": 0.5}])) == ["module.head.weight"]
    assert names(resolve(wrapped, [{"layers": "module.head", "sparsity": 0.5}])) == [
        "module.head.weight"]


def test_nested_container_names(model):
    outer = nn.Sequential(nn.ModuleDict({"net": model}))
    targets = resolve(outer, [{"layers": "0.net.features.*", "sparsity": 0.3}])
    assert names(targets) == ["0.net.features.0.weight", "0.net.features.3.weight",
                              "0.net.features.4.weight"]


# ------------------------------------------------------------- rates and rules
def test_later_rules_override_earlier_ones(model):
    targets = by_name(resolve(model, [
        {"sparsity": 0.5},
        {"layers": "head", "sparsity": 0.9},
        {"layers": "lstm", "exclude": True},
    ]))
    assert targets["head.weight"].sparsity == 0.9
    assert targets["features.0.weight"].sparsity == 0.5
    assert not any(n.startswith("lstm.") for n in targets)


@pytest.mark.parametrize("table", [
    {"features.*": 0.3, "features.0": 0.6},
    {"features.0": 0.6, "features.*": 0.3},  # an exact name beats a glob in either order
])
def test_per_layer_dict_table(model, table):
    targets = by_name(resolve(model, [{"sparsity": table}]))
    assert {n: t.sparsity for n, t in targets.items()} == {
        "features.0.weight": 0.6, "features.3.weight": 0.3, "features.4.weight": 0.3}


def test_scheme_options_are_passed_with_lists_as_tuples(model, monkeypatch):
    seen = {}
    real_get = schemes.get

    def spy(name, **options):
        seen.update(name=name, **options)
        return real_get("irregular")

    monkeypatch.setattr(schemes, "get", spy)
    resolve(model, [{"layers": "head", "scheme": "block", "block": [8, 4], "sparsity": 0.5}])
    assert seen == {"name": "block", "block": (8, 4)}


def test_published_table_on_lenet5():
    torch.manual_seed(0)
    net = LeNet5Shape()
    targets = resolve(net, [{"sparsity": "lenet5-admm-71x"}])
    assert {t.module_name: t.sparsity for t in targets} == {
        "conv1": 0.80, "conv2": 0.92, "fc1": 0.991, "fc2": 0.93}
    project_in_place(targets)
    kept = {t.module_name: int(torch.count_nonzero(t.param)) for t in targets}
    assert kept == {"conv1": 100, "conv2": 2000, "fc1": 3600, "fc2": 350}
    total = sum(t.numel for t in targets)
    assert total == 430_500
    assert total / sum(kept.values()) == pytest.approx(71.2, abs=0.1)
    assert rate_tables.get("lenet5-admm-71x").ratio == 71.2


def test_sparsity_report_measures_the_weight(model):
    targets = resolve(model, [{"layers": "head", "sparsity": 0.5}])
    [before] = sparsity_report(targets)
    assert before["achieved"] == 0.0 and before["nonzeros"] == 60
    project_in_place(targets)
    [row] = sparsity_report(targets)
    assert row == {"name": "head.weight", "layer": "head", "type": "Linear", "shape": [10, 6],
                   "scheme": "irregular", "requested": 0.5, "achieved": 0.5,
                   "nonzeros": 30, "numel": 60}


# ---------------------------------------------------------- global allocation
class ThreeLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Linear(40, 30)
        self.b = nn.Linear(30, 20)   # weights scaled down: should be pruned hardest
        self.c = nn.Linear(20, 10)
        with torch.no_grad():
            self.b.weight.mul_(0.5)


def zeros(targets):
    return sum(int((t.param == 0).sum()) for t in targets)


def test_global_allocation_meets_overall_rate_and_prefers_small_weights():
    net = ThreeLinear()
    targets = resolve(net, [{"sparsity": 0.6, "allocation": "global"}])
    rates = {t.module_name: t.sparsity for t in targets}
    assert rates["b"] > rates["a"] and rates["b"] > rates["c"]
    assert len(set(rates.values())) == 3
    before = torch.cat([t.param.detach().abs().reshape(-1) for t in targets])
    project_in_place(targets)
    total = sum(t.numel for t in targets)
    assert abs(zeros(targets) - 0.6 * total) <= 1
    # one threshold: every surviving weight is larger than every pruned one
    after = torch.cat([t.param.detach().reshape(-1) for t in targets])
    assert before[after != 0].min() >= before[after == 0].max()


def test_global_allocation_respects_clamps():
    net = ThreeLinear()
    targets = resolve(net, [{"sparsity": 0.6, "allocation": "global", "max_sparsity": 0.7}])
    assert all(t.sparsity <= 0.7 for t in targets)
    assert max(t.sparsity for t in targets) == pytest.approx(0.7, abs=1e-9)  # b hits the cap
    project_in_place(targets)
    assert abs(zeros(targets) - 0.6 * sum(t.numel for t in targets)) <= 1

    net = ThreeLinear()
    targets = resolve(net, [{"sparsity": 0.6, "allocation": "global", "min_sparsity": 0.55}])
    assert all(t.sparsity >= 0.55 for t in targets)
    project_in_place(targets)
    assert abs(zeros(targets) - 0.6 * sum(t.numel for t in targets)) <= 1


def test_global_allocation_rejects_impossible_clamps():
    with pytest.raises(TargetError, match="min_sparsity 0.9 prunes"):
        resolve(ThreeLinear(), [{"sparsity": 0.5, "allocation": "global", "min_sparsity": 0.9}])
    with pytest.raises(TargetError, match="max_sparsity 0.2 .* allows at most"):
        resolve(ThreeLinear(), [{"sparsity": 0.5, "allocation": "global", "max_sparsity": 0.2}])
    with pytest.raises(TargetError, match="applies only with allocation: global"):
        resolve(ThreeLinear(), [{"sparsity": 0.5, "min_sparsity": 0.1}])


def test_global_allocation_of_groups_compares_rms():
    net = ThreeLinear()
    targets = resolve(net, [{"scheme": "filter", "sparsity": 0.5, "allocation": "global"}])
    project_in_place(targets)
    total = sum(t.numel for t in targets)
    assert abs(zeros(targets) - 0.5 * total) <= max(t.shape[1] for t in targets) / 2
    # whole rows go, and the layer scaled down loses the most rows
    rates = {t.module_name: t.achieved_sparsity() for t in targets}
    assert rates["b"] == max(rates.values())


def test_allocate_global_directly_never_prunes_a_layer_entirely():
    net = ThreeLinear()
    with torch.no_grad():
        net.b.weight.mul_(1e-6)
    targets = resolve(net, [{"sparsity": 0.3}])
    allocate_global(targets, 0.3)
    assert all(t.sparsity < 1.0 for t in targets)
    assert by_name(targets)["b.weight"].sparsity == pytest.approx(599 / 600)


# ---------------------------------------------------------------------- errors
def test_pattern_matching_no_layer_lists_prunable_layers(model):
    with pytest.raises(TargetError) as err:
        resolve(model, [{"sparsity": 0.5}, {"layers": "classifier.*", "sparsity": 0.5}])
    message = str(err.value)
    assert "rule 1" in message and "'classifier.*' matches no layer" in message
    assert "features.0 (Conv2d)" in message and "head (Linear)" in message


def test_exclude_and_table_keys_must_match(model):
    with pytest.raises(TargetError, match="exclude 'feature.9' matches no layer.*features.0"):
        resolve(model, [{"exclude": "feature.9", "sparsity": 0.5}])
    with pytest.raises(TargetError, match="table key 'fc9' matches no selected layer"):
        resolve(model, [{"sparsity": {"fc9": 0.5}}])


def test_unsupported_types_are_named_with_the_supported_list(model):
    with pytest.raises(TargetError) as err:
        resolve(model, [{"types": ["BatchNorm2d"], "sparsity": 0.5}])
    assert "'BatchNorm2d'" in str(err.value)
    assert all(name in str(err.value) for name in SUPPORTED_TYPES)
    with pytest.raises(TargetError, match="layer 'features.1' is a BatchNorm2d.*supported types"):
        resolve(model, [{"layers": "features.1", "sparsity": 0.5}])
    with pytest.raises(TargetError, match="'head.bias' names parameters.*biases are never"):
        resolve(model, [{"layers": "head.bias", "sparsity": 0.5}])
    with pytest.raises(TargetError, match="none of the layers .* is of types"):
        resolve(model, [{"layers": "head", "types": ["Conv2d"], "sparsity": 0.5}])


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, True])
def test_rates_outside_unit_interval_name_the_layer(model, rate):
    with pytest.raises(TargetError, match=r"sparsity of layer 'head' must be a number in \[0, 1\)"):
        resolve(model, [{"layers": "head", "sparsity": rate}])


def test_table_rates_are_checked_per_layer_and_sparsity_is_required(model):
    with pytest.raises(TargetError, match="sparsity of layer 'features.3'.*got 2"):
        resolve(model, [{"sparsity": {"features.*": 0.5, "features.3": 2}}])
    with pytest.raises(TargetError, match="rule 0: 'sparsity' is required for scheme 'irregular'"):
        resolve(model, [{"layers": "head"}])


def test_unknown_table_lists_published_tables(model):
    with pytest.raises(TargetError, match="unknown sparsity table 'lenet9'.*lenet5-admm-71x"):
        resolve(model, [{"sparsity": "lenet9"}])


def test_unknown_rule_key_names_the_rule_and_suggests(model):
    with pytest.raises(TargetError) as err:
        resolve(model, [{"sparsity": 0.5}, {"layers": "head", "sparsit": 0.5}])
    message = str(err.value)
    assert message.startswith("rule 1:")
    assert "'sparsit'" in message and "did you mean 'sparsity'" in message
    with pytest.raises(TargetError, match="rule 0: unknown scheme 'irregularr'"):
        resolve(model, [{"scheme": "irregularr", "sparsity": 0.5}])
    with pytest.raises(TargetError, match="allocation must be one of"):
        resolve(model, [{"sparsity": 0.5, "allocation": "layerwise"}])


class SquareOnly(Scheme):
    """A scheme that fits only square GEMM matrices (to test the fit check)."""

    name = "square-only"

    def check(self, shape, *, gates=1):
        super().check(shape, gates=gates)
        if shape[0] != int(torch.tensor(shape[1:]).prod()):
            raise TargetError(f"needs a square matrix, got {tuple(shape)}")


def test_scheme_that_does_not_fit_a_layer_names_it(model):
    with pytest.raises(TargetError) as err:
        resolve(model, [{"layers": "head", "scheme": SquareOnly(), "sparsity": 0.5}])
    assert "layer 'head'" in str(err.value) and "(10, 6)" in str(err.value)


def test_pattern_scheme_on_linear_is_rejected(model):
    with pytest.raises(TargetError, match="layer 'head'"):
        resolve(model, [{"layers": "head", "scheme": "pattern", "sparsity": 0.5}])


def test_rules_must_be_dicts(model):
    with pytest.raises(TargetError, match="list of dicts"):
        resolve(model, "features.*")
    with pytest.raises(TargetError, match="rule 0 must be a dict"):
        resolve(model, [["features.*"]])


@pytest.mark.parametrize("rnn", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.93])
def test_global_allocation_over_gated_weights_meets_the_count_exactly(rnn, sparsity):
    """Gated weights prune one weight per gate per step, so their counts move in multiples
    of the gate count; a single weight among the targets absorbs the rest, so the total
    is the requested count to the weight."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"rnn": rnn(37, 64), "fc": nn.Linear(64, 11)})
    targets = resolve(model, [{"sparsity": sparsity, "allocation": "global"}])
    total = sum(t.numel for t in targets)
    freeze(model, targets)
    zeros = sum(int((t.param == 0).sum()) for t in targets)
    assert zeros == math.floor(sparsity * total + 0.5)


def test_global_allocation_over_gated_weights_alone_is_the_nearest_count_they_allow():
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(37, 64))
    targets = resolve(model, [{"sparsity": 0.8, "allocation": "global"}])
    total = sum(t.numel for t in targets)
    freeze(model, targets)
    zeros = sum(int((t.param == 0).sum()) for t in targets)
    assert zeros % 3 == 0 and abs(zeros - 0.8 * total) <= 1.5


def test_rules_may_name_layers_by_module_object():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    targets = resolve(model, [{"layers": [model[2]], "sparsity": 0.5}])
    assert [t.name for t in targets] == ["2.weight"]
    kept = resolve(model, [{"layers": "*", "exclude": [model[0]], "sparsity": 0.5}])
    assert [t.name for t in kept] == ["2.weight"]
    with pytest.raises(TargetError, match="not a module of this model"):
        resolve(model, [{"layers": [nn.Linear(2, 2)], "sparsity": 0.5}])


def test_a_layer_pruned_with_torch_utils_prune_is_refused_with_the_fix():
    from torch.nn.utils import prune

    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(TargetError, match=r"'0' was pruned with torch.nn.utils.prune.*"
                                          r"prune.remove\(module, 'weight'\)"):
        resolve(model, [{"sparsity": 0.8}])
    prune.remove(model[0], "weight")  # the fix the message names: zeros kept, pruned further
    targets = resolve(model, [{"sparsity": 0.8}])
    freeze(model, targets)
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.8, abs=0.02)


def test_a_wildcard_channel_rule_skips_grouped_convs_with_the_reason():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=4), nn.Conv2d(8, 8, 1))
    targets = resolve(model, [{"types": ["Conv2d"], "scheme": "channel", "sparsity": 0.5}])
    assert [t.name for t in targets] == ["0.weight", "2.weight"]
    reasons = {item.name: item.reason for item in targets.summary.left_out}
    assert "does not fit a grouped or depthwise conv (groups=4)" in reasons["1.weight"]
    assert any("1: skipped by rule 0" in note for note in targets.summary.notes)
    with pytest.raises(TargetError, match="does not fit grouped or depthwise convs: 1"):
        resolve(model, [{"layers": ["0", "1"], "scheme": "channel", "sparsity": 0.5}])
