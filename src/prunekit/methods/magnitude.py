"""Magnitude baselines: one-shot hard pruning and gradual pruning (Zhu & Gupta, 2017).

Both prune with each target's own scheme (its exact projection, so "magnitude" means the
scheme's notion of it: |w| for irregular, filter norms for filter pruning, ...) and keep
the pruned weights at zero by enforcing the masks after every optimizer step.

Pruning happens in :meth:`after_step` / :meth:`end_epoch` (or an explicit :meth:`start`),
never in :meth:`penalty`: the penalty is computed after the forward pass, and editing the
weights there would invalidate the graph that the backward pass still needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .. import validate
from ..targets import GroupTarget, Target
from .base import MethodOptions, PruningMethod, at_rate, explicit_rate, zero_fraction


class OneShotMagnitude(PruningMethod):
    """Harden every target at once: on :meth:`start` or the first ``after_step`` /
    ``end_epoch``. The penalty is always zero; afterwards the masks are enforced."""

    name = "magnitude"

    def start(self) -> dict[str, Tensor]:
        """Prune now (once); returns the masks."""
        if not self.hardened:
            self.freeze()
        assert self.masks is not None
        return self.masks

    def after_step(self) -> None:
        self.start()
        super().after_step()

    def end_epoch(self) -> None:
        self.start()
        super().end_epoch()


def cubic_sparsity(t: float, initial: float, final: float, start: float, end: float) -> float:
    """Zhu & Gupta's schedule ``s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``.

    ``initial`` before ``start``, ``final`` from ``end`` on; in between it rises fast
    first (while many redundant weights remain) and slowly near the end.
    """
    if t >= end:
        return final
    if t <= start:
        return initial
    return final + (initial - final) * (1.0 - (t - start) / (end - start)) ** 3


@dataclass
class GradualOptions(MethodOptions):
    """:class:`GradualMagnitude`'s options (described there); ``end_epoch`` is required."""

    start_epoch: int = 0
    end_epoch: int | None = None
    initial_sparsity: float = 0.0
    frequency: int = 1
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        self._check(validate.integer, "start_epoch", bounds=">= 0")
        if self.end_epoch is None:
            validate.fail("gradual needs end_epoch (the epoch the final rate is reached)",
                          "end_epoch")
        self._check(validate.integer, "end_epoch", bounds=f">= {self.start_epoch}")
        self._check(validate.number, "initial_sparsity", bounds="[0, 1)")
        self._check(validate.integer, "frequency", bounds=">= 1")
        self._check(validate.integer, "steps_per_epoch", bounds=">= 1", optional=True)

    def check_targets(self, targets: Sequence[Target | GroupTarget]) -> None:
        for t in targets:
            rate = explicit_rate(t, "gradual")
            if self.initial_sparsity > rate:
                validate.fail(f"initial_sparsity {self.initial_sparsity} exceeds the rate "
                              f"{rate} of target {t.name!r}", "initial_sparsity")


class GradualMagnitude(PruningMethod):
    """Prune gradually from ``initial_sparsity`` at ``start_epoch`` to each target's rate
    at ``end_epoch`` on the cubic schedule (:func:`cubic_sparsity`).

    Without ``steps_per_epoch`` the schedule advances in epochs and prunes every
    ``frequency`` epochs (in :meth:`end_epoch`); with it, time is ``steps /
    steps_per_epoch`` and it prunes every ``frequency`` optimizer steps (in
    :meth:`after_step`). Each pruning hardens at the current rate intersected with the
    existing mask, so a pruned weight never revives; the masks are enforced after every
    step. The last pruning lands exactly on ``end_epoch`` at the final rate.
    """

    name = "gradual"
    Options = GradualOptions

    def __init__(self, model: nn.Module, targets: Iterable[Target],
                 options: GradualOptions | None = None, **given: Any) -> None:
        super().__init__(model, targets, options, **given)
        self.final_rates = [explicit_rate(t, "gradual") for t in self.targets]
        self.started = False
        self.prunings = 0

    # ------------------------------------------------------------- the schedule
    def sparsity_at(self, t: float) -> dict[str, float]:
        """Every target's scheduled rate at time ``t`` (in epochs)."""
        o = self.options
        return {target.name: cubic_sparsity(t, min(o.initial_sparsity, rate), rate,
                                            o.start_epoch, o.end_epoch)
                for target, rate in zip(self.targets, self.final_rates, strict=True)}

    def start(self) -> None:
        """Take the pruning due at time 0 (when ``start_epoch`` is 0); called by the first
        ``after_step`` / ``end_epoch`` when not called before."""
        if not self.started:
            self.started = True
            self._maybe_prune(0)

    def after_step(self) -> None:
        self.start()
        super().after_step()

    def end_epoch(self) -> None:
        self.start()
        super().end_epoch()

    def _after_step(self) -> None:
        if self.options.steps_per_epoch is not None:
            self._maybe_prune(self.step)

    def _end_epoch(self) -> None:
        if self.options.steps_per_epoch is None:
            self._maybe_prune(self.epoch)

    def _maybe_prune(self, count: int) -> None:
        scale = self.options.steps_per_epoch or 1
        first, last = self.options.start_epoch * scale, self.options.end_epoch * scale
        if not first <= count <= last:
            return
        if (count - first) % self.options.frequency and count != last:
            return
        self.prune_to(self.sparsity_at(count / scale), time=count / scale)

    def prune_to(self, rates: Mapping[str, float], time: float | None = None) -> dict[str, Tensor]:
        """Harden every target at ``rates[name]`` inside the current masks, enforce it."""
        masks = self._freeze_round([at_rate(t, rates[t.name]) for t in self.targets])
        self.set_masks(masks)
        self.prunings += 1
        self.history.append({
            "event": "prune",
            "update": self.prunings,
            "epoch": self.epoch,
            "step": self.step,
            "time": float(self.epoch if time is None else time),
            "rates": {k: float(v) for k, v in rates.items()},
            "sparsity": zero_fraction(t.param for t in self.targets),
        })
        return masks

    # ------------------------------------------------------------------- state
    def _extra_state(self) -> dict[str, Any]:
        return {"started": self.started, "prunings": self.prunings}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.started = bool(state["started"])
        self.prunings = int(state["prunings"])
