"""ADMM and progressive ADMM pruning on tiny real problems (CPU, seconds)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from compress_helpers import masks_of
from method_state import restore, snapshot
from prunekit import schemes
from prunekit.errors import ConfigError
from prunekit.methods import ADMM, ProgressiveADMM, get
from prunekit.targets import Target, freeze


# ----------------------------------------------------------------------------- helpers
def make_target(model: nn.Module, name: str, sparsity: float | None, scheme: str = "irregular",
                **options) -> Target:
    param = dict(model.named_parameters())[name]
    module_name = name.rpartition(".")[0]
    kind = type(model.get_submodule(module_name)).__name__ if module_name else "Linear"
    return Target(name, module_name, param, schemes.get(scheme, **options), sparsity, kind)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def mlp_targets(model: nn.Module, sparsity: float = 0.75) -> list[Target]:
    return [make_target(model, "0.weight", sparsity), make_target(model, "2.weight", sparsity)]


def batch(seed: int = 1, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, 4, generator=g)


def train_steps(model, pruner, opt, steps: int, data=None) -> None:
    x, y = batch() if data is None else data
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y) + pruner.penalty()
        loss.backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step()


def run_epochs(model, pruner, opt, epochs: int, steps: int = 2, data=None) -> None:
    for _ in range(epochs):
        train_steps(model, pruner, opt, steps, data)
        pruner.end_epoch()


def run_and_resume(setup, before, after):
    """``before`` then ``after`` on one ``setup()`` (model, pruner, optimizer), and ``after``
    on a second one that loads the state saved between them (through ``torch.save``, as a
    checkpoint is). Returns ``(model, pruner)`` of both runs."""
    model, pruner, opt = setup()
    before(model, pruner, opt)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "pruner": pruner.state_dict()}, buffer)
    after(model, pruner, opt)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2, pruner2, opt2 = setup()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    pruner2.load_state_dict(saved["pruner"])
    after(model2, pruner2, opt2)
    return (model, pruner), (model2, pruner2)


def sparse_least_squares(seed: int, n: int = 30, d: int = 40, k: int = 5):
    """y = X w + noise with a k-sparse w; fewer samples than features, so the dense
    least-squares fit (minimum norm) spreads the weight over many features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.zeros(d)
    support = torch.randperm(d, generator=g)[:k]
    w[support] = torch.randn(k, generator=g).sign() * (1 + torch.rand(k, generator=g))
    y = x @ w + 0.01 * torch.randn(n, generator=g)
    return x, y, w


def held_tensors(pruner) -> list[torch.Tensor]:
    """Every tensor the method itself holds (not the model's, not the targets')."""
    found: list[torch.Tensor] = []

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    for key, value in vars(pruner).items():
        if key not in ("model", "targets", "_active", "_enforcer", "optimizer"):
            walk(value)
    return found


# ------------------------------------------------------------------------- convergence
@pytest.mark.parametrize("seed", [0, 2])
def test_admm_least_squares_reaches_a_feasible_sparse_solution(seed):
    x, y, w_true = sparse_least_squares(seed)
    d = x.shape[1]
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():  # the "pretrained" dense model: the minimum-norm fit
        model.weight.copy_(torch.linalg.lstsq(x, y.unsqueeze(1)).solution.T)
    rate = 1 - 5 / d
    target = make_target(model, "weight", rate)
    pruner = ADMM(model, [target], rho=1.0, rho_schedule="constant")  # the classic iteration
    opt = torch.optim.SGD(model.parameters(), lr=0.02)

    def loss_of(w):
        return 0.5 * ((x @ w - y) ** 2).mean()

    for _ in range(40):
        for _ in range(10):
            loss = loss_of(model.weight[0]) + pruner.penalty()
            loss.backward()
            opt.step()
            opt.zero_grad()
            pruner.after_step()
        pruner.end_epoch()

    primal = [h["primal"] for h in pruner.history]
    assert len(primal) == 40
    assert primal[-1] < 0.02 * primal[0]
    assert primal[-1] < 0.01 * float(model.weight.detach().norm())
    masks = masks_of(pruner.freeze())
    support = torch.nonzero(model.weight[0]).flatten()
    assert int(masks["weight"].sum()) == 5 == support.numel()
    assert set(support.tolist()) == set(torch.nonzero(w_true).flatten().tolist())
    # the hardened solution is as good as the least-squares fit on the true support
    oracle = torch.zeros(d)
    oracle[support] = torch.linalg.lstsq(x[:, support], y.unsqueeze(1)).solution[:, 0]
    assert float(loss_of(model.weight[0].detach())) < 1.5 * float(loss_of(oracle)) + 1e-4


