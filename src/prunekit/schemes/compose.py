"""Composite schemes: ``"filter+irregular"``, ``"pattern+quant"``, ``"irregular+quant"``.

``compose(name, **options)`` builds one scheme per ``+``-separated part and applies their
projections in order, each acting on the previous result.

Options. Each option goes to every part whose constructor names it as a keyword (``bits``
to ``quant``, ``block`` to ``block`` or ``unify``, ...); an option no part names is an
error. ``rates`` is the composite's own option: the sparsity of each *pruning* part except
the last one (``None`` for a part with a natural rate, such as ``nm``).

Rates. The requested sparsity goes to the last pruning part; earlier pruning parts take
their entry of ``rates``; parts that do not prune (``quant``) take none. So
``get("filter+irregular", rates=[0.3]).project(w, 0.8)`` prunes 30% of the filters and then
80% of all weights, and ``get("irregular+quant", bits=4).project(w, 0.9)`` prunes 90% and
quantises the rest. ``natural_sparsity`` is that of the last pruning part.

Exactness. The composite projection is the composition of exact projections: a greedy,
sequential projection. When every later projection keeps the earlier zeros (and so the
earlier structure), as ``irregular``, ``nm`` and ``quant`` do after a structured part, the
result satisfies every part's constraint. It is the exact projection onto the intersection
when the sets are nested and the projections agree, e.g. ``irregular`` at a lower rate
followed by ``irregular`` at a higher one; in general it is not: ``filter+irregular`` picks
filters by their full norm before the element budget is known, and ``irregular+quant``
fits the step to the surviving weights (the usual prune-then-quantise order).

Masks and norms. ``mask`` is the nonzero support of the composite projection
intersected with the mask of each part (computed on that part's input). ``group_norms``
concatenates the group norms of the pruning parts (a penalty on them is the sum of the
parts' penalties). How a composite layer is stored is the model file's business
(:mod:`prunekit.artifacts.encoding`), from the frozen constraint hardening makes of it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Scheme, check_sparsity


def _keywords(cls: type) -> set[str]:
    """Option names a scheme class's constructor spells out (not its ``**options``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds and p.name != "self"}


class Composite(Scheme):
    """Several schemes applied in order. See the module docstring."""

    def __init__(self, parts: Sequence[Scheme], rates: Sequence[float | None] | None = None):
        super().__init__()
        if not parts:
            raise ConfigError("a composite scheme needs at least one part")
        self._parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        pruning = [i for i, p in enumerate(self.parts) if p.prunes]
        self._receiver = pruning[-1] if pruning else None
        self._earlier = pruning[:-1]
        self.rates = self._check_rates(rates)
        self.natural_sparsity = (
            0.0 if self._receiver is None else self.parts[self._receiver].natural_sparsity
        )

    def _check_rates(self, rates: Sequence[float | None] | None) -> list[float | None]:
        names = [self.parts[i].name for i in self._earlier]
        if rates is None:
            rates = [None] * len(self._earlier)
        if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence):
            raise ConfigError(f"rates must be a list of sparsities, got {rates!r}")
        if len(rates) != len(self._earlier):
            raise ConfigError(
                f"scheme {self.name!r} takes {len(self._earlier)} rate(s) in rates (one per "
                f"pruning part before the last: {names}), got {list(rates)!r}"
            )
        checked = []
        for i, rate in zip(self._earlier, rates, strict=True):
            part = self.parts[i]
            if rate is None and part.natural_sparsity is None:
                raise ConfigError(
                    f"scheme {self.name!r}: part {part.name!r} needs a rate in rates"
                )
            checked.append(None if rate is None else check_sparsity(rate, f"rate of {part.name!r}"))
        return checked

    # ------------------------------------------------------------------ public
    @property
    def parts(self) -> list[Scheme]:
        return self._parts

    @property
    def frozen_kind(self) -> str:  # type: ignore[override]
        return self._parts[-1].frozen_kind

    @property
    def removes_rows(self) -> bool:  # type: ignore[override]
        return any(p.removes_rows for p in self._parts)

    def part_rates(self, sparsity: float | None) -> list[float | None]:
        """The sparsity each part is asked for when the composite is asked for ``sparsity``."""
        out: list[float | None] = [None] * len(self.parts)
        for i, rate in zip(self._earlier, self.rates, strict=True):
            out[i] = rate
        if self._receiver is not None:
            out[self._receiver] = sparsity
        elif sparsity is not None:
            raise ConfigError(
                f"scheme {self.name!r} does not prune, so it takes no sparsity "
                f"(got {sparsity!r}); add a pruning scheme, e.g. 'irregular+{self.name}'"
            )
        return out

    def project(self, w: Tensor, sparsity: float | None = None, *, gates: int = 1) -> Tensor:
        """Each part's exact projection in turn (see the module docstring)."""
        self.check(w.shape, gates=gates)
        out = w
        for part, rate in zip(self.parts, self.part_rates(sparsity), strict=True):
            out = part.project(out, rate, gates=gates)
        return out

    def mask(self, w: Tensor, sparsity: float | None = None, *, gates: int = 1) -> Tensor:
        """Nonzero support of the projection, within every part's own mask."""
        self.check(w.shape, gates=gates)
        keep = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        out = w
        for part, rate in zip(self.parts, self.part_rates(sparsity), strict=True):
            keep &= part.mask(out, rate, gates=gates)
            out = part.project(out, rate, gates=gates)
        return keep & (out != 0)

    def group_norms(self, w: Tensor, *, gates: int = 1) -> Tensor:
        """The pruning parts' group norms, concatenated (the last part's if none prunes)."""
        self.check(w.shape, gates=gates)
        parts = [p for p in self.parts if p.prunes] or self.parts[-1:]
        return torch.cat([p.group_norms(w, gates=gates) for p in parts])

    def check(self, shape: Sequence[int], *, gates: int = 1) -> None:
        for part in self.parts:
            part.check(shape, gates=gates)

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, parts={self.parts!r}, rates={self.rates!r})"


def compose(name: str, **options) -> Composite:
    """The composite scheme ``name`` (``"a+b[+c]"``) with ``options`` routed to its parts."""
    from . import _lookup  # noqa: PLC0415  (the registry imports this module lazily)

    names = [n.strip() for n in name.split("+")]
    if any(not n for n in names):
        raise ConfigError(f"composite scheme name {name!r} has an empty part")
    classes = []
    for part in names:
        cls = _lookup(part)
        if cls is None:
            from . import available  # noqa: PLC0415

            raise ConfigError(
                f"unknown scheme {part!r} in {name!r}; available: {', '.join(available())}"
            )
        classes.append(cls)
    rates = options.pop("rates", None)
    per_part: list[dict] = [{} for _ in classes]
    for key, value in options.items():
        takers = [i for i, cls in enumerate(classes) if key in _keywords(cls)]
        if not takers:
            raise ConfigError(f"option {key!r} is not accepted by any part of scheme {name!r}")
        for i in takers:
            per_part[i][key] = value
    parts = [cls(**opts) for cls, opts in zip(classes, per_part, strict=True)]
    return Composite(parts, rates)
