"""Every versioned format prunekit writes, and the compact model file ``.pkz``.

``container`` reads and writes the checksummed file (a JSON manifest plus named byte
sections); ``codecs`` turns integer codes and sparsity masks into those bytes and back;
``encoding`` turns one weight and its frozen constraint into byte parts; ``model_file``
is :func:`save` / :func:`load` of a whole model; ``stages`` the artifacts a run's stages
hand on; ``versions`` names every format and its version. None of them ever executes
anything they read.
"""

from .model_file import Loaded, load, pack, save, storage
from .stages import check_fits, load_stage, save_stage
from .versions import MODEL_FORMAT, STAGE_FORMAT, TRAIN_FORMAT

__all__ = ["MODEL_FORMAT", "STAGE_FORMAT", "TRAIN_FORMAT", "Loaded", "check_fits", "load",
           "load_stage", "pack", "save", "save_stage", "storage"]