def test_admm_beats_one_shot_magnitude_on_a_hard_instance():
    """On this instance the largest entries of the dense fit are not the true support, so
    pruning them once fails; ADMM (previous test, same seed) recovers it."""
    x, y, w_true = sparse_least_squares(2)
    model = nn.Linear(x.shape[1], 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y.unsqueeze(1)).solution.T)
    masks_of(freeze(model, [make_target(model, "weight", 1 - 5 / x.shape[1])]))
    support = set(torch.nonzero(model.weight[0]).flatten().tolist())
    assert support != set(torch.nonzero(w_true).flatten().tolist())


# --------------------------------------------------------------------- the penalty
def test_penalty_is_half_rho_times_squared_frobenius_norm_with_its_gradient():
    model = mlp()
    targets = mlp_targets(model)
    rho = {"0": 0.3, "2.weight": 2.0}
    pruner = ADMM(model, targets, rho=rho)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for z, u in zip(pruner.Z, pruner.U, strict=True):
            z.copy_(torch.randn(z.shape, generator=g))
            u.copy_(torch.randn(u.shape, generator=g))
    value = pruner.penalty()
    assert value.dim() == 0
    expected = 0.0
    for t, z, u, r in zip(targets, pruner.Z, pruner.U, (0.3, 2.0), strict=True):
        diff = t.param.detach() - z + u
        expected += r / 2 * float((diff * diff).sum())
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    value.backward()
    for t, z, u, r in zip(targets, pruner.Z, pruner.U, (0.3, 2.0), strict=True):
        torch.testing.assert_close(t.param.grad, r * (t.param.detach() - z + u))
    # biases are not targets: no penalty on them
    assert model[0].bias.grad is None


def test_initial_z_is_the_projection_and_u_is_zero():
    model = mlp()
    targets = mlp_targets(model, 0.6)
    pruner = ADMM(model, targets)
    for t, z, u in zip(targets, pruner.Z, pruner.U, strict=True):
        torch.testing.assert_close(z, t.project())
        assert int((z != 0).sum()) == round(0.4 * t.param.numel())
        assert not u.any()


def test_z_and_u_never_share_storage_with_the_weights():
    model = mlp()
    pruner = ADMM(model, mlp_targets(model, 0.0))  # rate 0: the projection is the identity
    for t, z, u in zip(pruner.targets, pruner.Z, pruner.U, strict=True):
        ptrs = {z.untyped_storage().data_ptr(), u.untyped_storage().data_ptr()}
        assert t.param.untyped_storage().data_ptr() not in ptrs
        before = z.clone()
        with torch.no_grad():
            t.param.add_(1.0)
        torch.testing.assert_close(z, before)


# ------------------------------------------------------------------------- memory
def test_memory_stays_flat_over_many_updates():
    model = mlp()
    pruner = ADMM(model, mlp_targets(model), rho=0.1, rho_schedule="geometric", rho_max=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run_epochs(model, pruner, opt, 1, steps=1)
    ptrs = [t.data_ptr() for t in pruner.Z + pruner.U]
    held = held_tensors(pruner)
    count, nbytes = len(held), sum(t.numel() * t.element_size() for t in held)
    for _ in range(20):
        run_epochs(model, pruner, opt, 1, steps=1)
        now = held_tensors(pruner)
        assert len(now) == count
        assert sum(t.numel() * t.element_size() for t in now) == nbytes
        assert [t.data_ptr() for t in pruner.Z + pruner.U] == ptrs
    assert pruner.updates == 21


# ------------------------------------------------------------------- rho schedules
def rho_sequence(n: int, **options) -> list[float]:
    model = mlp()
    pruner = ADMM(model, mlp_targets(model), **options)
    for _ in range(n):
        pruner.update()
    return [h["rho"] for h in pruner.history] + [max(pruner.rho)]


def test_rho_schedules_give_the_expected_sequences():
    assert rho_sequence(4, rho=0.01, rho_schedule="constant") == [0.01] * 5
    # the default is the adaptive support schedule
    assert rho_sequence(4, rho=0.01) == rho_sequence(4, rho=0.01, rho_schedule="support")
    geometric = rho_sequence(5, rho=0.01, rho_schedule="geometric", rho_growth=2.0, rho_max=0.1)
    assert geometric == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.1, 0.1])
    stages = rho_sequence(6, rho=1e-4, rho_schedule="stages", stage_every=2)
    assert stages == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2, 1e-1])


