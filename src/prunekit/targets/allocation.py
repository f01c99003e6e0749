"""Global allocation: one threshold over the groups of many targets sets each target's
rate, so layers with small weights are pruned more (see :func:`allocate_global`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import TargetError
from ..schemes.base import keep_largest, kth_smallest, shares_storage, sorted_rows
from .rules import _check_rate
from .target import Target


def allocate_global(
    targets: Sequence[Target],
    sparsity: float,
    *,
    min_sparsity: float = 0.0,
    max_sparsity: float = 1.0,
    where: str = "global allocation",
) -> None:
    """Set every target's rate from one threshold over all their groups (in place).

    Every target is a sequence of *steps* in the scheme's own units: a step prunes one group
    (a single weight for ``irregular``, a kernel for ``pattern``) and, for weights that stack
    gates (LSTM, GRU, attention q/k/v), the weakest remaining group of *every* gate at once,
    because each gate is pruned at the target's rate on its own. A step is scored by the
    root-mean-square of its weights (L2 norm over sqrt(size)), so groups of different sizes
    in different layers compete fairly. The lowest-scoring steps are taken across all targets
    until the weights they prune, plus what the schemes prune at rate 0 (pattern: all but
    ``entries`` of every kernel), are nearest to ``sparsity`` of all the weights: to the
    nearest step, so for ungated single weights exactly; where gated steps (several
    weights at once) leave the count off, ungated targets' single steps make it exact
    (:func:`_settle_with_single_steps`). Every target's rate is then ``k``
    steps out of ``n`` (mapped to weights by the scheme's ``rate_of_groups`` when it has
    one), which each gate rounds back to exactly ``k`` groups, so the plan is what the
    projection prunes. Each rate stays within ``[min_sparsity, max_sparsity]`` and always
    keeps at least one step, so no layer is cut off entirely: layers with small weights get
    high rates. When all step sizes are whole multiples of one size (``irregular``, gated or
    not) the threshold is found by one selection (``kth_smallest``) over the concatenated
    scores, not a sort.
    """
    sparsity = _check_rate(sparsity, f"{where}: sparsity")
    if min_sparsity > max_sparsity:
        raise TargetError(f"{where}: min_sparsity {min_sparsity} exceeds max_sparsity "
                          f"{max_sparsity}")
    if not targets:
        return
    on_meta = [t.name for t in targets if t.param.is_meta]
    if on_meta:
        raise TargetError(f"{where}: allocation: global ranks weights by their values, and "
                          f"{on_meta[0]} is on the meta device (shapes only, no values)")
    units = [_Unit(t, min_sparsity, max_sparsity, where) for t in targets]
    need = _budget(units, sparsity, min_sparsity, max_sparsity, where)
    copies = _step_copies(units)
    if copies is not None:
        extra = _take_equal_steps(units, need, copies)
    else:
        extra = _take_sorted_steps(units, need)
    for unit, more in zip(units, extra, strict=True):
        unit.target.sparsity = unit.rate((unit.low + more) / unit.steps)


def _budget(units: Sequence[_Unit], sparsity: float, min_sparsity: float, max_sparsity: float,
            where: str) -> float:
    """Weights the optional steps must prune, after what every target prunes anyway."""
    total = sum(u.numel for u in units)
    budget = sparsity * total
    slack = max(u.step for u in units)
    base = sum(u.base for u in units)
    forced = sum(u.base + u.low * u.step for u in units)
    ceiling = sum(u.base + u.high * u.step for u in units)
    if base > budget + slack:
        raise TargetError(f"{where}: the schemes prune {base / total:.4f} of the selected "
                          f"weights at their lowest rate, more than the requested {sparsity}")
    if forced > budget + slack:
        raise TargetError(f"{where}: min_sparsity {min_sparsity} prunes {forced / total:.4f} "
                          f"of the selected weights, more than the requested {sparsity}")
    if ceiling < budget - slack:
        raise TargetError(f"{where}: max_sparsity {max_sparsity} (and keeping one group per "
                          f"layer) allows at most {ceiling / total:.4f} of the selected "
                          f"weights to be pruned, less than the requested {sparsity}")
    return budget - forced


def _step_copies(units: Sequence[_Unit]) -> list[int] | None:
    """Steps as whole multiples of one common size: how many copies of it each unit's step
    is (a gated step prunes one weight per gate), or None when sizes are not whole numbers
    (then the candidates are sorted instead)."""
    sizes = [round(u.step) for u in units]
    if any(abs(u.step - n) > 1e-9 or n < 1 for u, n in zip(units, sizes, strict=True)):
        return None
    common = math.gcd(*sizes)
    return [n // common for n in sizes]


def _take_equal_steps(units: Sequence[_Unit], need: float, copies: Sequence[int]) -> list[int]:
    """Optional steps each unit takes when every step is a whole number of copies of one
    size: each step's score counts once per copy, and the ``k``-th lowest score of that pool
    (``k`` nearest ``need / size``, a tie taking fewer) is found by one selection, not a
    sort; every unit then takes its scores below it, and the ties at it go to the earlier
    units. The one step whose copies straddle the cut is taken when that is nearer
    ``need``. Only counts per unit are needed, so no mask of the pool is ever built."""
    size = units[0].step / copies[0]
    count = sum((u.high - u.low) * n for u, n in zip(units, copies, strict=True))
    whole = math.floor(need / size) if need > 0 else 0
    take = min(count, max(0, whole + (need / size - whole > 0.5)))
    if take == 0:
        return [0] * len(units)
    pool = torch.cat([u.candidates if n == 1 else u.candidates.repeat_interleave(n)
                      for u, n in zip(units, copies, strict=True)])
    cut = kth_smallest(pool, take, overwrite=True)
    del pool
    below = [int(torch.count_nonzero(u.candidates < cut)) * n
             for u, n in zip(units, copies, strict=True)]
    ties_left = take - sum(below)
    steps, taken, straddle = [], 0, None
    for unit, n, picked in zip(units, copies, below, strict=True):
        if ties_left > 0:
            tied = min(ties_left, int(torch.count_nonzero(unit.candidates == cut)) * n)
            picked += tied
            ties_left -= tied
        whole, rest = divmod(picked, n)
        steps.append(whole)
        taken += whole * n
        if rest:  # the step that straddles the cut (ties keep it to one): nearest wins
            straddle = len(steps) - 1
    if straddle is not None and (abs((taken + copies[straddle]) * size - need)
                                 < abs(taken * size - need)):
        steps[straddle] += 1
        taken += copies[straddle]
    _settle_with_single_steps(units, copies, steps, take - taken)
    return steps


def _settle_with_single_steps(units: Sequence[_Unit], copies: Sequence[int], steps: list[int],
                              missing: int) -> None:
    """Make the count exact where steps of several copies at once (a gated weight prunes
    one weight per gate) left it ``missing`` copies off: the units whose steps are one copy
    take their next-weakest steps (``missing > 0``) or give back their strongest taken
    ones (``missing < 0``), one step at a time. Without such units the count stays the
    nearest one the gated steps allow (each gate of a weight is pruned at one rate)."""
    single = [i for i, n in enumerate(copies) if n == 1]
    for _ in range(abs(missing)):
        chosen, chosen_score = None, math.inf if missing > 0 else -math.inf
        for i in single:
            unit = units[i]
            if missing > 0 and steps[i] < unit.high - unit.low:
                score = float(kth_smallest(unit.candidates, steps[i] + 1))
                if score < chosen_score:
                    chosen, chosen_score = i, score
            elif missing < 0 and steps[i] > 0:
                score = float(kth_smallest(unit.candidates, steps[i]))
                if score > chosen_score:
                    chosen, chosen_score = i, score
        if chosen is None:
            return
        steps[chosen] += 1 if missing > 0 else -1


def _take_sorted_steps(units: Sequence[_Unit], need: float) -> list[int]:
    """Optional steps each unit takes when step sizes differ: candidates in order of
    increasing score (ties: earlier unit and position), up to the prefix whose pruned
    weights are nearest ``need``."""
    scores = torch.cat([u.ranked() for u in units])
    owner = torch.cat([torch.full((u.high - u.low,), i) for i, u in enumerate(units)])
    sizes = torch.tensor([u.step for u in units], dtype=torch.float64)[owner]
    order = torch.argsort(scores, stable=True)
    taken = _nearest_prefix(torch.cumsum(sizes[order], 0), need)
    return torch.bincount(owner[order[:taken]], minlength=len(units)).tolist()


def _nearest_prefix(cumulative: Tensor, need: float) -> int:
    """Length of the prefix whose cumulative size is nearest to ``need``."""
    if need <= 0 or cumulative.numel() == 0:
        return 0
    at = int(torch.searchsorted(cumulative, torch.tensor([need], dtype=cumulative.dtype)))
    if at >= cumulative.numel():
        return cumulative.numel()
    below = float(cumulative[at - 1]) if at > 0 else 0.0
    return at if need - below <= float(cumulative[at]) - need else at + 1


class _Unit:
    """One target in global allocation (see :func:`allocate_global`): ``steps`` steps of
    ``step`` weights each on top of ``base`` weights pruned at rate 0; it must take the
    ``low`` weakest steps and may take up to ``high``. ``candidates`` scores the steps it
    may take, in position order, ``+inf`` for the others."""

    def __init__(self, target: Target, min_sparsity: float, max_sparsity: float,
                 where: str) -> None:
        try:
            with torch.no_grad():
                norms = target.group_norms(target.param.detach()).detach().reshape(-1)
        except NotImplementedError:
            raise TargetError(f"{where}: scheme {target.scheme_name!r} has no groups to rank, "
                              f"so it cannot use allocation: global (layer "
                              f"{target.module_name!r})") from None
        self.target = target
        self.numel = target.numel
        gates = target.gates if norms.numel() % max(1, target.gates) == 0 else 1
        self.steps = max(1, norms.numel() // gates)
        self.rate = target.scheme.rate_of_groups
        self.base = self.rate(0.0) * self.numel
        self.step = (self.rate(1.0) * self.numel - self.base) / self.steps
        self.low = min(self.steps - 1, math.ceil(self._fraction(min_sparsity) * self.steps - 1e-9))
        self.high = max(self.low, min(self.steps - 1,
                                      math.floor(self._fraction(max_sparsity) * self.steps + 1e-9)))
        # float32 ranks float32 weights exactly (|w|) and is twice as fast to select on
        self.scores = self._step_scores(norms if norms.dtype == torch.float64 else norms.float(),
                                        gates)
        self.candidates = self._candidates()

    def _fraction(self, sparsity: float) -> float:
        """The fraction of steps that prunes ``sparsity`` of this target (clipped to [0, 1])."""
        r0, r1 = self.rate(0.0), self.rate(1.0)
        return min(1.0, max(0.0, (sparsity - r0) / (r1 - r0))) if r1 > r0 else 0.0

    def _step_scores(self, norms: Tensor, gates: int) -> Tensor:
        """RMS weight of every step. With gates, step ``j`` holds the ``j``-th weakest group
        of every gate (the scores come out sorted); otherwise one group, in position order."""
        group_size = self.numel / norms.numel() if norms.numel() else 1.0
        if gates == 1:
            return norms if group_size == 1 else norms / math.sqrt(group_size)
        weakest = sorted_rows(norms.reshape(gates, self.steps))
        return torch.sqrt((weakest * weakest).sum(dim=0) / (gates * group_size))

    def _candidates(self) -> Tensor:
        """Scores of the steps ranked ``low .. high - 1`` (stable), ``+inf`` elsewhere."""
        scores = self.scores
        if self.low == 0 and self.high == self.steps - 1:  # the default: all but the strongest
            flat = scores.reshape(-1)
            strongest = int(torch.nonzero(flat == flat.max()).max())  # of ties, the later
            if not shares_storage(flat, self.target.param):  # scores are scratch: no copy
                # ``scores`` now holds +inf at its maximum; ``ranked`` still sorts it the
                # same way (the strongest step stays last and is never taken)
                flat[strongest] = math.inf
                return flat
            return flat.index_fill(0, torch.tensor([strongest]), math.inf)
        optional = keep_largest(scores, self.low) & ~keep_largest(scores, self.high)
        return torch.where(optional, scores, math.inf)

    def ranked(self) -> Tensor:
        """The optional steps' scores in increasing order (ties: earlier position)."""
        return torch.sort(self.scores, stable=True).values[self.low:self.high]
