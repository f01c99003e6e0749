"""Every versioned format prunekit writes, and the compact model file ``.pkz``.

``container`` reads and writes the checksummed file (a JSON manifest plus named byte
sections); ``codecs`` turns integer codes and sparsity masks into those bytes and back;
``encoding`` turns one weight and its frozen constraint into byte parts; ``model_file``
is :func:`save` / :func:`load` of a whole model (format ``prunekit.model/1``). None of them
ever executes anything they read.
"""

from .model_file import MODEL_FORMAT, Loaded, load, pack, save, storage

__all__ = ["MODEL_FORMAT", "Loaded", "load", "pack", "save", "storage"]
