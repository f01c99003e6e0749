"""Coupled slices of layers, traced with torch.fx: which channels must go together.

- :func:`build` traces a model on an example input and returns its :class:`Structure`:
  channel groups (a filter, its bias, the BatchNorm entries after it, the input columns of
  every layer reading it, residual and concat partners), and for every channel that can
  never be removed the layer and the reason (:meth:`Structure.report`);
- :func:`constraints_for` gives the frozen constraints (biases and BatchNorm included)
  that keep removed channels exactly zero, so :func:`prunekit.compile` can shrink the
  layers without changing the outputs (filter pruning by coupled groups is a target rule,
  ``scheme: group_filter``, resolved by :mod:`prunekit.targets.coupled`);
- :func:`drop_dead_channels` zeroes the channels pruning left dead (a row nothing reads, a
  filter that makes only zeros) and tightens the constraints, so files store none of them;
"""

from .dead import Dropped, dead_channel_counts, dead_units, drop_dead_channels
from .groups import Group, Structure, build, constraints_for
from .trace import Traced, trace

__all__ = ["Dropped", "Group", "Structure", "Traced", "build", "constraints_for",
           "dead_channel_counts", "dead_units", "drop_dead_channels", "trace"]