def test_dual_variable_is_rescaled_when_rho_changes():
    model = mlp()
    pruner = ADMM(model, mlp_targets(model), rho=0.5, rho_schedule="geometric", rho_growth=4.0)
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # move W so that U becomes nonzero
    u_before = [u.clone() for u in pruner.U]
    pruner.update()
    for t, z, u, old in zip(pruner.targets, pruner.Z, pruner.U, u_before, strict=True):
        unscaled = old + t.param.detach() - z  # the U-step before rho grew 4x
        torch.testing.assert_close(u * 2.0, unscaled * 0.5)
    assert pruner.rho == [2.0, 2.0]


# ----------------------------------------------------------------- update cadence
def test_update_every_counts_epochs_or_steps():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    by_epoch = ADMM(model, mlp_targets(model), update_every=2)
    run_epochs(model, by_epoch, opt, 5, steps=3)
    assert [h["epoch"] for h in by_epoch.history] == [2, 4]

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    by_step = ADMM(model, mlp_targets(model), update_every=3, update_unit="step")
    run_epochs(model, by_step, opt, 2, steps=5)
    assert [h["step"] for h in by_step.history] == [3, 6, 9]
    record = by_step.history[-1]
    assert set(record["layers"]) == {"0.weight", "2.weight"}
    assert record["primal"] == pytest.approx(sum(v["primal"] for v in record["layers"].values()))
    assert record["dual"] == pytest.approx(sum(v["dual"] for v in record["layers"].values()))
    assert set(by_step.progress()) >= {"Z_sparsity", "primal", "dual", "rho"}  # Z's, named so


def test_updates_per_epoch_spreads_updates_evenly_with_the_last_at_the_epochs_end():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = ADMM(model, mlp_targets(model), updates_per_epoch=3, steps_per_epoch=7)
    run_epochs(model, pruner, opt, 2, steps=7)
    # within each epoch of 7 steps: after steps 2 and 5 (round(7/3), round(14/3)), then at
    # the epoch's end
    assert [h["step"] for h in pruner.history] == [2, 5, 7, 9, 12, 14]
    assert [h["epoch"] for h in pruner.history] == [0, 0, 1, 1, 1, 2]

    # an epoch shorter than announced (a smaller last batch, a sampler's share) still ends
    # with its update; one update per epoch is plain end-of-epoch ADMM
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    short = ADMM(model, mlp_targets(model), updates_per_epoch=2, steps_per_epoch=10)
    run_epochs(model, short, opt, 2, steps=4)
    assert [h["step"] for h in short.history] == [4, 8]
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    once = ADMM(model, mlp_targets(model), updates_per_epoch=1)
    run_epochs(model, once, opt, 2, steps=3)
    assert [h["step"] for h in once.history] == [3, 6]


def test_updates_per_epoch_resumes_mid_epoch_exactly():
    def setup():
        model = mlp()
        pruner = ADMM(model, mlp_targets(model), rho=0.05, updates_per_epoch=2,
                      steps_per_epoch=5, rho_schedule="support")
        return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def rest(model, pruner, opt):
        train_steps(model, pruner, opt, 4)
        pruner.end_epoch()
        train_steps(model, pruner, opt, 3)

    # saved mid-epoch, before the epoch's first update (after step 2)
    (_, pruner), (_, pruner2) = run_and_resume(
        setup, lambda *run: train_steps(*run, 1), rest)
    assert [h["step"] for h in pruner2.history] == [h["step"] for h in pruner.history] \
        == [2, 5, 7]
    for a, b in zip(pruner.Z + pruner.U, pruner2.Z + pruner2.U, strict=True):
        assert torch.equal(a, b)


