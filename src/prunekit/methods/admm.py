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
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..schemes import check_sparsity
from ..targets import GroupTarget, Target, allocate_global
from .base import (
    UNITS,
    PruningMethod,
    check_bool,
    check_choice,
    check_count,
    check_positive,
    existing_keeps,
    per_target,
)
from .rho import DEFAULT_GROWTH, RHO_SCHEDULES, rho_factor


class ADMM(PruningMethod):
    """ADMM pruning (see the module docstring).

    ``rho`` is one number or ``{layer: number}``. It follows ``rho_schedule``:
    ``"constant"``; ``"geometric"`` (times ``rho_growth``, default 1.5, at every update, up
    to ``rho_max``); ``"stages"`` (times ``rho_growth``, default 10, every ``stage_every``
    updates, up to ``rho_max``); two adaptive schedules that need no tuning per model:
    ``"balance"`` (residual balancing, per layer: times ``rho_growth``, default 2, when the
    primal residual exceeds ``BALANCE_MU`` times the dual, divided by it in the opposite
    case) and ``"support"`` (per layer: times ``rho_growth``, default 1.3, while more than
    ``SUPPORT_BUSY`` of the layer's kept weights changed since the last update, times
    ``SUPPORT_SLOW_GROWTH`` once the support settles). Z/U are updated every ``update_every`` epochs
    (``update_unit="epoch"``, counted in :meth:`end_epoch`) or optimizer steps
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
    #: whether the rates are this method's to re-split (not where rounds fix them)
    can_reallocate = True

    def __init__(
        self,
        model: nn.Module,
        targets: Iterable[Target],
        rho: float | Mapping[str, float] = 1e-3,
        *,
        update_every: int = 1,
        update_unit: str = "epoch",
        rho_schedule: str = "constant",
        rho_growth: float | None = None,
        rho_max: float | None = None,
        stage_every: int = 5,
        rescale_dual: bool = True,
        reset_lr: bool = False,
        keep_zeros: bool = True,
        tol_primal: float | None = None,
        tol_support: float | None = None,
        reallocate: bool = False,
        updates_per_epoch: int | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        super().__init__(model, targets)
        self.rho_init = per_target(rho, self.targets, "rho")
        self.rho = list(self.rho_init)
        self.update_every = check_count(update_every, "update_every")
        self.update_unit = check_choice(update_unit, "update_unit", UNITS)
        self._boundaries = _epoch_boundaries(updates_per_epoch, steps_per_epoch, update_every,
                                             update_unit)
        self.epoch_step = 0  # optimizer steps since the last end_epoch
        self.rho_schedule = check_choice(rho_schedule, "rho_schedule", RHO_SCHEDULES)
        growth = DEFAULT_GROWTH[rho_schedule] if rho_growth is None else rho_growth
        self.rho_growth = check_positive(growth, "rho_growth")
        self.rho_max = None if rho_max is None else check_positive(rho_max, "rho_max")
        if self.rho_max is not None and self.rho_max < max(self.rho_init):
            raise ConfigError(
                f"rho_max ({rho_max}) is below the initial rho ({max(self.rho_init)})"
            )
        self.stage_every = check_count(stage_every, "stage_every")
        self.rescale_dual = check_bool(rescale_dual, "rescale_dual")
        self.reset_lr = check_bool(reset_lr, "reset_lr")
        self.keep_zeros = check_bool(keep_zeros, "keep_zeros")
        self.tol_primal = None if tol_primal is None else check_positive(tol_primal, "tol_primal")
        self.tol_support = (None if tol_support is None
                            else check_positive(tol_support, "tol_support", allow_zero=True))
        self.stop_requested = False
        self.reallocate = check_bool(reallocate, "reallocate")
        self._budget = self._reallocation_budget() if self.reallocate else None

        self.updates = 0  # Z/U updates in all rounds
        self.round = 0
        self.round_updates = 0  # Z/U updates since the current round (or run) began
        self.round_epoch = 0
        self.round_step = 0
        self.stage = 0
        self.lr_reset_pending = False
        self._stage_callbacks: list[Callable[[int], Any]] = []
        self._active: list[Target] = self._round_targets(0)

        if self.keep_zeros:
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
        elif self.update_unit == "step" and self.round_step % self.update_every == 0:
            self.update()

    def _end_epoch(self) -> None:
        self.round_epoch += 1
        self.epoch_step = 0
        if self._boundaries is not None:
            self.update()  # the epoch's last update, however many steps it had
        elif self.update_unit == "epoch" and self.round_epoch % self.update_every == 0:
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
        if self.update_unit != "epoch" or self._boundaries:  # none at one update per epoch
            return None
        return self.update_every * self.stage_every

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
        if self.reallocate:
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
            if self.reallocate:
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
        if self.round_updates % self.stage_every == 0:
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
        tolerances = [(k, tol) for k, tol in (("relative_primal", self.tol_primal),
                                              ("support_change", self.tol_support))
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
        if self.reallocate:
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

    def _reallocation_budget(self) -> float:
        """The targets' pruned fraction, all weights together, as the plan set it."""
        if not self.can_reallocate:
            raise ConfigError("reallocate is for one-round ADMM; progressive ADMM sets "
                              "each round's rates itself")
        for t in self.targets:
            if not isinstance(t, Target) or t.sparsity is None:
                raise ConfigError(f"reallocate needs plain targets with an explicit "
                                  f"sparsity; {t.name!r} is not one")
        numel = sum(t.numel for t in self.targets)
        return math.fsum(float(t.sparsity) * t.numel for t in self.targets) / numel

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
        if self.rho_schedule == "constant":
            return
        if self.rho_schedule == "stages" and self.round_updates % self.stage_every:
            return
        for i, (old, stats) in enumerate(zip(self.rho, layers, strict=True)):
            new = old * rho_factor(self.rho_schedule, stats, self.rho_growth)
            if self.rho_max is not None:
                new = min(new, self.rho_max)
            if new != old and self.rescale_dual:
                for u in self.U[self._spans[i]]:
                    u.mul_(old / new)
            self.rho[i] = new

    def _end_stage(self) -> None:
        self.stage += 1
        if self.reset_lr:
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
        if self.reallocate:  # the saved allocation; older states have none to restore
            rates = state.get("rates")
            if not isinstance(rates, list) or len(rates) != len(self.targets):
                raise ConfigError("state has no allocation for reallocate to resume from")
            for t, rate in zip(self.targets, rates, strict=True):
                t.sparsity = check_sparsity(float(rate), f"saved rate of {t.name!r}")


