"""Gram matrices of layer inputs, accumulated by forward hooks.

A layer's GEMM reads one row of ``X`` per output position: every token for a ``Linear``,
every unfolded patch for a convolution (``nn.Unfold`` orders a patch channel-major, then
kernel row and column, as the GEMM view of a conv weight does), every time step for a
recurrent gate weight, every token for an attention projection (the last two replayed from
the module's forward arguments: :mod:`.replay`). ``H = sum X^T X`` is summed in float64
over the calibration batches; its scale does not matter (every error is relative, the
ridge is relative to its diagonal).

A target's inputs are seen at a :class:`Site`: the module whose forward is hooked and the
weight's name in it (``out_proj.weight`` of an attention is seen at the attention, whose
fused call applies it without calling ``out_proj``).

Layers that read the same input tensor (q/k/v projections of one attention, gate and up
projections of a gated MLP) share one accumulator: the hook recognises the tensor it saw
last and adds its Gram matrix once.

For a solver aiming at the dense model's output (:mod:`.problem`), :class:`DenseRows`
records each site's inputs in an uncompressed copy of the block on the same batch, and the
accumulator adds the cross term ``X_d^T X`` beside ``H``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TargetError
from .replay import RNN_TYPES, ReplayError, check_part, replay_rows

#: layer types whose inputs the hooks know how to unfold or replay
CAPTURABLE = ("Linear", "Conv1d", "Conv2d", "LSTM", "GRU", "RNN", "MultiheadAttention")
_DIRECT = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class Site:
    """Where a weight's GEMM inputs are seen: ``module``'s forward, weight ``part``."""

    module: nn.Module
    part: str = "weight"
    name: str = ""  # the module's name in the model


def site_of(modules: Mapping[str, nn.Module], module_name: str, param_name: str) -> Site:
    """The site of the weight ``param_name`` (full name) of the module ``module_name``."""
    module = modules[module_name]
    part = param_name[len(module_name) + 1:] if module_name else param_name
    parent_name, _, attr = module_name.rpartition(".")
    parent = modules.get(parent_name) if module_name else None
    if isinstance(parent, nn.MultiheadAttention) and attr == "out_proj":
        return Site(parent, f"out_proj.{part}", parent_name)
    return Site(module, part, module_name)


def check_capturable(site: Site | nn.Module, name: str) -> None:
    """Refuse, by name, a weight whose inputs cannot be turned into GEMM rows."""
    site = site if isinstance(site, Site) else Site(site)
    module = site.module
    kind = type(module).__name__
    if isinstance(module, (*RNN_TYPES, nn.MultiheadAttention)):
        check_part(module, site.part, name)
        return
    if not isinstance(module, _DIRECT) or site.part != "weight":
        raise TargetError(f"{name}: one-shot compression needs the layer's GEMM inputs, "
                          f"which it captures for {', '.join(CAPTURABLE)}, not {kind}")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise TargetError(f"{name}: a grouped convolution (groups={module.groups}) has "
                              f"different inputs per group; one-shot compression refuses it")
        if isinstance(module.padding, str) and module.padding != "valid" \
                or module.padding_mode != "zeros":
            raise TargetError(f"{name}: one-shot compression unfolds convolutions with "
                              f"numeric zero padding only (got {module.padding!r}, "
                              f"{module.padding_mode!r})")


def gemm_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The rows of ``X`` the layer's GEMM multiplies: ``[positions, in*kh*kw]``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    pad = 0 if module.padding == "valid" else module.padding
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, dilation = (1, module.kernel_size[0]), (1, module.dilation[0])
        padding, stride = (0, pad if isinstance(pad, int) else pad[0]), (1, module.stride[0])
    else:
        kernel, dilation, padding, stride = (module.kernel_size, module.dilation, pad,
                                             module.stride)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def site_rows(module: nn.Module, parts: set[str], args: tuple,
              kwargs: dict[str, Any]) -> dict[str, tuple[Tensor, Tensor | None]]:
    """``{part: (rows, source)}`` for one forward call of ``module``; ``source`` is the
    tensor the rows were read from when it is the module's own input (for sharing)."""
    if isinstance(module, _DIRECT):
        x = args[0] if args else next(iter(kwargs.values()))
        return {"weight": (gemm_rows(module, x), x)}
    rows = replay_rows(module, parts, args, kwargs)
    sources = {"in_proj_weight": args[0] if args else kwargs.get("query")}
    return {part: (r, sources.get(part)) for part, r in rows.items()}


def _sites(sites: Mapping[str, Site | nn.Module]) -> dict[str, Site]:
    return {k: v if isinstance(v, Site) else Site(v) for k, v in sites.items()}