def test_updates_per_epoch_refuses_what_it_cannot_place():
    model = mlp()
    targets = mlp_targets(model)
    with pytest.raises(ConfigError, match="needs steps_per_epoch"):
        ADMM(model, targets, updates_per_epoch=4)
    with pytest.raises(ConfigError, match="exceeds the 3 steps"):
        ADMM(model, targets, updates_per_epoch=4, steps_per_epoch=3)
    with pytest.raises(ConfigError, match="replaces update_every"):
        ADMM(model, targets, updates_per_epoch=2, steps_per_epoch=10, update_every=5)
    with pytest.raises(ConfigError, match="replaces update_every"):
        ADMM(model, targets, updates_per_epoch=2, steps_per_epoch=10, update_unit="step")
    with pytest.raises(ConfigError, match="updates_per_epoch"):
        ADMM(model, targets, updates_per_epoch=0, steps_per_epoch=10)
    with pytest.raises(ConfigError, match="only with updates_per_epoch"):
        ADMM(model, targets, steps_per_epoch=10)


def test_stage_callbacks_and_learning_rate_reset_flag():
    model = mlp()
    pruner = ADMM(model, mlp_targets(model), stage_every=2, reset_lr=True)
    seen = []
    pruner.on_stage(seen.append)
    pruner.update()
    assert seen == [] and not pruner.lr_reset_pending
    for _ in range(3):
        pruner.update()
    assert seen == [1, 2]
    assert pruner.lr_reset_pending


def test_trainer_restarts_the_learning_rate_at_every_admm_update():
    """ADMM-NN's policy: the rate restarts at each Z/U update and anneals within it."""
    from torch.utils.data import DataLoader, TensorDataset  # noqa: PLC0415

    from prunekit.training import TrainConfig, Trainer  # noqa: PLC0415

    model = mlp()
    pruner = ADMM(model, mlp_targets(model), update_every=2, stage_every=1, reset_lr=True)
    assert pruner.lr_cycle_epochs == 2
    x, y = batch(n=16)
    data = DataLoader(TensorDataset(x, y.argmax(1)), batch_size=8)
    cfg = TrainConfig(epochs=6, lr=0.1, schedule="cosine", progress=False)
    history = Trainer(model, cfg, data, plugins=[pruner]).fit()
    lrs = [r["lr"] for r in history]
    # first cycle: cosine over all 6 epochs until the update after epoch 2; then 2-epoch cycles
    assert lrs[2:] == pytest.approx([0.1, 0.05, 0.1, 0.05], rel=1e-12)
    assert lrs[1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 6)), rel=1e-12)
    assert pruner.updates == 3 and not pruner.lr_reset_pending


@pytest.mark.parametrize("schedule", ["balance", "support"])
def test_adaptive_rho_follows_each_layers_own_residuals(schedule):
    model = mlp()
    pruner = ADMM(model, mlp_targets(model), rho=1e-2, rho_schedule=schedule)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batch()
    for _ in range(4):
        before = list(pruner.rho)
        z_before = [z.clone() for z in pruner.Z]
        for _ in range(3):
            (nn.functional.mse_loss(model(x), y) + pruner.penalty()).backward()
            opt.step()
            opt.zero_grad()
        record = pruner.update()
        for i, t in enumerate(pruner.targets):
            stats = record["layers"][t.name]
            flips = int(((pruner.Z[i] != 0) != (z_before[i] != 0)).sum())
            assert stats["support_change"] == flips / int((pruner.Z[i] != 0).sum())
            if schedule == "balance":
                factor = (2.0 if stats["primal"] > 10 * stats["dual"]
                          else 0.5 if stats["dual"] > 10 * stats["primal"] else 1.0)
            else:
                factor = 1.3 if stats["support_change"] > 0.1 else 1.1
            assert pruner.rho[i] == pytest.approx(before[i] * factor, rel=1e-12)
    assert all(r > 1e-2 for r in pruner.rho)  # the primal dominates early: rho grows