def admm_option_names() -> list[str]:
    """The keyword options of :class:`ADMM` (besides model and targets)."""
    import inspect  # noqa: PLC0415

    params = inspect.signature(ADMM.__init__).parameters
    return [n for n in params if n not in ("self", "model", "targets")]


def _norm(tensors: Sequence[Tensor]) -> float:
    """L2 norm of several tensors taken together (of one: exactly its ``vector_norm``)."""
    norms = [float(torch.linalg.vector_norm(t).item()) for t in tensors]
    return norms[0] if len(norms) == 1 else math.sqrt(math.fsum(n * n for n in norms))


def _epoch_boundaries(updates_per_epoch: int | None, steps_per_epoch: int | None,
                      update_every: int, update_unit: str) -> frozenset[int] | None:
    """The steps within an epoch after which ``updates_per_epoch`` puts a Z/U update (the
    last one is the epoch's end, so it is not among them); None where the cadence is
    ``update_every`` in ``update_unit``."""
    if updates_per_epoch is None:
        if steps_per_epoch is not None:
            raise ConfigError("steps_per_epoch is read only with updates_per_epoch")
        return None
    n = check_count(updates_per_epoch, "updates_per_epoch")
    if update_every != 1 or update_unit != "epoch":
        raise ConfigError("updates_per_epoch replaces update_every/update_unit; give one")
    if n == 1:
        return frozenset()
    if steps_per_epoch is None:
        raise ConfigError(f"updates_per_epoch ({n}) needs steps_per_epoch (the optimizer steps "
                          f"in one epoch, e.g. len(train_loader))")
    steps = check_count(steps_per_epoch, "steps_per_epoch")
    if n > steps:
        raise ConfigError(f"updates_per_epoch ({n}) exceeds the {steps} steps of an epoch")
    return frozenset(round(k * steps / n) for k in range(1, n))
