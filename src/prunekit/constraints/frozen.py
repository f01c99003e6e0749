"""Frozen constraints: what hardening decided about one weight, kept through retraining.

Hardening projects a weight onto its constraint set once; retraining must then keep it in
that set. For a support scheme the set is "zero outside this mask", but a quantized layer
must also stay on its levels and a unified layer keep one shared magnitude per block, so a
zero mask is not enough. A :class:`Frozen` object is the one record of such a decision:

- :meth:`Frozen.apply_` re-imposes it on the weight in place (after every optimizer step);
- :meth:`Frozen.grad_keep` says where a gradient may flow (the enforcer zeroes the rest, on
  the gradient and on the optimizer's buffers);
- :meth:`Frozen.finish_` ends retraining (straight-through and progressive quantization
  leave free float weights until then);
- :meth:`Frozen.contains` checks that a weight is exactly inside the set;
- :meth:`Frozen.state_dict` / :func:`from_state` make it a checkpoint entry (tensors and
  plain values only, so it loads with ``weights_only=True``), and the model file encodes
  the weight from it.

Three kinds cover every scheme: :class:`Support` (irregular, filter, channel, column,
block, pattern, N:M), :class:`Levels` (quantization, alone or after a pruning scheme: it
carries the mask too) and :class:`Unified` (micro-structured unification); a fourth,
:class:`Rounded`, keeps small dense parameters (biases) on float16. All work on the
2-D GEMM view of the weight (dim 0 = output), as the schemes do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..schemes.base import gemm_view
from ..schemes.levels import LEVEL_SETS, from_codes, to_codes

QUANT_MODES = ("snap", "ste", "progressive")


def _bool(t: Tensor) -> Tensor:
    return t.detach().to(torch.bool)


class Frozen:
    """Base of the three kinds. ``mask`` (bool, the weight's shape) is where the weight may
    be nonzero; ``hints`` are small facts about its structure (scheme name, block shape,
    kernel size) that the model file uses to pick the cheapest index encoding."""

    kind = "frozen"
    #: bits per stored value (32: float32)
    bits = 32

    def __init__(self, mask: Tensor, hints: Mapping[str, Any] | None = None) -> None:
        self.mask = _bool(mask)
        self.hints = dict(hints or {})

    # ------------------------------------------------------------- protocol
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    def apply_(self, w: Tensor) -> None:
        """Put ``w`` back inside the set (in place)."""
        w.masked_fill_(~self._on(self.mask, w), 0)

    def grad_keep(self) -> Tensor:
        """Where the weight's gradient (and optimizer state) may be nonzero."""
        return self.mask

    def finish_(self, w: Tensor) -> None:
        """End of retraining: leave ``w`` exactly inside the set."""
        self.apply_(w)

    def start(self, mode: str) -> Frozen:
        """Begin a retraining stage; only quantization levels have modes."""
        return self

    def contains(self, w: Tensor) -> bool:
        """Whether ``w`` is exactly inside the set."""
        return not bool((w.detach()[~self._on(self.mask, w)] != 0).any())

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mask": self.mask.cpu().clone(), "hints": dict(self.hints)}

    def to(self, device: torch.device) -> Frozen:
        """Move the tensors to ``device`` (the model may move after hardening)."""
        for key, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, key, value.to(device))
        return self

    @property
    def kept(self) -> int:
        return int(self.mask.sum().item())

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _on(t: Tensor, w: Tensor) -> Tensor:
        return t if t.device == w.device else t.to(w.device)

    def _check_shape(self, w: Tensor) -> None:
        if tuple(w.shape) != self.shape:
            raise ConfigError(f"{self.kind} constraint of shape {self.shape} applied to a weight "
                              f"of shape {tuple(w.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, kept={self.kept})"


class Support(Frozen):
    """Zero outside a fixed mask; the kept weights train freely (float32)."""

    kind = "support"


class Levels(Frozen):
    """Every kept weight on one of the frozen levels ``{0, ±m_1 s_r, ..., ±m_L s_r}`` of its
    row ``r`` (``scale`` holds one step per GEMM row), zero outside ``mask``.

    ``mode`` says how retraining moves a weight between levels:

    - ``"snap"``: after every step each weight goes back to its nearest level (a step
      smaller than half a level is undone: use it to hold a layer, not to train it);
    - ``"ste"``: straight-through: a float shadow copy takes the optimizer's updates and the
      weight is its nearest level, so gradients computed at the quantized weights move the
      shadow until it crosses into another level;
    - ``"progressive"`` (ADMM-NN's quantized retraining): weights are fixed to their level
      a fraction at a time (:meth:`fix_`, the free weights nearest their level first) and
      the free ones train in float; :meth:`finish_` fixes the rest.
    """

    kind = "levels"

    def __init__(self, mask: Tensor, scale: Tensor, bits: int, level_set: str = "uniform",
                 mode: str = "snap", hints: Mapping[str, Any] | None = None,
                 free: Tensor | None = None, shadow: Tensor | None = None) -> None:
        super().__init__(mask, hints)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"levels need bits from 2 to 8, got {bits!r}")
        if level_set not in LEVEL_SETS:
            raise ConfigError(f"level set must be one of {LEVEL_SETS}, got {level_set!r}")
        if mode not in QUANT_MODES:
            raise ConfigError(f"quantized retraining mode must be one of {QUANT_MODES}, "
                              f"got {mode!r}")
        rows = self.shape[0] if self.mask.dim() else 1
        scale = scale.detach().to(torch.float64).reshape(-1)
        if scale.numel() != rows:
            raise ConfigError(f"levels need one step per row ({rows}), got {scale.numel()}")
        self.scale = scale.to(self.mask.device)
        self.bits = bits
        self.level_set = level_set
        self.mode = mode
        self.free = None if free is None else _bool(free)
        self.shadow = shadow
        self._last: Tensor | None = None  # ste: the weight as last snapped
        if mode == "progressive" and self.free is None:
            self.free = self.mask.clone()

    # ------------------------------------------------------------- the levels
    def codes(self, w: Tensor) -> Tensor:
        """Signed level index of every entry (``-L..L``, int64, ``w``'s shape), 0 outside
        the mask."""
        c = to_codes(gemm_view(w.detach()), self._on(self.scale, w), self.bits, self.level_set)
        return c.reshape(w.shape).masked_fill_(~self._on(self.mask, w), 0)

    def values(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight whose codes are ``codes``."""
        flat = codes.reshape(codes.shape[0], -1) if codes.dim() > 1 else codes.reshape(1, -1)
        out = from_codes(flat, self._on(self.scale, codes), self.bits, self.level_set, dtype)
        return out.reshape(codes.shape)

    def snapped(self, w: Tensor) -> Tensor:
        """``w`` with every entry on its nearest level (a new tensor)."""
        return self.values(self.codes(w), w.dtype)

    # ------------------------------------------------------------- protocol
    def apply_(self, w: Tensor) -> None:
        self._check_shape(w)
        with torch.no_grad():
            if self.mode == "ste":
                if self.shadow is None:  # first call: the shadow starts at the weight
                    self.shadow = w.detach().to(torch.float32).clone()
                elif self._last is not None:  # the optimizer's update since the last snap
                    self.shadow.add_(w.detach().float() - self._last.float())
                q = self.snapped(self.shadow).to(w.dtype)
                w.copy_(q)
                self._last = q.clone()
                return
            q = self.snapped(w)
            if self.free is None:
                w.copy_(q)
            else:
                fixed = self._on(self.mask & ~self.free, w)
                w.copy_(torch.where(fixed, q, w))
                w.masked_fill_(~self._on(self.mask, w), 0)

    def grad_keep(self) -> Tensor:
        return self.mask if self.free is None else self.free

    def fix_(self, w: Tensor, fraction: float) -> int:
        """Progressive mode: fix the ``ceil(fraction * free)`` free weights nearest their
        level (ties: the earlier entry) and snap them. Returns how many were fixed."""
        if self.free is None:
            return 0
        with torch.no_grad():
            free = self._on(self.free, w)
            n_free = int(free.sum().item())
            n_fix = min(n_free, math.ceil(fraction * n_free - 1e-9))
            if n_fix > 0:
                distance = (w.detach().double() - self.snapped(w).double()).abs()
                distance = distance.masked_fill(~free, math.inf).reshape(-1)
                order = torch.argsort(distance, stable=True)[:n_fix]
                flat = free.clone().reshape(-1)
                flat[order] = False
                self.free = flat.reshape(free.shape)
            self.apply_(w)
        return n_fix

    def finish_(self, w: Tensor) -> None:
        with torch.no_grad():
            if self.mode == "ste" and self.shadow is not None:
                w.copy_(self.snapped(self.shadow).to(w.dtype))
            self.shadow, self._last, self.free = None, None, None
            self.mode = "snap"
            self.apply_(w)

    def start(self, mode: str) -> Levels:
        """Begin retraining in ``mode`` (the weight must be on its levels: call
        :meth:`finish_` first when switching from another mode)."""
        if mode not in QUANT_MODES:
            raise ConfigError(f"quantized retraining mode must be one of {QUANT_MODES}, "
                              f"got {mode!r}")
        self.mode, self.shadow, self._last = mode, None, None
        self.free = self.mask.clone() if mode == "progressive" else None
        return self

    def contains(self, w: Tensor) -> bool:
        return super().contains(w) and torch.equal(w.detach(), self.snapped(w))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(scale=self.scale.cpu().clone(), bits=self.bits, level_set=self.level_set,
                     mode=self.mode,
                     free=None if self.free is None else self.free.cpu().clone(),
                     shadow=None if self.shadow is None else self.shadow.cpu().clone(),
                     last=None if self._last is None else self._last.cpu().clone())
        return state

    def __repr__(self) -> str:
        return (f"Levels(shape={self.shape}, bits={self.bits}, levels={self.level_set!r}, "
                f"mode={self.mode!r}, kept={self.kept})")


class Unified(Frozen):
    """Micro-block unification: every block of the GEMM view is kept (free float weights),
    unified (all entries ``sign * m`` with the frozen signs and one shared magnitude ``m``
    that keeps training) or pruned (zero).

    ``states`` has one entry per block (0 kept, 1 unified, 2 pruned) row-major over the
    block grid of ``block = (rows, cols)`` (edge blocks may be smaller); ``negative`` marks
    the entries of unified blocks whose sign is minus. Re-imposing the set after a step is
    its exact projection with the assignment fixed: a unified block takes
    ``m = max(0, mean(sign * w))`` over its entries.
    """

    kind = "unified"
    KEEP, UNIFY, PRUNE = 0, 1, 2

    def __init__(self, shape: tuple[int, ...], block: tuple[int, int], states: Tensor,
                 negative: Tensor, hints: Mapping[str, Any] | None = None) -> None:
        self.block = (int(block[0]), int(block[1]))
        self.states = states.detach().to(torch.int8).reshape(-1)
        self.negative = _bool(negative).reshape(shape)
        ids = self.block_ids(shape)
        n_blocks = int(ids.max().item()) + 1 if ids.numel() else 0
        if self.states.numel() != n_blocks:
            raise ConfigError(f"unified constraint of shape {tuple(shape)} with blocks "
                              f"{self.block} needs {n_blocks} states, got "
                              f"{self.states.numel()}")
        per_entry = self.states.long()[ids.reshape(-1)].reshape(shape)
        super().__init__(per_entry != self.PRUNE, {**(hints or {}), "block": list(self.block)})
        self.unified = per_entry == self.UNIFY

    def block_ids(self, shape: tuple[int, ...]) -> Tensor:
        """Block number of every entry (the weight's shape), row-major over the grid."""
        rows = shape[0]
        cols = math.prod(shape[1:]) if len(shape) > 1 else 1
        r, c = self.block
        grid_cols = -(-cols // c)
        row_block = torch.arange(rows) // r
        col_block = torch.arange(cols) // c
        return (row_block[:, None] * grid_cols + col_block[None, :]).reshape(shape)

    def sign(self, like: Tensor) -> Tensor:
        return torch.where(self._on(self.negative, like), -1.0, 1.0).to(like.dtype)

    def magnitudes(self, w: Tensor) -> Tensor:
        """The shared magnitude of every block (0 for blocks that are not unified)."""
        ids = self._on(self.block_ids(self.shape), w).reshape(-1)
        unified = self._on(self.unified, w).reshape(-1)
        signed = (self.sign(w) * w.detach()).reshape(-1).double() * unified
        total = torch.zeros(self.states.numel(), dtype=torch.float64, device=w.device)
        total.index_add_(0, ids, signed)
        count = torch.zeros_like(total).index_add_(0, ids, unified.double())
        return (total / count.clamp_min(1)).clamp_min(0)

    def apply_(self, w: Tensor) -> None:
        self._check_shape(w)
        with torch.no_grad():
            ids = self._on(self.block_ids(self.shape), w)
            shared = self.magnitudes(w)[ids].to(w.dtype) * self.sign(w)
            w.copy_(torch.where(self._on(self.unified, w), shared, w))
            w.masked_fill_(~self._on(self.mask, w), 0)

    def contains(self, w: Tensor) -> bool:
        probe = w.detach().clone()
        self.apply_(probe)
        return torch.equal(probe, w.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape), "block": list(self.block),
                "states": self.states.cpu().clone(), "negative": self.negative.cpu().clone(),
                "hints": dict(self.hints)}

    def to(self, device: torch.device) -> Frozen:
        for key in ("mask", "negative", "unified"):
            setattr(self, key, getattr(self, key).to(device))
        return self


class Rounded(Frozen):
    """Every entry representable in a narrower float type (``float16`` or ``bfloat16``):
    for the small parameters a compressed model keeps dense (biases, norm scales), which in a
    file of a few KB cost as much as the quantized weights. After each step the weight is
    rounded to the nearest such number."""

    kind = "rounded"
    DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

    def __init__(self, shape: tuple[int, ...], dtype: str = "float16",
                 hints: Mapping[str, Any] | None = None) -> None:
        if dtype not in self.DTYPES:
            raise ConfigError(f"rounded parameters take one of {sorted(self.DTYPES)}, "
                              f"got {dtype!r}")
        super().__init__(torch.ones(shape, dtype=torch.bool), {**(hints or {}),
                                                               "scheme": dtype})
        self.dtype = dtype
        self.bits = 16

    def apply_(self, w: Tensor) -> None:
        self._check_shape(w)
        with torch.no_grad():
            w.copy_(w.to(self.DTYPES[self.dtype]).to(w.dtype))

    def contains(self, w: Tensor) -> bool:
        return torch.equal(w.detach(), w.detach().to(self.DTYPES[self.dtype]).to(w.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
                "hints": dict(self.hints)}


def from_state(state: Mapping[str, Any]) -> Frozen:
    """The frozen constraint saved by :meth:`Frozen.state_dict`."""
    if not isinstance(state, Mapping) or "kind" not in state:
        raise DataError(f"not a frozen constraint state: {type(state).__name__}")
    kind = state["kind"]
    try:
        if kind == Support.kind:
            return Support(state["mask"], state.get("hints"))
        if kind == Levels.kind:
            levels = Levels(state["mask"], state["scale"], int(state["bits"]),
                            state["level_set"], state["mode"], state.get("hints"),
                            free=state.get("free"), shadow=state.get("shadow"))
            levels._last = state.get("last")
            return levels
        if kind == Rounded.kind:
            return Rounded(tuple(state["shape"]), state["dtype"], state.get("hints"))
        if kind == Unified.kind:
            return Unified(tuple(state["shape"]), tuple(state["block"]), state["states"],
                           state["negative"], state.get("hints"))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise DataError(f"frozen {kind} constraint state is malformed: {exc}") from None
    raise DataError(f"unknown frozen constraint kind {kind!r}")