class Gram:
    """``H = sum X^T X`` of one input (shared by the layers that read it)."""

    def __init__(self, size: int) -> None:
        self.h = torch.zeros(size, size, dtype=torch.float64)
        self.cross: Tensor | None = None
        self.rows = 0

    def add(self, rows: Tensor, dense: Tensor | None = None) -> None:
        r = rows.detach().float()
        self.h += (r.T @ r).double()
        if dense is not None:
            if dense.shape != r.shape:
                raise ValueError(f"dense inputs {tuple(dense.shape)} do not match the "
                                 f"compressed ones {tuple(r.shape)}")
            if self.cross is None:
                self.cross = torch.zeros_like(self.h)
            self.cross += (dense.float().T @ r).double()
        self.rows += r.shape[0]


class _PreHooks:
    """One forward pre-hook (with keyword inputs) per module of ``sites`` while in a
    ``with``, calling ``self._seen(keys, rows)`` with the rows of the sites it serves."""

    def __init__(self, sites: Mapping[str, Site | nn.Module]) -> None:
        self.sites = _sites(sites)
        self._handles: list = []

    def _seen(self, rows: dict[str, tuple[Tensor, Tensor | None]]) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        """What to forget when the hooks are removed."""

    def __enter__(self):
        by_module: dict[int, tuple[nn.Module, dict[str, str]]] = {}
        for key, site in self.sites.items():
            by_module.setdefault(id(site.module), (site.module, {}))[1][key] = site.part
        for module, keys in by_module.values():
            self._handles.append(module.register_forward_pre_hook(
                self._hook(module, keys), with_kwargs=True))
        return self

    def _hook(self, module: nn.Module, keys: dict[str, str]):
        parts = set(keys.values())

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            try:
                rows = site_rows(module, parts, args, kwargs)
            except ReplayError as exc:
                names = [k for k, p in keys.items() if exc.part in (None, p)]
                raise TargetError(f"{', '.join(names)}: {exc.reason}") from None
            self._seen({key: rows[part] for key, part in keys.items()})
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._reset()


class Probe(_PreHooks):
    """Hooks that only compute the rows of ``sites``: run on one batch before any weight
    changes, so a module whose inputs cannot be replayed is refused before any work."""

    def _seen(self, rows: dict[str, tuple[Tensor, Tensor | None]]) -> None:
        pass


class GramHooks(_PreHooks):
    """Forward pre-hooks at ``sites`` (``{name: Site or module}``; a module stands for its
    ``weight``) accumulating their Gram matrices; ``grams[name]`` after the forward passes.
    Use as a context manager.

    Sharing is decided by identity: the last input seen is held (so its memory cannot be
    reused by another tensor) and a layer given that very tensor, unmodified, shares its
    accumulator."""

    def __init__(self, sites: Mapping[str, Site | nn.Module],
                 dense: DenseRows | None = None) -> None:
        super().__init__(sites)
        self.dense = dense
        self.grams: dict[str, Gram] = {}
        self._last: tuple[Tensor, int, Gram] | None = None

    def _seen(self, rows: dict[str, tuple[Tensor, Tensor | None]]) -> None:
        for name, (r, source) in rows.items():
            last = self._last
            same = (source is not None and last is not None and last[0] is source
                    and last[1] == source._version)
            if name not in self.grams:
                self.grams[name] = last[2] if same else Gram(r.shape[1])
            gram = self.grams[name]
            if same and last[2] is gram:
                continue  # another reader of this input already added it
            gram.add(r, None if self.dense is None else self.dense.rows[name])
            if source is not None:
                self._last = (source, source._version, gram)

    def _reset(self) -> None:
        self._last = None

    def shared(self) -> list[list[str]]:
        """Names grouped by the accumulator they share (for the record)."""
        groups: dict[int, list[str]] = {}
        for name, gram in self.grams.items():
            groups.setdefault(id(gram), []).append(name)
        return list(groups.values())


class DenseRows(_PreHooks):
    """Pre-hooks at the sites of an uncompressed copy of a block (named as the compressed
    ones) keeping the GEMM rows of their latest inputs in ``rows[name]``: run the copy on a
    batch, then the compressed block on the same batch under a :class:`GramHooks` given
    this object. Use as a context manager."""

    def __init__(self, sites: Mapping[str, Site | nn.Module]) -> None:
        super().__init__(sites)
        self.rows: dict[str, Tensor] = {}

    def _seen(self, rows: dict[str, tuple[Tensor, Tensor | None]]) -> None:
        for name, (r, _) in rows.items():
            self.rows[name] = r.detach()

    def _reset(self) -> None:
        self.rows.clear()
