"""ADMM's rho schedules: how much each layer's penalty weight changes after a Z/U update.

``constant``; ``geometric`` (times the growth at every update); ``stages`` (times the
growth every ``stage_every`` updates: :class:`~prunekit.methods.admm.ADMM` decides when);
and two adaptive schedules that need no tuning per model: ``balance`` (residual balancing,
Boyd et al., "Distributed optimization ... ADMM", section 3.4.1) and ``support`` (as in
ALPS: fast growth while the kept weights still move, slow once they settle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

#: rho moves when one residual exceeds the other by this factor (``balance``)
BALANCE_MU = 10.0
#: fast growth while more than this fraction of a layer's kept weights changed since the
#: last update, slow growth once it settles (``support``)
SUPPORT_BUSY = 0.1
SUPPORT_SLOW_GROWTH = 1.1


def _constant(stats: Mapping[str, float], growth: float) -> float:
    return 1.0


def _geometric(stats: Mapping[str, float], growth: float) -> float:
    return growth


def _balance(stats: Mapping[str, float], growth: float) -> float:
    if stats["primal"] > BALANCE_MU * stats["dual"]:
        return growth
    if stats["dual"] > BALANCE_MU * stats["primal"]:
        return 1.0 / growth
    return 1.0


def _support(stats: Mapping[str, float], growth: float) -> float:
    return growth if stats["support_change"] > SUPPORT_BUSY else SUPPORT_SLOW_GROWTH


#: schedule -> (the factor of one layer's rho from its residual ``stats``, default growth)
SCHEDULES: dict[str, tuple[Callable[[Mapping[str, float], float], float], float]] = {
    "constant": (_constant, 1.0),
    "geometric": (_geometric, 1.5),
    "stages": (_geometric, 10.0),
    "balance": (_balance, 2.0),
    "support": (_support, 1.3),
}
RHO_SCHEDULES = tuple(SCHEDULES)
DEFAULT_GROWTH = {name: growth for name, (_, growth) in SCHEDULES.items()}


def rho_factor(schedule: str, stats: Mapping[str, float], growth: float) -> float:
    """How much one layer's rho is multiplied by after an update (``stats``: its
    residuals and support change)."""
    return SCHEDULES[schedule][0](stats, growth)