def test_admm_stops_when_converged_and_says_so():
    from torch.utils.data import DataLoader, TensorDataset  # noqa: PLC0415

    from prunekit.training import TrainConfig, Trainer  # noqa: PLC0415

    def fit(**tolerances):
        model = mlp()
        pruner = ADMM(model, mlp_targets(model), rho=0.5, rho_schedule="geometric",
                      rho_growth=2.0, **tolerances)
        x, y = batch(n=16)
        data = DataLoader(TensorDataset(x, y.argmax(1)), batch_size=8)
        cfg = TrainConfig(epochs=12, lr=0.05, schedule="constant", progress=False)
        return pruner, Trainer(model, cfg, data, plugins=[pruner]).fit()

    free, history = fit()
    assert len(history) == 12 and not free.stop_requested
    residuals = [r["relative_primal"] for r in history]
    tol = residuals[4]  # met for the first time at or before the fifth update
    first = next(i for i, r in enumerate(residuals) if r <= tol)
    stopped, short = fit(tol_primal=tol)
    assert len(short) == first + 1
    assert stopped.stop_requested
    event = stopped.history[-1]
    assert event["event"] == "converged" and event["update"] == first + 1
    assert event["relative_primal"] <= tol
    # a support tolerance of 0 is met only by an update that changes no weight's membership
    strict, _ = fit(tol_primal=tol, tol_support=0.0)
    done = [r for r in strict.history if r.get("event") == "update"]
    assert all(r["support_change"] > 0 or r["relative_primal"] > tol for r in done[:-1])


def test_relative_primal_is_measured():
    model = mlp()
    pruner = ADMM(model, mlp_targets(model))
    record = pruner.update()
    weights = [t.param.detach() for t in pruner.targets]
    gaps = [float((w - z).norm()) for w, z in zip(weights, pruner.Z, strict=True)]
    assert record["relative_primal"] == pytest.approx(sum(gaps) / sum(float(w.norm())
                                                                      for w in weights))


# --------------------------------------------------------- an already pruned model
def test_pruning_an_already_pruned_model_never_revives_a_weight():
    model = mlp()
    first = masks_of(freeze(model, mlp_targets(model, 0.5)))
    targets = mlp_targets(model, 0.8)
    pruner = ADMM(model, targets, rho=0.5, update_unit="step")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = batch()
    for _ in range(12):
        (nn.functional.mse_loss(model(x), y) + pruner.penalty()).backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
        for t, z in zip(targets, pruner.Z, strict=True):
            assert not z[~first[t.name]].any()
            assert not t.param[~first[t.name]].any()
    # even if something writes into pruned positions between enforcements, Z stays inside
    with torch.no_grad():
        for t in targets:
            t.param[~first[t.name]] = 5.0
    pruner.update()
    for t, z in zip(targets, pruner.Z, strict=True):
        assert not z[~first[t.name]].any()
    pruner.after_step()
    final = masks_of(pruner.freeze())
    for t in targets:
        assert not (final[t.name] & ~first[t.name]).any()
        assert int(final[t.name].sum()) == round(0.2 * t.param.numel())
        assert int((t.param != 0).sum()) == round(0.2 * t.param.numel())


