"""Gram matrices of layer inputs, accumulated by forward hooks.

A layer's GEMM reads one row of ``X`` per output position: every token for a ``Linear``,
every unfolded patch for a convolution (``nn.Unfold`` orders a patch channel-major, then
kernel row and column, as the GEMM view of a conv weight does). ``H = sum X^T X`` is
summed in float64 over the calibration batches; its scale does not matter (every error is
relative, the ridge is relative to its diagonal).

Layers that read the same input tensor (q/k/v projections of one attention, gate and up
projections of a gated MLP) share one accumulator: the hook recognises the tensor it saw
last and adds its Gram matrix once.

For a solver aiming at the dense model's output (:mod:`.problem`), :class:`DenseRows`
records each layer's inputs in an uncompressed copy of the block on the same batch, and the
accumulator adds the cross term ``X_d^T X`` beside ``H``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TargetError

#: layer types whose inputs the hooks know how to unfold
CAPTURABLE = ("Linear", "Conv1d", "Conv2d")


def check_capturable(module: nn.Module, name: str) -> None:
    """Refuse, by name, a layer whose inputs cannot be turned into GEMM rows."""
    kind = type(module).__name__
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
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
    """Forward pre-hooks ``self._hook(name)`` on ``self.modules`` while in a ``with``."""

    modules: dict[str, nn.Module]
    _handles: list

    def _hook(self, name: str):
        raise NotImplementedError

    def _reset(self) -> None:
        """What to forget when the hooks are removed."""

    def __enter__(self):
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._reset()


class GramHooks(_PreHooks):
    """Forward pre-hooks on ``modules`` (``{name: module}``) accumulating their Gram
    matrices; ``grams[name]`` after the forward passes. Use as a context manager.

    Sharing is decided by identity: the last input seen is held (so its memory cannot be
    reused by another tensor) and a layer given that very tensor, unmodified, shares its
    accumulator."""

    def __init__(self, modules: dict[str, nn.Module], dense: DenseRows | None = None) -> None:
        self.modules = modules
        self.dense = dense
        self.grams: dict[str, Gram] = {}
        self._last: tuple[Tensor, int, Gram] | None = None
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            last = self._last
            same = last is not None and last[0] is x and last[1] == x._version
            if name not in self.grams:
                self.grams[name] = last[2] if same else Gram(module.weight[0].numel())
            gram = self.grams[name]
            if same and last[2] is gram:
                return  # another reader of this input already added it
            gram.add(gemm_rows(module, x), None if self.dense is None else self.dense.rows[name])
            self._last = (x, x._version, gram)
        return hook

    def _reset(self) -> None:
        self._last = None

    def shared(self) -> list[list[str]]:
        """Names grouped by the accumulator they share (for the record)."""
        groups: dict[int, list[str]] = {}
        for name, gram in self.grams.items():
            groups.setdefault(id(gram), []).append(name)
        return list(groups.values())


class DenseRows(_PreHooks):
    """Pre-hooks on the uncompressed copies of layers (``{name: module}``, named as the
    compressed ones) keeping the GEMM rows of their latest inputs in ``rows[name]``: run the
    copy on a batch, then the compressed block on the same batch under a
    :class:`GramHooks` given this object. Use as a context manager."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.rows: dict[str, Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.rows[name] = gemm_rows(module, args[0]).detach()
        return hook

    def _reset(self) -> None:
        self.rows.clear()
