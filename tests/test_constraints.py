"""Frozen constraints: hardening (all or nothing), retraining that keeps every weight inside
its set through any optimizer, the quantized retraining modes, and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from compress_helpers import (
    OPTIMIZERS,
    QUANT_SCHEMES,
    SCHEMES,
    assert_inside,
    assert_on_levels,
    assert_same_weights,
    batches,
    blob_data,
    masks_of,
    params,
    roundtrip,
    targets_for,
    tiny_net,
    train_steps,
    weights,
)
from prunekit import schemes
from prunekit.constraints import Levels, MaskEnforcer, Support, Unified, from_state
from prunekit.errors import ConfigError, DataError, PrunekitError, TargetError
from prunekit.methods import ProgressiveFixing, get
from prunekit.schemes import count_to_prune
from prunekit.targets import Target, freeze, freeze_weight, resolve
from prunekit.training import finetune

DATA = blob_data()
RULES = [{"sparsity": 0.7}, {"layers": "fc", "sparsity": 0.5}]
KINDS = {"support": Support, "levels": Levels, "unified": Unified}


def expected_kind(case: str) -> type:
    return Levels if "quant" in case else Unified if case == "unify" else Support


def pruned_nonzero(masks, model) -> int:
    p = params(model)
    return sum(int((p[n].detach()[~m] != 0).sum()) for n, m in masks.items())


def dense_trained(seed: int = 0, optimizer: str = "sgd-momentum-wd", epochs: int = 1):
    """A model and its optimizer, with optimizer state (momentum, moments) from training."""
    model = tiny_net(seed)
    opt = OPTIMIZERS[optimizer](model.parameters())
    train_steps(model, opt, *DATA, epochs=epochs, seed=100)
    return model, opt


# ------------------------------------------------------------------------ freezing
def test_freeze_meets_the_rate_exactly_and_keeps_the_kept_values():
    model = tiny_net()
    targets = resolve(model, RULES)
    before = weights(model)
    frozen = freeze(model, targets)
    assert set(frozen) == {"conv.weight", "fc.weight"}
    for t in targets:
        c = frozen[t.name]
        assert isinstance(c, Support) and c.mask.dtype == torch.bool
        assert int((t.param == 0).sum()) == count_to_prune(t.numel, t.sparsity)
        assert torch.equal(t.param.detach() != 0, c.mask)
        assert torch.equal(t.param.detach()[c.mask], before[t.name][c.mask])
    assert torch.equal(model.conv.bias, before["conv.bias"])
    other = tiny_net()
    masks = masks_of(freeze(other, resolve(other, RULES)))  # harden: the same masks, bool only
    assert all(torch.equal(masks[n], c.mask) for n, c in frozen.items())


def test_pruning_again_never_revives_a_zero():
    model = tiny_net()
    first = masks_of(freeze(model, resolve(model, [{"sparsity": 0.5}])))
    second = masks_of(freeze(model, resolve(model, [{"sparsity": 0.8}])))
    for name, mask in second.items():
        assert not (mask & ~first[name]).any()
        assert int((~mask).sum()) == count_to_prune(mask.numel(), 0.8)
    lower = masks_of(freeze(model, resolve(model, [{"sparsity": 0.2}])))  # a lower rate keeps them
    assert all(torch.equal(lower[n], second[n]) for n in second)
    # keep= (a method's live masks) holds even where a weight drifted off its mask
    with torch.no_grad():
        model.fc.weight[~second["fc.weight"]] = 3.0
    again = freeze(model, resolve(model, [{"sparsity": 0.5}]), keep=second)
    assert torch.equal(again["fc.weight"].mask, second["fc.weight"])
    assert pruned_nonzero(second, model) == 0


@pytest.mark.parametrize("case", sorted(SCHEMES))
def test_freeze_gives_the_right_kind_inside_its_set(case):
    model = tiny_net()
    frozen = freeze(model, targets_for(model, case))
    for name, c in frozen.items():
        assert type(c) is expected_kind(case), (name, c)
        assert c.hints["scheme"] == (case if case in schemes.available() or "+" in case
                                     else "quant")
        assert_inside(params(model)[name], c)
        if isinstance(c, Levels):
            assert c.bits == SCHEMES[case]["bits"]
            assert c.level_set == SCHEMES[case].get("levels", "uniform")


def test_freeze_is_all_or_nothing():
    model = tiny_net()
    p = params(model)
    good = resolve(model, [{"layers": "conv", "scheme": "irregular+quant", "sparsity": 0.5,
                            "bits": 4}])
    impossible = Target("fc.weight", "fc", p["fc.weight"], schemes.get("irregular"), 1.5,
                        "Linear")
    before = weights(model)
    with pytest.raises(PrunekitError, match="fc.weight"):
        freeze(model, [*good, impossible])
    assert_same_weights(before, weights(model))
    nm = Target("fc.weight", "fc", p["fc.weight"], schemes.get("unify"), 0.5, "Linear", 3)
    with pytest.raises(PrunekitError, match="fc.weight"):
        freeze(model, [*good, nm])  # unify cannot take gated weights
    assert_same_weights(before, weights(model))
    with pytest.raises(TargetError, match="another model"):
        freeze(tiny_net(1), good)
    with pytest.raises(ConfigError, match="Target"):
        freeze(model, ["conv.weight"])


def test_freeze_weight_reads_keep_and_leaves_the_weight_alone():
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    keep = torch.rand(6, 8, generator=torch.Generator().manual_seed(1)) > 0.3
    before = w.clone()
    c = freeze_weight(schemes.get("irregular+quant", bits=3), w, 0.5, keep=keep)
    assert torch.equal(w, before)
    assert not (c.mask & ~keep).any() and isinstance(c, Levels)
    assert int(c.mask.sum()) == count_to_prune(48, 0.5) or int(c.mask.sum()) <= int(keep.sum())
    assert freeze_weight(schemes.get("quant", bits=4), w, None, mode="ste").mode == "ste"


# ------------------------------------------------- the guarantee, every optimizer
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_through_every_optimizer(kind):
    x, y = DATA
    model, optimizer = dense_trained(optimizer=kind)
    assert any(v.abs().sum() > 0 for s in optimizer.state.values()
               for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    masks = masks_of(freeze(model, resolve(model, RULES)))
    p = params(model)
    epoch_losses = []
    with MaskEnforcer(model, masks, optimizer) as enforcer:
        for epoch in range(4):
            losses = []
            for xb, yb in batches(x, y, seed=epoch):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                for name, mask in masks.items():  # (1) the gradient never carries them
                    assert not p[name].grad[~mask].any()
                optimizer.step()
                assert pruned_nonzero(masks, model) == 0  # (1) + (2) already hold them
                enforcer.after_step()
                for name, mask in masks.items():
                    for value in optimizer.state[p[name]].values():
                        if torch.is_tensor(value) and value.shape == mask.shape:
                            assert not value[~mask].any()
                losses.append(loss.item())
            epoch_losses.append(sum(losses) / len(losses))
    assert epoch_losses[-1] < 0.8 * epoch_losses[0], epoch_losses


def test_without_the_enforcer_momentum_revives_pruned_weights():
    model, optimizer = dense_trained()
    masks = masks_of(freeze(model, resolve(model, RULES)))
    xb, yb = next(batches(*DATA))
    optimizer.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    optimizer.step()
    assert pruned_nonzero(masks, model) > 0


def test_closing_removes_the_hooks_and_stops_enforcing():
    model = tiny_net()
    masks = masks_of(freeze(model, resolve(model, RULES)))
    enforcer = MaskEnforcer(model, masks)
    assert enforcer.masks.keys() == masks.keys()
    enforcer.close()
    xb, yb = next(batches(*DATA))
    F.cross_entropy(model(xb), yb).backward()
    assert model.fc.weight.grad[~masks["fc.weight"]].abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    enforcer.after_step()
    assert pruned_nonzero(masks, model) > 0
    with pytest.raises(ConfigError, match="closed"):
        enforcer.update(masks)


def test_enforcer_errors_name_the_problem():
    model = tiny_net()
    with pytest.raises(TargetError, match="no parameter 'conv3.weight'.*conv.weight"):
        MaskEnforcer(model, {"conv3.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TargetError, match=r"'fc.weight' has shape \(2, 2\)"):
        MaskEnforcer(model, {"fc.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="no constraints"):
        MaskEnforcer(model, {})
    enforcer = MaskEnforcer(model, {"fc.weight": torch.ones_like(model.fc.weight)})
    with pytest.raises(ConfigError, match="Optimizer"):
        enforcer.bind("sgd")
    with pytest.raises(DataError, match="constraints"):
        enforcer.load_state_dict({"masks": {}})
    with pytest.raises(DataError, match="kind"):
        from_state({"kind": "sparkly"})


def test_enforcer_update_cleans_state_and_its_state_dict_loads_elsewhere():
    model, optimizer = dense_trained(optimizer="adamw-wd")
    first = masks_of(freeze(model, resolve(model, [{"sparsity": 0.3}])))
    enforcer = MaskEnforcer(model, first, optimizer)
    second = masks_of(freeze(model, resolve(model, [{"sparsity": 0.6}])))
    enforcer.update(second)
    exp_avg = optimizer.state[model.fc.weight]["exp_avg"]
    assert not exp_avg[~second["fc.weight"]].any()
    saved = roundtrip(enforcer.state_dict())
    enforcer.close()
    other = MaskEnforcer(tiny_net(3), {"fc.weight": torch.ones(4, 128, dtype=torch.bool)})
    other.load_state_dict(saved)
    assert other.masks.keys() == second.keys()
    assert all(torch.equal(other.masks[n], second[n]) for n in second)
    assert pruned_nonzero(second, other.model) == 0
    other.close()


# ---------------------------------------------- every scheme through retraining
@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adamw-wd"])
@pytest.mark.parametrize("case", sorted(SCHEMES))
def test_every_scheme_stays_inside_its_set_through_retraining(case, optimizer):
    model, opt = dense_trained(optimizer=optimizer)
    frozen = freeze(model, targets_for(model, case))
    p = params(model)
    with MaskEnforcer(model, frozen, opt) as enforcer:

        def check() -> None:
            enforcer.after_step()
            for name, c in frozen.items():
                assert_inside(p[name], c)

        before = weights(model)
        losses = train_steps(model, opt, *DATA, epochs=3, after_step=check)
        enforcer.finish()
    if "quant" not in case:  # (snap mode undoes a step smaller than half a level)
        assert any(not torch.equal(before[n], p[n].detach()) for n in frozen)  # it trained
    assert losses[-1] < losses[0] * 1.05
    for name, c in frozen.items():
        assert_inside(p[name], c)


@pytest.mark.parametrize("mode", ["ste", "progressive"])
@pytest.mark.parametrize("case", QUANT_SCHEMES)
def test_quantized_retraining_modes_finish_on_the_levels(case, mode):
    model, opt = dense_trained(optimizer="adamw-wd")
    frozen = freeze(model, targets_for(model, case), mode=mode)
    p = params(model)
    with MaskEnforcer(model, frozen, opt) as enforcer:
        fixing = ProgressiveFixing(enforcer, epochs=3, fraction=0.4)
        end = fixing.end_epoch if mode == "progressive" else None
        train_steps(model, opt, *DATA, epochs=3, after_step=enforcer.after_step, end_epoch=end)
        if mode == "progressive":
            assert fixing.progress() == {"free": 0.0}  # the last epoch fixed every weight
        enforcer.finish()
    for name, c in frozen.items():
        assert c.mode == "snap" and c.free is None and c.shadow is None
        assert_inside(p[name], c)


# --------------------------------------------------------- straight-through vs snap
def quant_codes(model, frozen) -> dict[str, torch.Tensor]:
    p = params(model)
    return {n: c.codes(p[n]) for n, c in frozen.items()}


def test_ste_moves_weights_between_levels_while_snap_with_a_tiny_lr_holds_them():
    moved = {}
    for mode, lr in (("ste", 1e-2), ("snap", 1e-6)):
        model = tiny_net()
        frozen = freeze(model, targets_for(model, "quant"), mode=mode)
        start = quant_codes(model, frozen)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        with MaskEnforcer(model, frozen, opt) as enforcer:
            train_steps(model, opt, *DATA, epochs=2, after_step=enforcer.after_step)
            shadow = {n: c.shadow for n, c in frozen.items()}
            enforcer.finish()
        end = quant_codes(model, frozen)
        moved[mode] = sum(int((start[n] != end[n]).sum()) for n in frozen)
        if mode == "ste":  # the shadow is float and off the levels; the weight is not
            assert all(s is not None and not c.contains(s) for s, c in
                       zip(shadow.values(), frozen.values(), strict=True))
    assert moved["ste"] > 20
    assert moved["snap"] == 0


def test_ste_method_trains_through_the_levels():
    model = tiny_net()
    targets = targets_for(model, "quant")
    method = get("ste", model, targets)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    method.bind(opt)
    masks = method.start()
    assert masks.keys() == {t.name for t in targets}
    assert all(c.mode == "ste" for c in method.constraints.values())
    start = quant_codes(model, method.constraints)
    train_steps(model, opt, *DATA, epochs=1, after_step=method.after_step)
    assert any((start[n] != c) .any() for n, c in quant_codes(model, method.constraints).items())
    for name, c in method.constraints.items():
        assert_inside(params(model)[name], c)
    method.close()


def test_ptq_rounds_once_in_snap_mode():
    model = tiny_net()
    targets = targets_for(model, "quant-channel")
    frozen = get("ptq", model, targets).freeze()
    for name, c in frozen.items():
        assert c.mode == "snap" and c.bits == 3
        assert_on_levels(params(model)[name], c)


# ---------------------------------------------------------- progressive fixing
def test_fix_fixes_ceil_fraction_of_the_free_weights_nearest_first():
    w = torch.randn(5, 12, generator=torch.Generator().manual_seed(4))
    c = freeze_weight(schemes.get("irregular+quant", bits=3), w, 0.25, mode="progressive")
    w = w.masked_fill(~c.mask, 0)
    free = c.free.clone()
    assert torch.equal(free, c.mask)
    for fraction in (0.3, 0.3, 0.5):
        n_free = int(free.sum())
        distance = (w.double() - c.snapped(w).double()).abs().masked_fill(~free, math.inf)
        expected = torch.argsort(distance.reshape(-1), stable=True)[:math.ceil(fraction * n_free)]
        before = w.clone()
        assert c.fix_(w, fraction) == math.ceil(fraction * n_free)
        newly = (free & ~c.free).reshape(-1)
        assert set(torch.nonzero(newly).flatten().tolist()) == set(expected.tolist())
        assert torch.equal(w[c.free], before[c.free])  # the free ones stay float
        fixed = c.mask & ~c.free
        assert torch.equal(w[fixed], c.snapped(w)[fixed])
        assert torch.equal(c.grad_keep(), c.free)
        free = c.free.clone()
    assert int(c.free.sum()) > 0 and not c.contains(w)
    c.finish_(w)
    assert c.free is None and c.contains(w)
    assert_on_levels(w, c)


@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adamw-wd"])
def test_progressive_fixed_weights_do_not_train_and_free_ones_do(optimizer):
    model, opt = dense_trained(optimizer=optimizer)  # optimizer state from dense training
    frozen = freeze(model, targets_for(model, "irregular+quant"), mode="progressive")
    p = params(model)
    with MaskEnforcer(model, frozen, opt) as enforcer:
        fixing = ProgressiveFixing(enforcer, epochs=3, fraction=0.5)
        train_steps(model, opt, *DATA, epochs=1, after_step=enforcer.after_step)
        fixing.end_epoch()  # fixes half of the free weights, as the trainer would
        fixed = {n: c.mask & ~c.free for n, c in frozen.items()}
        free = {n: c.free.clone() for n, c in frozen.items()}
        for name in frozen:  # their stale momentum / moments are gone
            for value in opt.state[p[name]].values():
                if torch.is_tensor(value) and value.shape == fixed[name].shape:
                    assert not value[fixed[name]].any()
        before = weights(model)
        train_steps(model, opt, *DATA, epochs=1, after_step=enforcer.after_step, seed=1)
        for name in frozen:
            assert torch.equal(p[name].detach()[fixed[name]], before[name][fixed[name]])
            assert not torch.equal(p[name].detach()[free[name]], before[name][free[name]])
        enforcer.finish()


def test_progressive_fixing_plugin_checks_its_options_and_resumes():
    model = tiny_net()
    enforcer = MaskEnforcer(model, freeze(model, targets_for(model, "quant"), mode="progressive"))
    with pytest.raises(ConfigError, match="fix_fraction"):
        ProgressiveFixing(enforcer, 3, 1.5)
    with pytest.raises(ConfigError, match="epochs"):
        ProgressiveFixing(enforcer, 0)
    plugin = ProgressiveFixing(enforcer, 3, 0.5)
    plugin.end_epoch()
    assert plugin.progress()["free"] == pytest.approx(0.5, abs=0.01)
    other = ProgressiveFixing(enforcer, 3, 0.5)
    other.load_state_dict(roundtrip(plugin.state_dict()))
    assert other.epoch == 1
    enforcer.close()


# ----------------------------------------------------------- checkpoints of a kind
def assert_same_constraint(a, b) -> None:
    assert type(a) is type(b) and a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        other = b.state_dict()[key]
        if torch.is_tensor(value):
            assert torch.equal(value, other), key
        else:
            assert value == other, key


@pytest.mark.parametrize("case,mode", [("irregular", "snap"), ("unify", "snap"),
                                       ("block+quant", "snap"), ("quant-pow2", "ste"),
                                       ("quant-channel", "progressive")])
def test_state_dict_round_trip_mid_retraining(case, mode):
    model, opt = dense_trained(optimizer="adamw-wd")
    frozen = freeze(model, targets_for(model, case), mode=mode)
    p = params(model)
    with MaskEnforcer(model, frozen, opt) as enforcer:
        train_steps(model, opt, *DATA, epochs=1, after_step=enforcer.after_step,
                    end_epoch=lambda: [c.fix_(p[n].data, 0.3) for n, c in frozen.items()
                                       if mode == "progressive"])
    for name, c in frozen.items():
        again = from_state(roundtrip(c.state_dict()))
        assert_same_constraint(c, again)
        assert isinstance(again, KINDS[c.kind])
        if mode == "ste":
            assert again.shadow is not None and again._last is not None
        if mode == "progressive":
            assert 0 < int(again.free.sum()) < int(again.mask.sum())
        # the copy goes on exactly as the original does
        w1, w2 = p[name].detach().clone(), p[name].detach().clone()
        nudge = 0.01 * torch.randn(w1.shape, generator=torch.Generator().manual_seed(9))
        for c_, w in ((c, w1), (again, w2)):
            w.add_(nudge)
            c_.apply_(w)
            c_.finish_(w)
        assert torch.equal(w1, w2)


@pytest.mark.parametrize("case,mode", [("irregular", "snap"), ("quant-pow2", "ste"),
                                       ("irregular+quant", "progressive"), ("unify", "snap")])
def test_enforcer_resume_gives_bitwise_identical_weights(case, mode):
    def setup():
        model = tiny_net()
        frozen = freeze(model, targets_for(model, case), mode=mode)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        return model, MaskEnforcer(model, frozen, opt), opt

    def fix(enforcer):
        def end_epoch():
            if mode == "progressive":
                for name, c in enforcer.constraints.items():
                    c.fix_(params(enforcer.model)[name].data, 0.3)
        return end_epoch

    model, enforcer, opt = setup()
    train_steps(model, opt, *DATA, epochs=1, after_step=enforcer.after_step,
                end_epoch=fix(enforcer))
    saved = roundtrip({"m": model.state_dict(), "o": opt.state_dict(),
                       "e": enforcer.state_dict()})
    train_steps(model, opt, *DATA, epochs=2, after_step=enforcer.after_step,
                end_epoch=fix(enforcer), seed=1)
    enforcer.finish()

    fresh, resumed, fresh_opt = setup()
    with torch.no_grad():  # the fresh model is elsewhere: the checkpoint must set everything
        for q in fresh.parameters():
            q.add_(1.0)
    fresh.load_state_dict(saved["m"])
    fresh_opt.load_state_dict(saved["o"])
    resumed.load_state_dict(saved["e"])
    train_steps(fresh, fresh_opt, *DATA, epochs=2, after_step=resumed.after_step,
                end_epoch=fix(resumed), seed=1)
    resumed.finish()
    assert_same_weights(weights(model), weights(fresh))
    for name, c in resumed.constraints.items():
        assert_same_constraint(enforcer.constraints[name], c)
        assert_inside(params(fresh)[name], c)
    enforcer.close()
    resumed.close()


# --------------------------------------------------------------- with the trainer
class StepCheck:
    """A plugin placed before the enforcer: pruned weights are zero right after the
    optimizer step, before the enforcer re-imposes the masks."""

    def __init__(self, model, masks) -> None:
        self.model, self.masks, self.steps = model, masks, 0

    def after_step(self) -> None:
        assert pruned_nonzero(self.masks, self.model) == 0
        self.steps += 1


def test_finetune_with_the_trainer_keeps_the_constraints_and_finishes_them():
    x, y = DATA
    loader = list(batches(x, y))
    model, _ = dense_trained()
    frozen = freeze(model, targets_for(model, "irregular+quant"), mode="ste")
    masks = {n: c.mask for n, c in frozen.items()}
    check = StepCheck(model, masks)
    history = finetune(
        model, frozen, loader, loader[:2],
        config={"epochs": 2, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                "weight_decay": 5e-4, "schedule": "constant", "progress": False},
        plugins=[check],
    )
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["loss"] < history[0]["loss"]
    assert check.steps == 2 * len(loader)
    p = params(model)
    for name, c in frozen.items():
        assert c.mode == "snap"
        assert_inside(p[name], c)
    # the hooks are gone once finetune returns
    xb, yb = loader[0]
    F.cross_entropy(model(xb), yb).backward()
    assert model.fc.weight.grad[~masks["fc.weight"]].abs().sum() > 0
