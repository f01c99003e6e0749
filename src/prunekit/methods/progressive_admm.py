"""Progressive ADMM: rounds of rising sparsity, each starting from the last hardened model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..schemes import check_sparsity
from ..targets import Target
from .admm import ADMM, admm_option_names
from .base import at_rate, check_count, check_targets, explicit_rate, per_target

_PROGRESSIVE_OPTIONS = {"rates", "stages", "rounds", "epochs_per_round"}
_STAGE_KEYS = ("sparsity", "epochs", "rho")



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
    can_reallocate = False

    def __init__(
        self,
        model: nn.Module,
        targets: Iterable[Target],
        rates: Sequence[float | Mapping[str, float]] | None = None,
        *,
        stages: Sequence[Mapping[str, Any]] | None = None,
        rounds: int | None = None,
        epochs_per_round: int = 1,
        **admm_options: Any,
    ) -> None:
        checked = check_targets(model, targets)
        unknown = sorted(set(admm_options) - set(admm_option_names()))
        if unknown:
            raise ConfigError(
                f"progressive_admm got unknown options {unknown}; valid: "
                f"{', '.join(sorted(set(admm_option_names()) | _PROGRESSIVE_OPTIONS))}"
            )
        self.epochs_per_round = check_count(epochs_per_round, "epochs_per_round")
        self.rates, self.round_epochs, round_rho = _schedule(
            checked, rates, stages, rounds, self.epochs_per_round
        )
        super().__init__(model, checked, **admm_options)
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



def _round_rates(targets: list[Target], entry: Any, what: str) -> list[float]:
    rates = per_target(entry, targets, what, allow_zero=True)
    return [check_sparsity(r, f"{what} for {t.name!r}") for t, r in zip(targets, rates,
                                                                         strict=True)]


def _schedule(
    targets: list[Target],
    rates: Sequence[Any] | None,
    stages: Sequence[Mapping[str, Any]] | None,
    rounds: int | None,
    epochs_per_round: int,
) -> tuple[list[list[float]], list[int], list[list[float] | None]]:
    """Per round: the rate of every target, the epochs, and the rho (None: the initial)."""
    given = [n for n, v in (("rates", rates), ("stages", stages), ("rounds", rounds))
             if v is not None]
    if len(given) > 1:
        raise ConfigError(f"progressive_admm takes one of rates, stages or rounds, got {given}")
    if stages is not None:
        if isinstance(stages, (str, Mapping)) or not isinstance(stages, Sequence) or not stages:
            raise ConfigError("stages must be a non-empty list of {sparsity, epochs, rho} dicts")
        table, epochs, rhos = [], [], []
        for i, stage in enumerate(stages):
            if not isinstance(stage, Mapping) or "sparsity" not in stage:
                raise ConfigError(
                    f"stages[{i}] must be a dict with a 'sparsity' key, got {stage!r}"
                )
            extra = sorted(set(stage) - set(_STAGE_KEYS))
            if extra:
                raise ConfigError(f"stages[{i}] has unknown keys {extra}; valid: {_STAGE_KEYS}")
            table.append(_round_rates(targets, stage["sparsity"], f"stages[{i}].sparsity"))
            epochs.append(check_count(stage.get("epochs", epochs_per_round), f"stages[{i}].epochs"))
            rho = stage.get("rho")
            rhos.append(None if rho is None else per_target(rho, targets, f"stages[{i}].rho"))
    else:
        if rates is None:
            n = check_count(3 if rounds is None else rounds, "rounds")
            finals = [explicit_rate(t, "progressive_admm") for t in targets]
            table = [[1.0 - (1.0 - s) ** ((r + 1) / n) for s in finals] for r in range(n)]
            table[-1] = finals
        else:
            if isinstance(rates, (str, Mapping)) or not isinstance(rates, Sequence) or not rates:
                raise ConfigError(f"rates must be a non-empty list of rates, got {rates!r}")
            table = [_round_rates(targets, r, f"rates[{i}]") for i, r in enumerate(rates)]
        epochs = [epochs_per_round] * len(table)
        rhos = [None] * len(table)
    for r in range(1, len(table)):
        for t, before, now in zip(targets, table[r - 1], table[r], strict=True):
            if now < before:
                raise ConfigError(
                    f"round {r} lowers the rate of {t.name!r} from {before} to {now}; "
                    f"progressive rates must not decrease"
                )
    return table, epochs, rhos
