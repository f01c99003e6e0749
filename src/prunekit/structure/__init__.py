"""Coupled slices of layers, traced with torch.fx: which channels must go together.

- :func:`build` traces a model on an example input and returns its :class:`Structure`:
  channel groups (a filter, its bias, the BatchNorm entries after it, the input columns of
  every layer reading it, residual and concat partners), and for every channel that can
  never be removed the layer and the reason (:meth:`Structure.report`);
- :func:`prune` filter-prunes whole groups by group norm and returns the frozen constraints
  (biases and BatchNorm included) that keep the removed channels exactly zero, so
  :func:`prunekit.compile` can shrink the layers without changing the outputs;
- :func:`drop_dead_channels` zeroes the channels pruning left dead (a row nothing reads, a
  filter that makes only zeros) and tightens the constraints, so files store none of them;
- :mod:`.rules` turns a ``group_filter`` target rule into one
  :class:`~prunekit.group_target.GroupTarget` per coupled group, so every pruning method
  can drive whole groups to zero (:func:`prunekit.targets.resolve` calls it).
"""

from .dead import Dropped, dead_channel_counts, dead_units, drop_dead_channels
from .groups import Group, Pruned, Structure, build, constraints_for, prune, select, unit_scores
from .trace import Traced, trace

__all__ = ["Dropped", "Group", "Pruned", "Structure", "Traced", "build", "constraints_for",
           "dead_channel_counts", "dead_units", "drop_dead_channels", "prune", "select", "trace",
           "unit_scores"]
