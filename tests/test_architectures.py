"""Every scheme on models with the structures of real architectures (see architectures.py):
the rate each target reaches, counted in weights; no layer (or gate) zeroed below rate 1;
the input still reaching the output; global allocation in the scheme's own units; every
refused combination refused by ``resolve`` with the rule and the layer named, before any
weight changes; attention layers targeted once each, and a summary of what rules leave out.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from architectures import MODELS, build, example, run
from prunekit.errors import TargetError
from prunekit.report.counting import layer_positions
from prunekit.schemes.base import split_gates
from prunekit.targets import resolve

#: scheme -> (rule options, sparsity) for one rule over every prunable layer
SCHEMES = {
    "irregular": ({}, 0.7),
    "filter": ({}, 0.6),
    "channel": ({}, 0.6),
    "column": ({}, 0.7),
    "block": ({"block": [4, 2]}, 0.7),
    "unify": ({"block": [1, 4], "unified": 0.2}, 0.5),
    "nm": ({"n": 2, "m": 4}, None),
    "pattern": ({"patterns": 4}, 0.75),
}


def grouped(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def conv3x3(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def rule_for(model: nn.Module, scheme: str) -> dict | None:
    """One rule over all the layers ``scheme`` applies to (None: no such layer)."""
    options, sparsity = SCHEMES[scheme]
    rule = {"scheme": scheme, **options}
    if sparsity is not None:
        rule["sparsity"] = sparsity
    if scheme == "pattern":
        if not conv3x3(model):
            return None
        rule["layers"] = conv3x3(model)
    if scheme == "channel" and grouped(model):
        rule["exclude"] = grouped(model)
    return rule


CASES = [(m, s) for m in MODELS for s in SCHEMES if rule_for(build(m), s) is not None]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def prune(targets) -> None:
    with torch.no_grad():
        for t in targets:
            t.param.copy_(t.project())


def nm_expected_zeros(gate: torch.Tensor, n: int, m: int) -> int:
    """Zeros N:M leaves in a gate: ``m - n`` per full run, ``L - min(n, L)`` in a short one."""
    rows, cols = gate.shape[0], math.prod(gate.shape[1:])
    full, tail = divmod(cols, m)
    return rows * (full * (m - n) + tail - min(n, tail))


def check_gate(target, gate: torch.Tensor, pruned: torch.Tensor) -> None:
    """The rate reached in weights, and at least one group left, in one gate."""
    scheme = target.scheme
    zeros = int((pruned == 0).sum())
    assert zeros < pruned.numel(), f"{target.name}: a gate is all zero"
    if scheme.name == "nm":
        assert zeros == nm_expected_zeros(gate, scheme.n, scheme.m)
        return
    norms = scheme.group_norms(pruned)
    kept = int((norms > 0).sum())
    assert kept >= 1
    if scheme.name == "pattern":  # kernels keep `entries` of 9; whole kernels go on top
        group = scheme.entries
    elif scheme.name == "unify":
        group = math.prod(scheme.block)
    elif scheme.name == "block":
        group = scheme.block_shape(tuple(gate.shape))[0]  # one block-column segment
    else:
        group = math.ceil(gate.numel() / norms.numel())
    wanted = target.sparsity * gate.numel()
    if kept > 1:  # otherwise rounding was capped so that one group stays
        assert abs(zeros - wanted) <= group / 2 + 1e-6, (target.name, zeros, wanted)


@pytest.mark.parametrize(("model_name", "scheme"), CASES)
def test_every_scheme_meets_its_rate_on_every_layer_and_the_input_still_counts(
    model_name, scheme
):
    model = build(model_name)
    targets = resolve(model, [rule_for(model, scheme)])
    assert targets
    before = [t.param.detach().clone() for t in targets]
    prune(targets)
    for target, original in zip(targets, before, strict=True):
        gates = zip(split_gates(original, target.gates),
                    split_gates(target.param.detach(), target.gates), strict=True)
        for gate, pruned in gates:
            check_gate(target, gate, pruned)
    a, b = example(model_name, 1), example(model_name, 2)
    assert not torch.allclose(run(model, a), run(model, b)), "the output ignores the input"


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "nm"])
def test_high_rates_never_zero_a_layer_or_a_gate(model_name, scheme):
    """At 0.97 rounding to whole groups would prune every group of the small layers (the
    SE convs of 2 to 4 filters, the classifiers); at least one group must stay. (Whether
    the input still reaches the output at such a rate depends on which groups of
    consecutive layers survive, so only the rates of normal use check that.)"""
    model = build(model_name)
    rule = rule_for(model, scheme)
    if rule is None:
        return
    rule["sparsity"] = 0.97
    if scheme == "unify":
        rule["unified"] = 0.0
    targets = resolve(model, [rule])
    prune(targets)
    for t in targets:
        for gate in split_gates(t.param.detach(), t.gates):
            assert bool((gate != 0).any()), f"{t.name}: a gate is all zero"


# ---------------------------------------------------------------- global allocation
GLOBAL = [("irregular", {}), ("filter", {}), ("column", {}), ("block", {"block": [4, 2]}),
          ("pattern", {"patterns": 4})]


def step_size(target) -> float:
    """Weights one allocation step prunes: one group of every gate (pattern: a kernel's
    ``entries`` weights, since its patterns already remove the rest)."""
    groups = target.group_norms().numel()
    if target.scheme.name == "pattern":
        return target.scheme.entries
    return target.numel / groups * target.gates


@pytest.mark.parametrize("model_name", ["mobilenet_v2", "recurrent", "vit", "convnext"])
@pytest.mark.parametrize(("scheme", "options"), GLOBAL)
def test_global_allocation_is_met_in_weights(model_name, scheme, options):
    model = build(model_name)
    layers = conv3x3(model) if scheme == "pattern" else "*"
    if not layers:
        return
    sparsity = 0.8
    targets = resolve(model, [{"layers": layers, "scheme": scheme, "sparsity": sparsity,
                               "allocation": "global", **options}])
    prune(targets)
    total = sum(t.numel for t in targets)
    zeros = sum(int((t.param == 0).sum()) for t in targets)
    largest_step = max(step_size(t) for t in targets)
    if scheme == "irregular" and all(t.gates == 1 for t in targets):
        assert abs(zeros - sparsity * total) <= 0.5
    else:
        ragged = scheme == "block"  # a ragged segment rounds within its layer once more
        slack = largest_step / 2 + (sum(step_size(t) for t in targets) / 2 if ragged else 0)
        assert abs(zeros - sparsity * total) <= slack + 1e-6, (zeros, sparsity * total)
    for t in targets:
        for gate in split_gates(t.param.detach(), t.gates):
            assert bool((gate != 0).any()), f"{t.name}: a gate is all zero"


def test_global_allocation_on_gated_weights_prunes_every_gate_alike():
    """Each gate is pruned at the target's rate on its own, so the allocation hands out
    whole steps (one group per gate) and each gate prunes exactly that many groups."""
    model = build("recurrent")
    for scheme in ("irregular", "channel"):
        targets = resolve(model, [{"types": ["LSTM", "GRU"], "scheme": scheme,
                                   "sparsity": 0.6, "allocation": "global"}])
        planned = {t.name: t.sparsity for t in targets}
        prune(targets)
        for t in targets:
            per_gate = {int((g == 0).sum()) for g in split_gates(t.param.detach(), t.gates)}
            assert len(per_gate) == 1, t.name
            assert per_gate.pop() * t.gates == pytest.approx(planned[t.name] * t.numel, abs=1e-6)
        total = sum(t.numel for t in targets)
        zeros = sum(int((t.param == 0).sum()) for t in targets)
        assert abs(zeros - 0.6 * total) <= max(step_size(t) for t in targets) / 2
        model = build("recurrent")


def test_global_irregular_is_one_threshold_over_all_weights():
    model = build("efficientnet")
    magnitudes = {n: p.detach().abs().clone() for n, p in model.named_parameters()}
    targets = resolve(model, [{"sparsity": 0.75, "allocation": "global"}])
    prune(targets)
    kept = torch.cat([magnitudes[t.name][t.param != 0] for t in targets])
    gone = torch.cat([magnitudes[t.name][t.param == 0] for t in targets])
    # every layer keeps its largest weight, so only weights in layers that kept more than
    # that one must beat the global threshold
    multi = torch.cat([magnitudes[t.name][t.param != 0] for t in targets
                       if int((t.param != 0).sum()) > 1])
    assert multi.min() >= gone.max() or kept.numel() == len(targets)


def test_pattern_global_allocation_ranks_kernels():
    model = build("mobilenet_v2")
    targets = resolve(model, [{"layers": conv3x3(model), "scheme": "pattern",
                               "sparsity": 0.8, "allocation": "global"}])
    assert all(t.sparsity >= 1 - 4 / 9 - 1e-9 for t in targets)
    assert len({round(t.sparsity, 6) for t in targets}) > 1  # rates differ by layer


# ----------------------------------------------------------------- refused at resolve
def refused(model: nn.Module, rules: list[dict], *words: str) -> str:
    before = snapshot(model)
    with pytest.raises(TargetError) as err:
        resolve(model, rules)
    assert unchanged(model, before)
    message = str(err.value)
    for word in words:
        assert word in message, (word, message)
    return message


@pytest.mark.parametrize("model_name", ["mobilenet_v2", "efficientnet", "resnext", "convnext"])
def test_channel_skips_grouped_convs_a_wildcard_selects_and_refuses_named_ones(model_name):
    """``channel`` over every conv of a network with grouped or depthwise convs prunes the
    others and says why each grouped one was left out; naming them refuses them all."""
    model = build(model_name)
    targets = resolve(model, [{"types": ["Conv2d"], "scheme": "channel", "sparsity": 0.5}])
    skipped = {item.name.rsplit(".", 1)[0] for item in targets.summary.left_out
               if "does not fit a grouped or depthwise conv" in item.reason}
    assert skipped == set(grouped(model))
    assert targets and not skipped & {t.module_name for t in targets}
    plain = next(n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups == 1)
    message = refused(model, [{"layers": [*grouped(model), plain],
                               "scheme": "channel", "sparsity": 0.5}], "rule 0", "filter",
                      *grouped(model))
    assert "groups=" in message


def test_a_bad_rate_in_the_last_rule_is_refused_before_anything_changes():
    model = build("mobilenet_v2")
    layer = conv3x3(model)[-1]
    refused(model, [{"sparsity": 0.5}, {"layers": layer, "scheme": "pattern", "sparsity": 0.3}],
            "rule 1", repr(layer), "at least 0.5556")
    refused(model, [{"sparsity": 0.5}, {"layers": "classifier.1", "scheme": "nm",
                                        "sparsity": 0.7}], "rule 1", "'classifier.1'", "0.5")
    refused(model, [{"sparsity": 0.5}, {"layers": "classifier.1", "scheme": "unify",
                                        "unified": 0.6, "sparsity": 0.5}],
            "rule 1", "'classifier.1'", "exceeds 1")


def test_fixed_rate_schemes_refuse_global_allocation():
    model = build("vit")
    refused(model, [{"scheme": "nm", "sparsity": 0.5, "allocation": "global"}],
            "rule 0", "allocation: global", "fixed rate")
    refused(model, [{"scheme": "block+nm", "rates": [0.3], "allocation": "global",
                     "sparsity": 0.5}],
            "rule 0", "'nm'", "fixed rate")


def test_pattern_global_below_its_own_rate_is_refused():
    model = build("resnext")
    refused(model, [{"layers": "conv2.0", "scheme": "pattern", "sparsity": 0.4,
                     "allocation": "global"}], "rule 0", "'conv2.0'", "0.5556")


# ---------------------------------------------------------------------- attention
def test_packed_attention_is_three_gates_and_out_proj_a_linear():
    model = build("vit")
    targets = resolve(model, [{"sparsity": 0.5}])
    names = [t.name for t in targets]
    assert len(names) == len(set(names))
    by_name = {t.name: t for t in targets}
    for i in range(2):
        attn = by_name[f"encoder.layers.{i}.self_attn.in_proj_weight"]
        assert attn.gates == 3 and attn.layer_type == "MultiheadAttention"
        out = by_name[f"encoder.layers.{i}.self_attn.out_proj.weight"]
        assert out.gates == 1 and out.layer_type == "Linear"
    prune(targets)
    for i in range(2):
        w = by_name[f"encoder.layers.{i}.self_attn.in_proj_weight"].param.detach()
        assert [int((g == 0).sum()) for g in w.chunk(3)] == [512] * 3  # q, k, v alike
    summary = targets.summary
    assert {item.name for item in summary.left_out} == {"cls_token", "pos_embedding"}
    assert summary.left_out_params == model.cls_token.numel() + model.pos_embedding.numel()
    assert summary.targeted == sum(t.numel for t in targets)
    assert "not a supported layer type" in summary.describe()


def test_attention_with_its_own_key_and_value_widths_has_three_weights():
    model = build("cross_attention")
    targets = {t.name: t for t in resolve(model, [{"layers": "attn*", "sparsity": 0.5}])}
    assert set(targets) == {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight",
                            "attn.out_proj.weight"}
    assert {t.shape for t in targets.values()} == {(24, 24), (24, 20), (24, 12)}
    assert all(t.gates == 1 for t in targets.values())


def test_transformer_encoder_is_covered_entirely_by_a_wildcard():
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    targets = resolve(model, [{"sparsity": 0.5}])
    assert targets.summary.left_out == ()
    assert targets.summary.targeted == targets.summary.weights == sum(
        p.numel() for p in model.parameters() if p.dim() >= 2)


def test_attention_macs_count_query_tokens_for_qkv_and_out_proj():
    model = build("vit")
    positions = layer_positions(model, example("vit", 0))
    tokens = 1 + (16 // 4) ** 2
    for i in range(2):
        assert positions[f"encoder.layers.{i}.self_attn"] == tokens
        assert positions[f"encoder.layers.{i}.self_attn.out_proj"] == tokens
        assert positions[f"encoder.layers.{i}.linear1"] == tokens


# ------------------------------------------------------------------------ summary
def test_summary_says_why_each_weight_is_left_out():
    model = build("recurrent")
    targets = resolve(model, [
        {"sparsity": 0.5, "exclude": "gru"},
        {"layers": "head", "exclude": True},
        {"types": ["LSTM"], "sparsity": {"lstm": 0.4}},
    ])
    reasons = {item.name: item.reason for item in targets.summary.left_out}
    assert reasons["emb.weight"].startswith("Embedding layers are pruned only when named")
    assert reasons["gru.weight_ih_l0"] == "excluded by rule 0"
    assert reasons["head.weight"] == "removed by rule 1 (exclude: true)"
    assert "lstm.weight_ih_l0" not in reasons
    sizes = dict(model.named_parameters())
    assert targets.summary.left_out_params == sum(sizes[n].numel() for n in reasons)
    text = targets.summary.describe()
    assert f"{targets.summary.left_out_params:,} left out" in text
