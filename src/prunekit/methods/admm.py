"""Systematic ADMM pruning (progressive rounds: :mod:`.progressive_admm`; rho schedules:
:mod:`.rho`).

The problem ``min f(W) s.t. W_i in S_i`` is split with a copy ``Z_i in S_i`` and solved by
alternating three steps (scaled dual form):

- **W-step**: the user's own training on ``f(W) + sum_i rho_i/2 ||W_i - Z_i + U_i||_F^2``;
  :meth:`ADMM.penalty` is that second term, with the *squared* Frobenius norm so that its
  gradient is ``rho_i (W_i - Z_i + U_i)``: a spring toward ``Z_i - U_i``, not a constant pull;
- **Z-step**: ``Z_i = P_i(W_i + U_i)``, the scheme's exact Euclidean projection;
- **U-step**: ``U_i += W_i - Z_i``, the running sum of the constraint violations.

``Z_0`` is the projection of the pretrained weights and ``U_0 = 0``. Z and U are allocated
once and updated in place, so memory stays flat however many updates run. When rho changes,
U is rescaled by ``rho_old / rho_new`` so that ``rho * U`` (the unscaled dual) is unchanged,
as the scaled form requires; ``rescale_dual=False`` keeps U as is.

A model that is already sparse is pruned further without reviving anything: its exact
zeros (or the live masks of an earlier round) restrict the Z-step, ``Z = P((W + U) * M) *
M``, and are enforced on W after every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import validate
from ..errors import ConfigError
from ..schemes import check_sparsity
from ..targets import GroupTarget, Target, allocate_global
from .base import UNITS, MethodOptions, PruningMethod, existing_keeps, per_layer, per_target
from .rho import DEFAULT_GROWTH, RHO_SCHEDULES, rho_factor


@dataclass
class ADMMOptions(MethodOptions):
    """:class:`ADMM`'s options (described there), checked when built."""

    rho: float | Mapping[str, float] = 1e-3
    update_every: int = 1
    update_unit: str = "epoch"
    #: adaptive by default: on the compression benchmark it measures the same accuracy as
    #: a constant rho (irregular 40x, 12 epochs, two seeds: 91.46% vs 91.47%) and leaves a
    #: third of the residual at hardening (0.17 vs 0.51), with no rate to tune per model
    rho_schedule: str = "support"
    rho_growth: float | None = None
    rho_max: float | None = None
    stage_every: int = 5
    rescale_dual: bool = True
    reset_lr: bool = False
    keep_zeros: bool = True
    tol_primal: float | None = None
    tol_support: float | None = None
    reallocate: bool = False
    updates_per_epoch: int | None = None
    steps_per_epoch: int | None = None

    #: whether the rates are the method's to re-split (not where rounds fix them)
    can_reallocate: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.rho = per_layer(self.rho, "rho")
        for name in ("update_every", "stage_every"):
            self._check(validate.integer, name, bounds=">= 1")
        self._check(validate.choice, "update_unit", choices=UNITS)
        self._check(validate.choice, "rho_schedule", choices=RHO_SCHEDULES)
        for name in ("rho_growth", "rho_max", "tol_primal"):
            self._check(validate.number, name, bounds="> 0", optional=True)
        self._check(validate.number, "tol_support", bounds=">= 0", optional=True)
        for name in ("rescale_dual", "reset_lr", "keep_zeros", "reallocate"):
            self._check(validate.boolean, name)
        for name in ("updates_per_epoch", "steps_per_epoch"):
            self._check(validate.integer, name, bounds=">= 1", optional=True)
        n, steps = self.updates_per_epoch, self.steps_per_epoch
        if n is None and steps is not None:
            validate.fail("steps_per_epoch is read only with updates_per_epoch",
                          "steps_per_epoch")
        if n is not None and (self.update_every != 1 or self.update_unit != "epoch"):
            validate.fail("updates_per_epoch replaces update_every/update_unit; give one",
                          "updates_per_epoch")
        if n is not None and steps is not None and n > steps:
            validate.fail(f"updates_per_epoch ({n}) exceeds the {steps} steps of an epoch",
                          "updates_per_epoch")
        if self.reallocate and not self.can_reallocate:
            validate.fail("reallocate is for one-round ADMM; progressive ADMM sets each "
                          "round's rates itself", "reallocate")

    def initial_rho(self, targets: Sequence[Target | GroupTarget]) -> list[float]:
        """Every target's rho, at most ``rho_max``."""
        rho = per_target(self.rho, targets, "rho", "rho")
        if self.rho_max is not None and self.rho_max < max(rho):
            validate.fail(f"rho_max ({self.rho_max}) is below the initial rho ({max(rho)})",
                          "rho_max")
        return rho

    def check_targets(self, targets: Sequence[Target | GroupTarget]) -> None:
        self.initial_rho(targets)
        if self.reallocate:
            reallocation_budget(targets)