# --------------------------------------------------------------------------- resume
def test_state_dict_resume_gives_identical_updates():
    def setup():
        model = mlp()
        pruner = ADMM(model, mlp_targets(model), rho=0.05, update_unit="step", update_every=2,
                      rho_schedule="stages", stage_every=2, reset_lr=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, pruner, opt

    def three_epochs(*run):
        run_epochs(*run, 3, steps=3)

    (model, pruner), (model2, pruner2) = run_and_resume(setup, three_epochs, three_epochs)

    assert pruner2.history == pruner.history
    assert pruner2.rho == pruner.rho and pruner2.stage == pruner.stage
    for a, b in zip(pruner.Z + pruner.U, pruner2.Z + pruner2.U, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_of_another_method_or_targets_is_refused():
    model = mlp()
    pruner = ADMM(model, mlp_targets(model))
    state = pruner.state_dict()
    other = ADMM(model, mlp_targets(model)[:1])
    with pytest.raises(ConfigError, match="targets"):
        other.load_state_dict(state)
    with pytest.raises(ConfigError, match="admm"):
        get("reweighted", model, mlp_targets(model)).load_state_dict(state)


# ----------------------------------------------------------- the user's optimizer
class CountingSGD(torch.optim.SGD):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def test_the_users_optimizer_is_used_and_none_is_created(monkeypatch):
    model = mlp()
    opt = CountingSGD(model.parameters(), lr=0.01)
    created = []
    original = torch.optim.Optimizer.__init__

    def spy(self, *args, **kwargs):
        created.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", spy)
    pruner = ProgressiveADMM(model, mlp_targets(model), rates=[0.5, 0.75], update_unit="step")
    pruner.bind(opt)
    run_epochs(model, pruner, opt, 3, steps=4)
    masks_of(pruner.freeze())
    assert created == []
    assert opt.steps == 12
    assert pruner.updates == 12


# ------------------------------------------------------------------- other schemes
def test_admm_with_filter_pruning_on_a_conv_meets_the_rate_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    target = make_target(model, "0.weight", 0.5, "filter")
    pruner = ADMM(model, [target], rho=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 3, 6, 6), torch.randn(16, 2)
    for _ in range(3):
        (nn.functional.mse_loss(model(x), y) + pruner.penalty()).backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
        pruner.end_epoch()
    masks_of(pruner.freeze())
    filters = model[0].weight.detach().flatten(1).norm(dim=1)
    assert int((filters == 0).sum()) == 4
    assert int((model[0].weight != 0).sum()) == 4 * 3 * 3 * 3


# ----------------------------------------------------------------------- progressive
def test_progressive_admm_rounds_nest_their_masks_and_meet_the_final_rate():
    model = mlp()
    targets = mlp_targets(model, 0.9)
    pruner = ProgressiveADMM(model, targets, rates=[0.5, 0.75, 0.9], epochs_per_round=2,
                             rho=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.bind(opt)
    snapshots = []
    for _ in range(7):
        run_epochs(model, pruner, opt, 1, steps=2)
        if pruner.masks is not None and (not snapshots or pruner.round != snapshots[-1][0]):
            snapshots.append((pruner.round, {k: v.clone() for k, v in pruner.masks.items()}))
        if pruner.masks is not None:  # the live masks hold after every step
            for t in targets:
                assert not t.param[~pruner.masks[t.name]].any()
    rounds = [h for h in pruner.history if h["event"] == "round"]
    assert [h["epoch"] for h in rounds] == [2, 4]
    assert [h["rates"]["0.weight"] for h in rounds] == [0.5, 0.75]
    assert pruner.round == 2
    final = masks_of(pruner.freeze())
    masks = [m for _, m in snapshots] + [final]
    assert len(masks) == 3
    for t in targets:
        kept = [int(m[t.name].sum()) for m in masks]
        n = t.param.numel()
        assert kept == [round(0.5 * n), round(0.25 * n), round(0.1 * n)]
        for before, after in zip(masks, masks[1:], strict=False):
            assert not (after[t.name] & ~before[t.name]).any()
        assert int((t.param != 0).sum()) == round(0.1 * n)


def test_progressive_schedules_from_stages_and_from_round_count():
    model = mlp()
    targets = mlp_targets(model, 0.875)
    pruner = ProgressiveADMM(model, targets, rounds=3)
    for rates in pruner.rates:
        assert rates[0] == rates[1]
    assert [r[0] for r in pruner.rates] == pytest.approx([0.5, 0.75, 0.875])

    staged = ProgressiveADMM(
        model, targets,
        stages=[{"sparsity": 0.5, "epochs": 1, "rho": 0.2},
                {"sparsity": {"0": 0.8, "default": 0.6}, "rho": 0.4}],
        epochs_per_round=3, rho=0.1,
    )
    assert staged.round_epochs == [1, 3]
    assert staged.rho == [0.2, 0.2]
    staged.end_epoch()
    assert staged.round == 1 and staged.rho == [0.4, 0.4]
    assert [t.sparsity for t in staged.freeze_targets()] == [0.8, 0.6]


def test_progressive_resume_mid_run_is_exact():
    def setup():
        model = mlp()
        pruner = ProgressiveADMM(model, mlp_targets(model, 0.8), rates=[0.4, 0.8],
                                 epochs_per_round=2, rho=0.2)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        return model, pruner, opt

    model, pruner, opt = setup()
    run_epochs(model, pruner, opt, 3)
    saved = snapshot(model, opt, pruner)
    run_epochs(model, pruner, opt, 2)
    model2, pruner2, opt2 = restore(saved, setup)
    assert pruner2.round == 1 and pruner2.masks is not None
    run_epochs(model2, pruner2, opt2, 2)
    assert pruner2.history == pruner.history
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------- errors
def test_bad_options_are_config_errors_that_name_them():
    model = mlp()
    targets = mlp_targets(model)
    with pytest.raises(ConfigError, match="fc9"):
        ADMM(model, targets, rho={"fc9": 0.1, "default": 0.1})
    with pytest.raises(ConfigError, match="2.weight"):
        ADMM(model, targets, rho={"0": 0.1})
    with pytest.raises(ConfigError, match="rho"):
        ADMM(model, targets, rho=-1.0)
    with pytest.raises(ConfigError, match="update_unit"):
        ADMM(model, targets, update_unit="batch")
    with pytest.raises(ConfigError, match="rho_schedule"):
        ADMM(model, targets, rho_schedule="cosine")
    with pytest.raises(ConfigError, match="lowers"):
        ProgressiveADMM(model, targets, rates=[0.8, 0.5])
    with pytest.raises(ConfigError, match="rho_growht"):
        ProgressiveADMM(model, targets, rates=[0.5], rho_growht=2.0)
    with pytest.raises(ConfigError, match="empty"):
        ADMM(model, [])


def test_get_builds_methods_by_name_and_rejects_unknown_names_and_options():
    model = mlp()
    pruner = get("admm", model, mlp_targets(model), rho=0.01, update_unit="step")
    assert isinstance(pruner, ADMM) and pruner.rho == [0.01, 0.01]
    prog = get("progressive_admm", model, mlp_targets(model), rates=[0.5], rho=0.2)
    assert isinstance(prog, ProgressiveADMM) and prog.rho == [0.2, 0.2]
    with pytest.raises(ConfigError, match="'lasso'.*admm.*reweighted"):
        get("lasso", model, mlp_targets(model))
    with pytest.raises(ConfigError, match="'rhoo'.*rho"):
        get("admm", model, mlp_targets(model), rhoo=0.1)


# ------------------------------------------------------------------ reallocation
def test_reallocate_follows_w_plus_u_and_keeps_the_total_budget():
    """Each Z-step's allocation is exactly global allocation over W + U (the point it
    projects), the total pruned fraction stays the plan's, and Z prunes at those rates."""
    from dataclasses import replace

    from prunekit.targets import allocate_global

    model = mlp()
    with torch.no_grad():
        model[0].weight.mul_(10.0)  # the first layer's weights are much stronger
    targets = mlp_targets(model, 0.75)
    numel = sum(t.numel for t in targets)
    pruner = ADMM(model, targets, rho=0.05, reallocate=True)
    # from the start: the strong layer keeps more, the weak one gives up more
    assert targets[0].sparsity < 0.75 < targets[1].sparsity
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run_epochs(model, pruner, opt, 2)
    for _ in range(3):
        points = [replace(t, param=(t.param.detach() + u).clone())
                  for t, u in zip(targets, pruner.U, strict=True)]
        allocate_global(points, 0.75)
        record = pruner.update()
        assert [t.sparsity for t in targets] == [p.sparsity for p in points]
        assert [record["layers"][t.name]["target_sparsity"] for t in targets] == \
            [t.sparsity for t in targets]
        zeros = sum(int((z == 0).sum()) for z in pruner.Z)
        assert zeros == round(0.75 * numel)
        for t, z in zip(targets, pruner.Z, strict=True):
            assert int((z == 0).sum()) == round(t.sparsity * t.numel)
    frozen = masks_of(pruner.freeze())
    assert sum(int((t.param == 0).sum()) for t in targets) == round(0.75 * numel)
    assert set(frozen) == {t.name for t in targets}


def test_reallocate_resumes_its_allocation():
    def setup():
        model = mlp()
        with torch.no_grad():
            model[0].weight.mul_(3.0)
        pruner = ADMM(model, mlp_targets(model), rho=0.05, update_unit="step",
                      update_every=2, reallocate=True)
        return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05)

    model, pruner, opt = setup()
    run_epochs(model, pruner, opt, 2, steps=3)
    saved = snapshot(model, opt, pruner)
    run_epochs(model, pruner, opt, 2, steps=3)
    model2, pruner2, opt2 = restore(saved, setup)
    run_epochs(model2, pruner2, opt2, 2, steps=3)
    assert pruner2.history == pruner.history
    assert [t.sparsity for t in pruner2.targets] == [t.sparsity for t in pruner.targets]


def test_reallocate_refuses_what_it_cannot_allocate():
    model = mlp()
    with pytest.raises(ConfigError, match="progressive"):
        ProgressiveADMM(model, mlp_targets(model), rates=[0.5, 0.75], reallocate=True)
    with pytest.raises(ConfigError, match="explicit sparsity"):
        ADMM(model, [make_target(model, "0.weight", None, "nm", n=2, m=4)], reallocate=True)
    with pytest.raises(ConfigError, match="reallocate"):
        ADMM(model, mlp_targets(model), reallocate="yes")
