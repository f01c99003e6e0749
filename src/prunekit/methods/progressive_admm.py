"""Progressive ADMM: rounds of rising sparsity, each starting from the last hardened model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .. import validate
from ..errors import ConfigError, within
from ..targets import GroupTarget, Target
from .admm import ADMM, ADMMOptions
from .base import at_rate, check_targets, explicit_rate, per_layer, per_target

_STAGE_KEYS = ("sparsity", "epochs", "rho")


@dataclass
class ProgressiveADMMOptions(ADMMOptions):
    """:class:`ProgressiveADMM`'s schedule options (described there) and ADMM's."""

    rates: list[Any] | None = None
    stages: list[Any] | None = None
    rounds: int | None = None
    epochs_per_round: int = 1

    can_reallocate: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(validate.integer, "epochs_per_round", bounds=">= 1")
        given = [n for n in ("rates", "stages", "rounds") if getattr(self, n) is not None]
        if len(given) > 1:
            validate.fail(f"progressive_admm takes one of rates, stages or rounds, got {given}",
                          given[1])
        self._check(validate.integer, "rounds", bounds=">= 1", optional=True)
        if self.rates is not None:
            if not isinstance(self.rates, list | tuple) or not self.rates:
                validate.fail(f"rates must be a non-empty list of rates, got {self.rates!r}",
                              "rates")
            self.rates = [per_layer(r, f"rates[{i}]", "[0, 1)", "rates")
                          for i, r in enumerate(self.rates)]
        if self.stages is not None:
            if not isinstance(self.stages, list | tuple) or not self.stages:
                validate.fail("stages must be a non-empty list of {sparsity, epochs, rho} "
                              "dicts", "stages")
            self.stages = [self._stage(i, s) for i, s in enumerate(self.stages)]

    def _stage(self, i: int, stage: Any) -> dict[str, Any]:
        """One entry of ``stages``, checked (errors keyed ``stages.i.key``)."""
        with within("stages", str(i)):
            if not isinstance(stage, Mapping) or "sparsity" not in stage:
                validate.fail(f"stages[{i}] must be a dict with a 'sparsity' key, got "
                              f"{stage!r}")
            validate.known_keys(stage, _STAGE_KEYS, where=f"stages[{i}]")
            rho = stage.get("rho")
            return {"sparsity": per_layer(stage["sparsity"], f"stages[{i}].sparsity",
                                          "[0, 1)", "sparsity"),
                    "epochs": validate.integer(stage.get("epochs", self.epochs_per_round),
                                               "epochs", bounds=">= 1",
                                               subject=f"stages[{i}].epochs"),
                    "rho": None if rho is None else per_layer(rho, f"stages[{i}].rho",
                                                              key="rho")}

    def schedule(self, targets: Sequence[Target | GroupTarget]
                 ) -> tuple[list[list[float]], list[int], list[list[float] | None]]:
        """Per round: the rate of every target, the epochs, and the rho (None: the
        initial), and no round lowers a rate."""
        if self.stages is not None:
            table = [per_target(s["sparsity"], targets, f"stages[{i}].sparsity", "stages")
                     for i, s in enumerate(self.stages)]
            epochs = [s["epochs"] for s in self.stages]
            rhos = [None if s["rho"] is None else
                    per_target(s["rho"], targets, f"stages[{i}].rho", "stages")
                    for i, s in enumerate(self.stages)]
        else:
            if self.rates is None:
                n = 3 if self.rounds is None else self.rounds
                finals = [explicit_rate(t, "progressive_admm") for t in targets]
                table = [[1.0 - (1.0 - s) ** ((r + 1) / n) for s in finals] for r in range(n)]
                table[-1] = finals
            else:
                table = [per_target(r, targets, f"rates[{i}]", "rates")
                         for i, r in enumerate(self.rates)]
            epochs = [self.epochs_per_round] * len(table)
            rhos = [None] * len(table)
        for r in range(1, len(table)):
            for t, before, now in zip(targets, table[r - 1], table[r], strict=True):
                if now < before:
                    validate.fail(f"round {r} lowers the rate of {t.name!r} from {before} to "
                                  f"{now}; progressive rates must not decrease",
                                  "stages" if self.stages is not None else "rates")
        return table, epochs, rhos

    def check_targets(self, targets: Sequence[Target | GroupTarget]) -> None:
        super().check_targets(targets)
        self.schedule(targets)


class ProgressiveADMM(ADMM):
    """ADMM in rounds of rising sparsity, each starting from the last hardened model.

    The schedule is ``rates`` (one entry per round: a rate for every layer or
    ``{layer: rate, "default": rate}``), or ``stages`` (dicts with ``sparsity`` as above
    and optionally ``epochs`` and ``rho`` for that round), or, with neither, ``rounds``
    rounds whose rates rise geometrically to each target's own rate (every round keeps
    the same fraction of what the last one kept). Each round lasts ``epochs_per_round``
    epochs; at its end the weights are hardened to the round's rate, those masks are
    enforced during the rest of the run, and a fresh ADMM (rho back to its initial value,
    Z from the projection at the next rate inside the mask, U = 0) starts. The rounds are
    driven by :meth:`end_epoch`, so this plugs into the same loop as :class:`ADMM`; after
    the last round it keeps running ADMM at the final rate, and :meth:`freeze` hardens to
    the final rate. Other options are :class:`ADMM`'s.
    """

    name = "progressive_admm"
    Options = ProgressiveADMMOptions

    def __init__(self, model: nn.Module, targets: Iterable[Target],
                 options: ProgressiveADMMOptions | None = None, **given: Any) -> None:
        # the schedule first: ADMM's constructor starts the first round
        options = self.configure(options, given)
        checked = check_targets(model, targets)
        self.rates, self.round_epochs, round_rho = options.schedule(checked)
        super().__init__(model, checked, options)
        self.round_rho = [self.rho_init if r is None else r for r in round_rho]
        self.rho = list(self.round_rho[0])

    def _round_targets(self, index: int) -> list[Target]:
        return [at_rate(t, rate) for t, rate in zip(self.targets, self.rates[index], strict=True)]

    def freeze_targets(self) -> list[Target]:
        return self._round_targets(len(self.rates) - 1)

    def _in_last_round(self) -> bool:
        return self.round + 1 >= len(self.rates)

    def _end_epoch(self) -> None:
        super()._end_epoch()
        last = self.round + 1 >= len(self.rates)
        if not last and self.round_epoch >= self.round_epochs[self.round]:
            self._next_round()

    def _next_round(self) -> None:
        masks = self._freeze_round(self._active)
        self.set_masks(masks)
        self.history.append({
            "event": "round",
            "round": self.round,
            "epoch": self.epoch,
            "step": self.step,
            "rates": {t.name: float(r) for t, r in zip(self.targets, self.rates[self.round],
                                                        strict=True)},
        })
        self.round += 1
        self.round_updates = self.round_epoch = self.round_step = 0
        self._active = self._round_targets(self.round)
        self.rho = list(self.round_rho[self.round])
        self._restart()
        self._end_stage()

    def progress(self) -> dict[str, float]:
        return {**super().progress(), "round": float(self.round)}

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "rates": [list(r) for r in self.rates]}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        saved = [[float(x) for x in r] for r in state["rates"]]
        if saved != self.rates:
            raise ConfigError(f"state was saved with round rates {saved}, not {self.rates}")
        super()._load_extra_state(state)
