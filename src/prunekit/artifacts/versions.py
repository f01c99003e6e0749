"""The names of every versioned format prunekit writes, in one place.

A reader checks the name before it trusts anything else in a file, so a file of another kind
or of a newer version is one clear error instead of a confusing failure further in.

- ``prunekit.train/1``: a trainer checkpoint (weights, optimizer, schedule, plugins, history),
  written every epoch under a run's ``ckpt/``;
- ``prunekit.stage/1``: a finished pipeline stage (weights, frozen constraints, history);
- ``prunekit.model/1``: the manifest of a ``.pkz`` model file.
"""

TRAIN_FORMAT = "prunekit.train/1"
STAGE_FORMAT = "prunekit.stage/1"
MODEL_FORMAT = "prunekit.model/1"