class ADMM(PruningMethod):
    """ADMM pruning (see the module docstring).

    ``rho`` is one number or ``{layer: number}``. It follows ``rho_schedule`` (default
    ``"support"``): ``"constant"``; ``"geometric"`` (times ``rho_growth``, default 1.5, at
    every update, up to ``rho_max``); ``"stages"`` (times ``rho_growth``, default 10, every
    ``stage_every`` updates, up to ``rho_max``); two adaptive schedules that need no tuning
    per model: ``"balance"`` (residual balancing, per layer: times ``rho_growth``, default
    2, when the primal residual exceeds ``BALANCE_MU`` times the dual, divided by it in the
    opposite case) and ``"support"`` (per layer: times ``rho_growth``, default 1.3, while
    more than ``SUPPORT_BUSY`` of the layer's kept weights changed since the last update,
    times ``SUPPORT_SLOW_GROWTH`` once the support settles). Z/U are updated every
    ``update_every`` epochs (``update_unit="epoch"``, counted in :meth:`end_epoch`) or
    optimizer steps
    (``"step"``, counted in :meth:`after_step`). ``updates_per_epoch=n`` instead updates n
    times per epoch, evenly spaced over the epoch's ``steps_per_epoch`` optimizer steps, the
    last at :meth:`end_epoch`: the cadence then means the same on a data set of any size
    (prunekit's pipeline fills ``steps_per_epoch`` in from its data loader).

    Every ``stage_every`` updates a *stage* ends: the functions given to :meth:`on_stage`
    are called with the stage number, and with ``reset_lr=True`` the flag
    ``lr_reset_pending`` is raised for a loop that restarts its learning rate per stage
    (clear it once done): prunekit's trainer does, and anneals the rate again over
    :attr:`lr_cycle_epochs`, ADMM-NN's per-update learning-rate policy when
    ``stage_every=1``. ``keep_zeros=False`` ignores exact zeros already in the weights.

    ``reallocate=True`` re-decides how the targets share their sparsity at every Z-step:
    the targets' total pruned fraction stays what the plan asked, and
    :func:`~prunekit.targets.allocate_global` splits it over the layers by the scores of
    ``W + U`` (the point the Z-step projects), so the allocation follows the weights as
    training moves them instead of staying what the dense weights suggested. The targets'
    ``sparsity`` is updated in place, so hardening (and whatever reads the targets after it)
    uses the last allocation. Plain (one-parameter) targets with an explicit rate only.

    ``tol_primal`` (relative primal residual ``sum ||W - Z|| / sum ||W||``) and
    ``tol_support`` (fraction of the kept weights whose membership changed at the last
    update): once every given tolerance is met (in the last round), ADMM has converged:
    it records a ``converged`` event and raises ``stop_requested``, which ends the phase
    in prunekit's trainer (any loop may read it). Neither given: ADMM runs its epochs.
    """

    name = "admm"
    Options = ADMMOptions

    def __init__(self, model: nn.Module, targets: Iterable[Target],
                 options: ADMMOptions | None = None, **given: Any) -> None:
        super().__init__(model, targets, options, **given)
        o = self.options
        self.rho_init = o.initial_rho(self.targets)
        self.rho = list(self.rho_init)
        self._boundaries = _epoch_boundaries(o)
        self.epoch_step = 0  # optimizer steps since the last end_epoch
        self.rho_growth = DEFAULT_GROWTH[o.rho_schedule] if o.rho_growth is None else \
            o.rho_growth
        self.stop_requested = False
        self._budget = reallocation_budget(self.targets) if o.reallocate else None

        self.updates = 0  # Z/U updates in all rounds
        self.round = 0
        self.round_updates = 0  # Z/U updates since the current round (or run) began
        self.round_epoch = 0
        self.round_step = 0
        self.stage = 0
        self.lr_reset_pending = False
        self._stage_callbacks: list[Callable[[int], Any]] = []
        self._active: list[Target] = self._round_targets(0)

        if self.options.keep_zeros:
            keep = {n: m for t in self.targets for n, m in existing_keeps(model, t).items()}
            if keep:
                self.set_masks(keep)
        # Allocated once; every later change is in place (flat memory, no shared storage).
        # One Z and U per member of each target, in one flat list (one entry per target
        # unless a coupled group spans several parameters); ``_spans[i]`` indexes target i's.
        self._spans: list[slice] = []
        for t in self.targets:
            start = sum(s.stop - s.start for s in self._spans)
            self._spans.append(slice(start, start + len(t.members)))
        self.Z = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                  for t in self.targets for _, p in t.members]
        self.U = [torch.zeros_like(z) for z in self.Z]
        self._last: dict[str, float] = {}
        self._restart()

    # ---------------------------------------------------------------- protocol
    def _penalty(self) -> Tensor:
        self._follow_devices()
        device = self.targets[0].param.device
        total = self._zero()
        for t, (zs, us), rho in zip(self._active, self._state(), self.rho, strict=True):
            for (_, p), z, u in zip(t.members, zs, us, strict=True):
                term = (p - z + u).pow(2).sum() * (rho / 2.0)
                total = total + term.to(device)
        return total

    def _after_step(self) -> None:
        self.round_step += 1
        self.epoch_step += 1
        if self._boundaries is not None:
            if self.epoch_step in self._boundaries:
                self.update()
        elif (o := self.options).update_unit == "step" and self.round_step % o.update_every == 0:
            self.update()

    def _end_epoch(self) -> None:
        self.round_epoch += 1
        self.epoch_step = 0
        if self._boundaries is not None:
            self.update()  # the epoch's last update, however many steps it had
        elif (o := self.options).update_unit == "epoch" and self.round_epoch % o.update_every == 0:
            self.update()

    def freeze_targets(self) -> list[Target]:
        return self._active

    def on_stage(self, fn: Callable[[int], Any]) -> Callable[[int], Any]:
        """Call ``fn(stage_number)`` whenever a stage ends (e.g. to reset the learning
        rate). Returns ``fn`` so it can be used as a decorator. Callbacks are not state:
        register them again after a resume."""
        if not callable(fn):
            raise ConfigError(f"on_stage needs a callable, got {type(fn).__name__}")
        self._stage_callbacks.append(fn)
        return fn

    @property
    def lr_cycle_epochs(self) -> int | None:
        """Epochs between two learning-rate restarts (one stage); None when updates are
        counted in steps, where the trainer anneals to the end of training instead."""
        if self.options.update_unit != "epoch" or self._boundaries:  # none at one update per epoch
            return None
        return self.options.update_every * self.options.stage_every

    def progress(self) -> dict[str, float]:
        """The last update's residuals; its sparsity is Z's (the projection the weights are
        pulled toward), named so: the weights themselves stay dense until hardening."""
        shown = {("Z_sparsity" if k == "sparsity" else k): v for k, v in self._last.items()}
        return {**shown, "rho": max(self.rho)}

    # ---------------------------------------------------------------- the ADMM
    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """One Z-step and U-step for every target, then the rho schedule. Returns (and
        appends to ``history``) the residuals: primal ``sum_i ||W_i - Z_i||`` and dual
        ``sum_i rho_i ||Z_i - Z_i_prev||``, the primal relative to ``sum_i ||W_i||``, and the
        support change (weights entering or leaving Z's support over the kept weights),
        per layer too."""
        self._follow_devices()
        layers: dict[str, dict[str, float]] = {}
        zeros = total = changed = kept = 0
        weight_norm = 0.0
        points = None
        if self.options.reallocate:
            points = [[p.detach() + u for (_, p), u in zip(t.members, us, strict=True)]
                      for t, (_, us) in zip(self._active, self._state(), strict=True)]
            self._reallocate(points)
        for i, (t, (zs, us), rho) in enumerate(zip(self._active, self._state(), self.rho,
                                                   strict=True)):
            ws = [p.detach() for _, p in t.members]
            z_new = self._project(t, points[i] if points is not None else
                                  [w + u for w, u in zip(ws, us, strict=True)])
            dual = rho * _norm([zn - z for zn, z in zip(z_new, zs, strict=True)])
            flips = sum(int(((zn != 0) != (z != 0)).sum().item())
                        for zn, z in zip(z_new, zs, strict=True))
            for z, zn in zip(zs, z_new, strict=True):
                z.copy_(zn)
            del z_new
            for w, z, u in zip(ws, zs, us, strict=True):
                u.add_(w).sub_(z)
            primal = _norm([w - z for w, z in zip(ws, zs, strict=True)])
            norm = _norm(ws)
            nonzero = sum(int((z != 0).sum().item()) for z in zs)
            layers[t.name] = {"rho": rho, "primal": primal, "dual": dual,
                              "relative_primal": primal / norm if norm > 0 else 0.0,
                              "support_change": flips / max(nonzero, 1)}
            if self.options.reallocate:
                layers[t.name]["target_sparsity"] = float(t.sparsity)
            numel = sum(z.numel() for z in zs)
            zeros += numel - nonzero
            total += numel
            changed += flips
            kept += nonzero
            weight_norm += norm
        self.updates += 1
        self.round_updates += 1
        record = {
            "event": "update",
            "update": self.updates,
            "round": self.round,
            "epoch": self.epoch,
            "step": self.step,
            "rho": max(self.rho),
            "primal": math.fsum(v["primal"] for v in layers.values()),
            "dual": math.fsum(v["dual"] for v in layers.values()),
            "sparsity": zeros / total,
            "support_change": changed / max(kept, 1),
            "layers": layers,
        }
        primal = record["primal"]
        record["relative_primal"] = primal / weight_norm if weight_norm > 0 else 0.0
        self.history.append(record)
        self._last = {k: record[k] for k in ("sparsity", "primal", "dual", "relative_primal",
                                             "support_change")}
        self._advance_rho(list(layers.values()))
        if self.round_updates % self.options.stage_every == 0:
            self._end_stage()
        self._check_converged(record)
        return record

    def _state(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """``(Z, U)`` of every target's members, in target order."""
        return [(self.Z[span], self.U[span]) for span in self._spans]

    def _by_key(self, tensors: list[Tensor]) -> list[tuple[str, Tensor]]:
        """``(state key, tensor)`` of every member: the target's name for a one-parameter
        target, ``"group/parameter"`` for a coupled group's members."""
        keys = [t.name if isinstance(t, Target) else f"{t.name}/{name}"
                for t in self.targets for name in t.names]
        return list(zip(keys, tensors, strict=True))

    def _check_converged(self, record: Mapping[str, Any]) -> None:
        tolerances = [(k, tol) for k, tol in (("relative_primal", self.options.tol_primal),
                                              ("support_change", self.options.tol_support))
                      if tol is not None]
        if not tolerances or not self._in_last_round():
            return
        if all(record[k] <= tol for k, tol in tolerances):
            self.stop_requested = True
            self.history.append({"event": "converged", "update": self.updates,
                                 "epoch": self.epoch, "step": self.step,
                                 **{k: record[k] for k, _ in tolerances}})

    def _in_last_round(self) -> bool:
        return True

    def _project(self, target: Target | GroupTarget, values: list[Tensor]) -> list[Tensor]:
        """``P(v * M) * M`` with the live masks M of ``target``'s members (plain ``P(v)``
        without them), one tensor per member."""
        keep = None if self.masks is None else [self.masks.get(n) for n in target.names]
        return target.project_members(values, keep)

    @torch.no_grad()
    def _restart(self) -> None:
        """Begin a run (or round): Z = projection of the current weights, U = 0."""
        zeros = total = 0
        primal = weight_norm = 0.0
        if self.options.reallocate:
            self._reallocate([[p.detach() for _, p in t.members] for t in self._active])
        for t, (zs, us) in zip(self._active, self._state(), strict=True):
            ws = [p.detach() for _, p in t.members]
            for z, zn, u in zip(zs, self._project(t, ws), us, strict=True):
                z.copy_(zn)
                u.zero_()
            primal += _norm([w - z for w, z in zip(ws, zs, strict=True)])
            weight_norm += _norm(ws)
            zeros += sum(int((z == 0).sum().item()) for z in zs)
            total += sum(z.numel() for z in zs)
        self._last = {"sparsity": zeros / total, "primal": primal, "dual": 0.0,
                      "relative_primal": primal / weight_norm if weight_norm > 0 else 0.0,
                      "support_change": 0.0}

    def _reallocate(self, points: list[list[Tensor]]) -> None:
        """Set every target's rate from one global allocation over ``points`` (one tensor
        per target: the values the Z-step will project), live masks applied, so weights
        that must stay zero rank lowest."""
        assert self._budget is not None
        masks = self.masks or {}
        scratch = [replace(t, param=values[0] if masks.get(t.name) is None
                           else values[0] * masks[t.name])
                   for t, values in zip(self._active, points, strict=True)]
        allocate_global(scratch, self._budget, where="ADMM reallocate")
        for t, moved in zip(self._active, scratch, strict=True):
            t.sparsity = moved.sparsity

    @torch.no_grad()
    def _advance_rho(self, layers: Sequence[Mapping[str, float]]) -> None:
        if self.options.rho_schedule == "constant":
            return
        if self.options.rho_schedule == "stages" and self.round_updates % self.options.stage_every:
            return
        for i, (old, stats) in enumerate(zip(self.rho, layers, strict=True)):
            new = old * rho_factor(self.options.rho_schedule, stats, self.rho_growth)
            if self.options.rho_max is not None:
                new = min(new, self.options.rho_max)
            if new != old and self.options.rescale_dual:
                for u in self.U[self._spans[i]]:
                    u.mul_(old / new)
            self.rho[i] = new

    def _end_stage(self) -> None:
        self.stage += 1
        if self.options.reset_lr:
            self.lr_reset_pending = True
        for fn in self._stage_callbacks:
            fn(self.stage)

    def _round_targets(self, index: int) -> list[Target]:
        return self.targets

    def _follow_devices(self) -> None:
        """Keep Z/U on each weight's device if the model was moved after construction."""
        params = [p for t in self.targets for _, p in t.members]
        for j, p in enumerate(params):
            if self.Z[j].device != p.device:
                self.Z[j] = self.Z[j].to(p.device)
                self.U[j] = self.U[j].to(p.device)

    # ------------------------------------------------------------------- state
    def _extra_state(self) -> dict[str, Any]:
        return {
            "Z": {k: z.clone() for k, z in self._by_key(self.Z)},
            "U": {k: u.clone() for k, u in self._by_key(self.U)},
            "rho": list(self.rho),
            "updates": self.updates,
            "round": self.round,
            "round_updates": self.round_updates,
            "round_epoch": self.round_epoch,
            "round_step": self.round_step,
            "epoch_step": self.epoch_step,
            "stage": self.stage,
            "lr_reset_pending": self.lr_reset_pending,
            "stop_requested": self.stop_requested,
            "last": dict(self._last),
            "rates": [t.sparsity for t in self.targets],
        }

    @torch.no_grad()
    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        rho = [float(r) for r in state["rho"]]
        if len(rho) != len(self.targets):
            raise ConfigError(f"state has {len(rho)} rho values for {len(self.targets)} targets")
        self.round = int(state["round"])
        self._active = self._round_targets(self.round)
        for (key, z), (_, u) in zip(self._by_key(self.Z), self._by_key(self.U), strict=True):
            for what, mine in (("Z", z), ("U", u)):
                saved = state[what].get(key)
                if not isinstance(saved, Tensor) or saved.shape != mine.shape:
                    raise ConfigError(f"state {what} for {key!r} is missing or has the wrong "
                                      f"shape (expected {tuple(mine.shape)})")
                mine.copy_(saved)
        self.rho = rho
        self.updates = int(state["updates"])
        self.round_updates = int(state["round_updates"])
        self.round_epoch = int(state["round_epoch"])
        self.round_step = int(state["round_step"])
        self.epoch_step = int(state.get("epoch_step", 0))  # states saved before had none
        self.stage = int(state["stage"])
        self.lr_reset_pending = bool(state["lr_reset_pending"])
        self.stop_requested = bool(state["stop_requested"])
        self._last = {k: float(v) for k, v in state["last"].items()}
        if self.options.reallocate:  # the saved allocation; older states have none to restore
            rates = state.get("rates")
            if not isinstance(rates, list) or len(rates) != len(self.targets):
                raise ConfigError("state has no allocation for reallocate to resume from")
            for t, rate in zip(self.targets, rates, strict=True):
                t.sparsity = check_sparsity(float(rate), f"saved rate of {t.name!r}")


def reallocation_budget(targets: Sequence[Target | GroupTarget]) -> float:
    """The targets' pruned fraction, all weights together, as the plan set it."""
    for t in targets:
        if not isinstance(t, Target) or t.sparsity is None:
            validate.fail(f"reallocate needs plain targets with an explicit sparsity; "
                          f"{t.name!r} is not one", "reallocate")
    numel = sum(t.numel for t in targets)
    return math.fsum(float(t.sparsity) * t.numel for t in targets) / numel


def _norm(tensors: Sequence[Tensor]) -> float:
    """L2 norm of several tensors taken together (of one: exactly its ``vector_norm``)."""
    norms = [float(torch.linalg.vector_norm(t).item()) for t in tensors]
    return norms[0] if len(norms) == 1 else math.sqrt(math.fsum(n * n for n in norms))


def _epoch_boundaries(options: ADMMOptions) -> frozenset[int] | None:
    """The steps within an epoch after which ``updates_per_epoch`` puts a Z/U update (the
    last one is the epoch's end, so it is not among them); None where the cadence is
    ``update_every`` in ``update_unit``."""
    n, steps = options.updates_per_epoch, options.steps_per_epoch
    if n is None:
        return None
    if n == 1:
        return frozenset()
    if steps is None:
        validate.fail(f"updates_per_epoch ({n}) needs steps_per_epoch (the optimizer steps "
                      f"in one epoch, e.g. len(train_loader))", "steps_per_epoch")
    return frozenset(round(k * steps / n) for k in range(1, n))
